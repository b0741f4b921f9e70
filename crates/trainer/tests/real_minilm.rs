//! A real fine-tune: all-MiniLM-L6-v2 (the sentence-transformers checkpoint, no
//! classification head) learns sentiment from 96 short reviews and classifies 72
//! held-out reviews whose adjectives it never saw in training at ≥ 90% accuracy: the
//! pretrained weights carry over, which only works if their gradients are right.
//!
//! Without the model in the Hub cache (scripts/fetch-test-models.sh) this fails when
//! RUSTFORMERS_REQUIRE_REAL_MODELS=1 (as .ci/run sets) and otherwise passes with a notice.

use std::path::Path;

use serde_json::json;

use rustformers_core::{AutoTokenizer, ModelFiles};
use rustformers_models::{AutoModelForSequenceClassification, LoadOptions, TrainLoad};
use rustformers_trainer::data::{text_classification, LabelSet};
use rustformers_trainer::trainer::text_classification_features;
use rustformers_trainer::{accuracy, Trainer, TrainingArguments};

const MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";

fn model_available() -> bool {
    let cached = ModelFiles::resolve(MODEL)
        .ok()
        .and_then(|f| f.root().map(|r| r.join("model.safetensors").is_file()))
        .unwrap_or(false);
    if cached {
        return true;
    }
    if std::env::var("RUSTFORMERS_REQUIRE_REAL_MODELS").as_deref() == Ok("1") {
        panic!("{MODEL} is not in the Hub cache: run scripts/fetch-test-models.sh");
    }
    eprintln!("NOTICE: {MODEL} not cached; run scripts/fetch-test-models.sh to test it");
    false
}

const SUBJECTS: [&str; 6] = [
    "The movie",
    "This book",
    "The food",
    "Our trip",
    "The concert",
    "The hotel",
];
const TEMPLATES: [&str; 2] = ["{s} was {a}.", "Honestly, I found {s} {a}."];

fn write(path: &Path, pos: &[&str], neg: &[&str]) {
    let mut text = String::new();
    for (adjs, label) in [(pos, "positive"), (neg, "negative")] {
        for a in adjs {
            for s in SUBJECTS {
                for t in TEMPLATES {
                    let s = if t.starts_with("Honestly") {
                        s.to_lowercase()
                    } else {
                        s.to_string()
                    };
                    let line = t.replace("{s}", &s).replace("{a}", a);
                    text.push_str(&json!({"text": line, "label": label}).to_string());
                    text.push('\n');
                }
            }
        }
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn minilm_learns_sentiment_and_generalises_to_unseen_words() {
    if !model_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (tp, ep) = (
        dir.path().join("train.jsonl"),
        dir.path().join("test.jsonl"),
    );
    write(
        &tp,
        &["wonderful", "great", "excellent", "delightful"],
        &["terrible", "awful", "horrible", "dreadful"],
    );
    write(
        &ep,
        &["fantastic", "superb", "lovely"],
        &["miserable", "atrocious", "disappointing"],
    );
    let train_ex = text_classification(&tp, "label").unwrap();
    let test_ex = text_classification(&ep, "label").unwrap();
    assert_eq!((train_ex.len(), test_ex.len()), (96, 72));
    let labels = LabelSet::from_examples(&train_ex, &tp, &[]).unwrap();
    let tok = AutoTokenizer::from_pretrained(MODEL).unwrap();
    let train = text_classification_features(
        &tok,
        &train_ex,
        &labels.indices(&train_ex, &tp).unwrap(),
        None,
    )
    .unwrap();
    let test = text_classification_features(
        &tok,
        &test_ex,
        &labels.indices(&test_ex, &ep).unwrap(),
        None,
    )
    .unwrap();
    let model = AutoModelForSequenceClassification::for_training(
        MODEL,
        &LoadOptions::default(),
        &TrainLoad {
            labels: Some(labels.names.clone()),
            seed: 42,
            ignore_mismatched_sizes: false,
            lora: None,
            lora_from: None,
            bf16: false,
            gradient_checkpointing: false,
        },
    )
    .unwrap();
    assert!(model
        .newly_initialized()
        .iter()
        .any(|n| n == "classifier.weight"));
    let args = TrainingArguments::from_json_value(
        json!({"output_dir": dir.path().join("out"), "num_train_epochs": 3,
            "per_device_train_batch_size": 16, "learning_rate": 2e-4, "warmup_ratio": 0.1,
            "weight_decay": 0.01, "logging_steps": 6, "save_strategy": "no"}),
        "test",
    )
    .unwrap();
    let mut t = Trainer::new(args, &model, Some(&tok), train, Some(test.clone())).unwrap();
    let (before, _) = t.predictions(&test).unwrap();
    let out = t.train(None).unwrap();
    assert_eq!(out.global_step, 18);
    let (after, eval_loss) = t.predictions(&test).unwrap();
    let (acc0, acc) = (accuracy(&before), accuracy(&after));
    eprintln!(
        "held-out accuracy {acc0:.3} -> {acc:.3}, eval loss {eval_loss:.4}, train loss {:.4}",
        out.training_loss
    );
    assert!(acc >= 0.9, "held-out accuracy {acc} (before: {acc0})");
}
