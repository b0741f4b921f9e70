//! The training loop on the tiny BERT fixture: the loss falls and a held-out set is
//! learned, checkpoints are whole HF checkpoints plus state and are rotated, a resumed
//! run reaches the uninterrupted run's weights, early stopping stops.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use rustformers_core::rng::Rng;
use rustformers_core::AutoTokenizer;
use rustformers_models::{
    AutoModelForSequenceClassification, LoadOptions, PreTrainedModel, SequenceClassificationModel,
    TrainLoad,
};
use rustformers_trainer::data::{text_classification, LabelSet};
use rustformers_trainer::trainer::{
    accuracy_metrics, last_checkpoint, list_checkpoints, text_classification_features, Batch,
};
use rustformers_trainer::{
    accuracy, EarlyStoppingCallback, Features, TrainModel, Trainer, TrainerCallback,
    TrainerControl, TrainerState, TrainingArguments,
};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-bert-seqcls")
}

const WORDS: [&str; 12] = [
    "the", "of", "and", "to", "in", "is", "it", "you", "that", "was", "for", "on",
];

/// `n` lines of JSONL: random words; the label says whether "hot" is among them.
fn task_file(dir: &Path, name: &str, n: usize, seed: u64) -> PathBuf {
    let mut rng = Rng::new(seed);
    let mut text = String::new();
    for i in 0..n {
        let mut words: Vec<&str> = (0..6).map(|_| WORDS[rng.below(WORDS.len())]).collect();
        let pos = i % 2 == 0;
        if pos {
            words[rng.below(6)] = "hot";
        }
        text.push_str(
            &json!({"text": words.join(" "), "label": if pos { "pos" } else { "neg" }}).to_string(),
        );
        text.push('\n');
    }
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn load(labels: &[String]) -> PreTrainedModel<dyn SequenceClassificationModel> {
    load_with(labels, false)
}

fn load_with(labels: &[String], bf16: bool) -> PreTrainedModel<dyn SequenceClassificationModel> {
    AutoModelForSequenceClassification::for_training(
        fixture().to_str().unwrap(),
        &LoadOptions::default(),
        &TrainLoad {
            labels: Some(labels.to_vec()),
            seed: 3,
            ignore_mismatched_sizes: true,
            lora: None,
            lora_from: None,
            bf16,
            gradient_checkpointing: false,
        },
    )
    .unwrap()
}

struct Data {
    tok: AutoTokenizer,
    labels: Vec<String>,
    train: Vec<Features>,
    eval: Vec<Features>,
}

fn data(dir: &Path) -> Data {
    let tok = AutoTokenizer::from_pretrained(fixture().to_str().unwrap()).unwrap();
    let tp = task_file(dir, "train.jsonl", 64, 1);
    let ep = task_file(dir, "eval.jsonl", 32, 2);
    let train_ex = text_classification(&tp, "label").unwrap();
    let eval_ex = text_classification(&ep, "label").unwrap();
    let set = LabelSet::from_examples(&train_ex, &tp, &[]).unwrap();
    let train =
        text_classification_features(&tok, &train_ex, &set.indices(&train_ex, &tp).unwrap(), None)
            .unwrap();
    let eval =
        text_classification_features(&tok, &eval_ex, &set.indices(&eval_ex, &ep).unwrap(), None)
            .unwrap();
    Data {
        tok,
        labels: set.names,
        train,
        eval,
    }
}

fn args(out: &Path, extra: Value) -> TrainingArguments {
    let mut v = json!({
        "output_dir": out,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 16,
        "learning_rate": 2e-3,
        "num_train_epochs": 6,
        "logging_steps": 4,
        "save_strategy": "no",
        "seed": 5,
    });
    if let (Value::Object(base), Value::Object(more)) = (&mut v, extra) {
        base.extend(more);
    }
    TrainingArguments::from_json_value(v, "test").unwrap()
}

fn weights(m: &PreTrainedModel<dyn SequenceClassificationModel>) -> Vec<Vec<f32>> {
    m.trainable_parameters()
        .iter()
        .map(|(_, v)| {
            v.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect()
}

#[test]
fn loss_falls_and_the_task_is_learned() {
    let dir = tempfile::tempdir().unwrap();
    let d = data(dir.path());
    assert_eq!(d.labels, ["neg", "pos"]);
    let model = load(&d.labels);
    // The 3-label head of the fixture was replaced for 2 labels.
    assert_eq!(
        model.newly_initialized(),
        ["classifier.weight", "classifier.bias"]
    );
    let out = dir.path().join("out");
    let a = args(
        &out,
        json!({"eval_strategy": "epoch", "report_to": "tensorboard", "num_train_epochs": 10,
            "learning_rate": 5e-3}),
    );
    let mut t = Trainer::new(
        a,
        &model,
        Some(&d.tok),
        d.train.clone(),
        Some(d.eval.clone()),
    )
    .unwrap();
    t.set_compute_metrics(accuracy_metrics());
    let before = t.evaluate().unwrap();
    let res = t.train(None).unwrap();
    assert_eq!(res.global_step, 80);
    let losses: Vec<f64> = t
        .state
        .log_history
        .iter()
        .filter_map(|l| l.get("loss").and_then(Value::as_f64))
        .collect();
    assert_eq!(losses.len(), 20);
    assert!(losses[losses.len() - 1] < 0.5 * losses[0], "{losses:?}");
    let evals: Vec<f64> = t
        .state
        .log_history
        .iter()
        .filter_map(|l| l.get("eval_accuracy").and_then(Value::as_f64))
        .collect();
    // Ten epoch-end evaluations (train starts a new history, as Python's does).
    assert_eq!(evals.len(), 10);
    let acc = *evals.last().unwrap();
    assert!(
        acc >= 0.9,
        "held-out accuracy {acc} (before training {before:?})"
    );
    // Every log entry carries step and epoch; the learning rate decays linearly to 0.
    let last_lr = t
        .state
        .log_history
        .iter()
        .rev()
        .find_map(|l| l.get("learning_rate").and_then(Value::as_f64))
        .unwrap();
    assert_eq!(last_lr, 0.0);
    assert!(t
        .state
        .log_history
        .iter()
        .all(|l| l.contains_key("step") && l.contains_key("epoch")));
    // A standalone evaluation is logged too, at the last step.
    let n = t.state.log_history.len();
    t.evaluate().unwrap();
    assert_eq!(t.state.log_history.len(), n + 1);
    let last = &t.state.log_history[n];
    assert_eq!(last["step"], 80);
    assert_eq!(last["eval_accuracy"].as_f64(), Some(acc));
    // Curves: TensorBoard events and a PNG.
    assert!(out.join("training_curves.png").is_file());
    let runs: Vec<_> = std::fs::read_dir(out.join("runs"))
        .unwrap()
        .flatten()
        .collect();
    let ev = rustformers_trainer::report::read_events(&runs[0].path()).unwrap();
    assert_eq!(ev.iter().filter(|e| e.0 == "train/loss").count(), 20);
    assert_eq!(ev.iter().filter(|e| e.0 == "eval/accuracy").count(), 10);
    // The saved model is a normal checkpoint: it reloads (for inference) with the
    // training labels and gives the trained model's predictions.
    let saved = dir.path().join("final");
    t.save_model(&saved).unwrap();
    let back =
        AutoModelForSequenceClassification::from_pretrained(saved.to_str().unwrap()).unwrap();
    assert_eq!(back.config.base().labels().unwrap(), ["neg", "pos"]);
    let batch = t
        .collate(&d.eval.iter().take(4).collect::<Vec<_>>(), &mut Rng::new(0))
        .unwrap();
    let want = model.model.forward(batch.encoder_inputs()).unwrap();
    let got = back.model.forward(batch.encoder_inputs()).unwrap();
    let diff = (want - got)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-5, "{diff}");
}

fn max_weight_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    let mut worst = 0f32;
    for (x, y) in a.iter().zip(b) {
        for (p, q) in x.iter().zip(y) {
            worst = worst.max((p - q).abs());
        }
    }
    worst
}

/// Trains `model_a` uninterrupted into `out_a`, then `model_b` (a fresh copy) from
/// `out_a`'s `checkpoint-{from}`; both must end at the same weights and step.
fn resume_parity(
    d: &Data,
    out_a: &Path,
    out_b: &Path,
    extra: Value,
    models: [&PreTrainedModel<dyn SequenceClassificationModel>; 2],
    from: usize,
) -> TrainerState {
    let mut ta = Trainer::new(
        args(out_a, extra.clone()),
        models[0],
        Some(&d.tok),
        d.train.clone(),
        None,
    )
    .unwrap();
    ta.train(None).unwrap();
    let ck = out_a.join(format!("checkpoint-{from}"));
    let st = TrainerState::load(&ck.join("trainer_state.json")).unwrap();
    assert_eq!(st.global_step, from);
    let mut tb = Trainer::new(
        args(out_b, extra),
        models[1],
        Some(&d.tok),
        d.train.clone(),
        None,
    )
    .unwrap();
    tb.train(Some(&ck)).unwrap();
    assert_eq!(tb.state.global_step, ta.state.global_step);
    let worst = max_weight_diff(&weights(models[0]), &weights(models[1]));
    assert!(
        worst <= 1e-6,
        "resumed from step {from}: differs by {worst}"
    );
    // The history continues the checkpoint's.
    assert!(tb.state.log_history.len() > st.log_history.len());
    st
}

#[test]
fn checkpoints_rotate_and_a_resumed_run_reaches_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let d = data(dir.path());
    let extra = json!({"max_steps": 12, "save_steps": 4, "save_strategy": "steps",
        "save_total_limit": 2, "gradient_accumulation_steps": 2, "warmup_steps": 2,
        "weight_decay": 0.01});
    let out_a = dir.path().join("a");
    // Interrupted after step 8 (an epoch boundary: 8 micro-batches, 4 updates an
    // epoch): a fresh model resumes from checkpoint-8.
    let st = resume_parity(
        &d,
        &out_a,
        &dir.path().join("b"),
        extra,
        [&load(&d.labels), &load(&d.labels)],
        8,
    );
    assert_eq!(st.max_steps, 12);
    assert!(!st.log_history.is_empty());
    let ckpts: Vec<usize> = list_checkpoints(&out_a)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(ckpts, [8, 12], "save_total_limit 2 keeps the newest two");
    assert!(last_checkpoint(&out_a)
        .unwrap()
        .unwrap()
        .ends_with("checkpoint-12"));
    let ck = out_a.join("checkpoint-8");
    for f in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "optimizer.safetensors",
        "scheduler.json",
        "trainer_state.json",
        "rng_state.json",
        "training_args.json",
    ] {
        assert!(ck.join(f).is_file(), "{f}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(&out_a)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary folders left: {leftovers:?}"
    );
}

/// Resuming inside an epoch, where the epoch ends in a shorter accumulation: 8
/// micro-batches with accumulation 3 make updates of 3, 3 and 2 micro-batches, so
/// checkpoint-4 lies after the first update of the second epoch.
#[test]
fn a_run_resumed_inside_an_epoch_reaches_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let d = data(dir.path());
    let extra = json!({"max_steps": 8, "save_steps": 4, "save_strategy": "steps",
        "gradient_accumulation_steps": 3, "warmup_steps": 1});
    let st = resume_parity(
        &d,
        &dir.path().join("a"),
        &dir.path().join("b"),
        extra,
        [&load(&d.labels), &load(&d.labels)],
        4,
    );
    assert!((st.epoch - 1.375).abs() < 1e-9, "epoch {}", st.epoch);
}

/// A LoRA run's checkpoints hold a PEFT adapter (no model.safetensors): resuming reads
/// the adapter and the head from it.
#[test]
fn a_lora_run_resumes_from_its_adapter_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let d = data(dir.path());
    let lora = || {
        let cfg: rustformers_core::lora::LoraConfig = serde_json::from_value(json!({
            "peft_type": "LORA", "task_type": "SEQ_CLS", "r": 4, "lora_alpha": 8,
            "target_modules": ["query", "value"], "modules_to_save": ["classifier"]}))
        .unwrap();
        AutoModelForSequenceClassification::for_training(
            fixture().to_str().unwrap(),
            &LoadOptions::default(),
            &TrainLoad {
                labels: Some(d.labels.clone()),
                seed: 3,
                ignore_mismatched_sizes: true,
                lora: Some(cfg),
                ..Default::default()
            },
        )
        .unwrap()
    };
    let out_a = dir.path().join("a");
    let extra = json!({"max_steps": 10, "save_steps": 5, "save_strategy": "steps",
        "learning_rate": 1e-2});
    resume_parity(
        &d,
        &out_a,
        &dir.path().join("b"),
        extra,
        [&lora(), &lora()],
        5,
    );
    let ck = out_a.join("checkpoint-5");
    assert!(ck.join("adapter_model.safetensors").is_file());
    assert!(!ck.join("model.safetensors").exists());
}

#[test]
fn early_stopping_stops_and_the_best_model_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let d = data(dir.path());
    let model = load(&d.labels);
    let out = dir.path().join("out");
    // A learning rate of 0 never improves: patience 2 stops after the third evaluation.
    let a = args(
        &out,
        json!({"learning_rate": 0.0, "eval_strategy": "steps", "eval_steps": 2,
            "save_strategy": "steps", "save_steps": 2, "load_best_model_at_end": true,
            "metric_for_best_model": "loss"}),
    );
    EarlyStoppingCallback::check(&a).unwrap();
    let mut t = Trainer::new(
        a,
        &model,
        Some(&d.tok),
        d.train.clone(),
        Some(d.eval.clone()),
    )
    .unwrap();
    t.add_callback(Box::new(EarlyStoppingCallback::new(2, 0.0)));
    t.train(None).unwrap();
    assert_eq!(t.state.global_step, 6);
    assert!(t
        .state
        .best_model_checkpoint
        .as_deref()
        .is_some_and(|b| b.ends_with("checkpoint-2")));
}

/// The collators: token labels padded with IGNORE; causal labels are the inputs with
/// padding ignored; masked LM picks about `probability` of the non-special tokens, never
/// a special one, and turns ~80% of the picks into [MASK].
#[test]
fn collators_follow_pythons() {
    use rustformers_trainer::trainer::{Collator, IGNORE};
    let dir = tempfile::tempdir().unwrap();
    let d = data(dir.path());
    let model = load(&d.labels);
    let out = dir.path().join("out");
    let mut t = Trainer::new(
        args(&out, json!({})),
        &model,
        Some(&d.tok),
        d.train.clone(),
        None,
    )
    .unwrap();
    let a = Features {
        input_ids: vec![2, 10, 11, 3],
        token_type_ids: vec![0; 4],
        labels: vec![IGNORE, 1, 0, IGNORE],
    };
    let b = Features {
        input_ids: vec![2, 12, 3],
        token_type_ids: vec![0; 3],
        labels: vec![IGNORE, 1, IGNORE],
    };
    let mut rng = Rng::new(1);
    t.set_collator(Collator::TokenClassification);
    let batch = t.collate(&[&a, &b], &mut rng).unwrap();
    assert_eq!(
        batch.labels.to_vec2::<u32>().unwrap()[1],
        [IGNORE, 1, IGNORE, IGNORE]
    );
    assert_eq!(batch.input_ids.to_vec2::<u32>().unwrap()[1], [2, 12, 3, 0]);
    assert_eq!(
        batch.attention_mask.to_vec2::<u32>().unwrap()[1],
        [1, 1, 1, 0]
    );
    t.set_collator(Collator::CausalLm);
    let batch = t.collate(&[&a, &b], &mut rng).unwrap();
    assert_eq!(
        batch.labels.to_vec2::<u32>().unwrap()[1],
        [2, 12, 3, IGNORE]
    );
    t.set_collator(Collator::MaskedLm {
        probability: 0.15,
        mask_id: 4,
        vocab_size: 300,
        special_ids: vec![0, 2, 3],
    });
    let long = Features {
        input_ids: [2]
            .into_iter()
            .chain((0..4000).map(|i| 10 + i % 200))
            .chain([3])
            .collect(),
        token_type_ids: vec![],
        labels: vec![],
    };
    let batch = t.collate(&[&long], &mut rng).unwrap();
    let (ids, labels) = (
        &batch.input_ids.to_vec2::<u32>().unwrap()[0],
        &batch.labels.to_vec2::<u32>().unwrap()[0],
    );
    assert_eq!((labels[0], labels[4001]), (IGNORE, IGNORE));
    let picked: Vec<usize> = (0..ids.len()).filter(|i| labels[*i] != IGNORE).collect();
    let share = picked.len() as f64 / 4000.0;
    assert!((share - 0.15).abs() < 0.02, "{share}");
    let masked = picked.iter().filter(|i| ids[**i] == 4).count() as f64 / picked.len() as f64;
    assert!((masked - 0.8).abs() < 0.05, "{masked}");
    assert!(picked.iter().all(|i| labels[*i] == long.input_ids[*i]));
}

/// The dropout switch: off, a model loaded for training gives the inference logits (up
/// to the float order of the op-by-op path); on, the logits change, and the same seed
/// gives the same ones (GPT-2's attention, residual and embedding dropout; BERT's; the
/// Llama family's `attention_dropout`, and Phi-3's `resid_pdrop` too; LoRA's
/// `lora_dropout`).
#[test]
fn dropout_follows_the_train_switch() {
    use rustformers_models::AutoModelForCausalLM;
    use rustformers_trainer::trainer::Batch;
    use rustformers_trainer::TrainModel;
    let fx = |n: &str| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures")
            .join(n)
            .to_string_lossy()
            .into_owned()
    };
    let dev = candle_core::Device::Cpu;
    let ids = candle_core::Tensor::new(&[[5u32, 9, 14, 3, 7, 2]], &dev).unwrap();
    let (t, o) = (TrainLoad::default(), LoadOptions::default());
    // Causal LM labels are the tokens; sequence classification takes one label.
    // (model for training, model for inference, labels)
    type Case = (
        Box<dyn TrainModel>,
        Box<dyn TrainModel>,
        candle_core::Tensor,
    );
    // Llama-family fixtures have no dropout: copies with `attention_dropout` (and Phi-3's
    // `resid_pdrop`) set.
    let tmp = tempfile::tempdir().unwrap();
    let with_dropout = |name: &str, rates: serde_json::Value| -> String {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for e in std::fs::read_dir(fx(name)).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
            }
        }
        let path = dir.join("config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for (k, v) in rates.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        std::fs::write(&path, cfg.to_string()).unwrap();
        dir.to_string_lossy().into_owned()
    };
    let llama = with_dropout("tiny-llama", serde_json::json!({"attention_dropout": 0.3}));
    let phi3 = with_dropout(
        "tiny-phi3",
        serde_json::json!({"attention_dropout": 0.2, "resid_pdrop": 0.2}),
    );
    let mut cases: Vec<Case> = vec![
        (
            Box::new(AutoModelForCausalLM::for_training(&fx("tiny-gpt2"), &o, &t).unwrap()),
            Box::new(AutoModelForCausalLM::from_pretrained(&fx("tiny-gpt2")).unwrap()),
            ids.clone(),
        ),
        (
            Box::new(
                AutoModelForSequenceClassification::for_training(&fx("tiny-bert-seqcls"), &o, &t)
                    .unwrap(),
            ),
            Box::new(
                AutoModelForSequenceClassification::from_pretrained(&fx("tiny-bert-seqcls"))
                    .unwrap(),
            ),
            candle_core::Tensor::new(&[0u32], &dev).unwrap(),
        ),
    ];
    for m in [&llama, &phi3] {
        cases.push((
            Box::new(AutoModelForCausalLM::for_training(m, &o, &t).unwrap()),
            Box::new(AutoModelForCausalLM::from_pretrained(m).unwrap()),
            ids.clone(),
        ));
    }
    // PEFT's lora_dropout, on the input of the adapters (a PEFT-made adapter, B ≠ 0),
    // against the same adapter without it.
    let lora = |p: f64| TrainLoad {
        lora: Some(
            serde_json::from_value(serde_json::json!({"r": 4, "lora_alpha": 8,
                "lora_dropout": p, "target_modules": ["q_proj", "v_proj"],
                "task_type": "CAUSAL_LM"}))
            .unwrap(),
        ),
        lora_from: Some(PathBuf::from(fx("train-lora/tiny-llama/initial"))),
        ..Default::default()
    };
    cases.push((
        Box::new(AutoModelForCausalLM::for_training(&fx("tiny-llama"), &o, &lora(0.4)).unwrap()),
        Box::new(AutoModelForCausalLM::for_training(&fx("tiny-llama"), &o, &lora(0.0)).unwrap()),
        ids.clone(),
    ));
    for (train, infer, labels) in &cases {
        let batch = Batch {
            token_type_ids: ids.zeros_like().unwrap(),
            attention_mask: ids.ones_like().unwrap(),
            labels: labels.clone(),
            input_ids: ids.clone(),
        };
        let run = |m: &dyn TrainModel| -> Vec<f32> {
            let (_, logits) = m.loss(&batch).unwrap();
            logits
                .detach()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let max_diff = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max)
        };
        let reference = run(infer.as_ref());
        train.set_training(false, 0);
        assert!(max_diff(&run(train.as_ref()), &reference) < 1e-4);
        train.set_training(true, 1);
        let a = run(train.as_ref());
        train.set_training(true, 1);
        assert_eq!(run(train.as_ref()), a, "same seed, same masks");
        assert!(max_diff(&a, &reference) > 1e-2, "dropout changed nothing");
        train.set_training(false, 0);
    }
}

/// `bf16: true` in the arguments with a model loaded for bf16 (`TrainLoad::bf16`): the
/// same run as f32 learns the task; the saved weights are f32; arguments and model that
/// disagree are an error.
#[test]
fn bf16_training_learns_and_must_match_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = data(dir.path());
    let model = load_with(&d.labels, true);
    let out = dir.path().join("out");
    let a = args(
        &out,
        json!({"eval_strategy": "epoch", "num_train_epochs": 10, "learning_rate": 5e-3,
            "bf16": true}),
    );
    let mut t = Trainer::new(
        a.clone(),
        &model,
        Some(&d.tok),
        d.train.clone(),
        Some(d.eval.clone()),
    )
    .unwrap();
    t.set_compute_metrics(accuracy_metrics());
    t.train(None).unwrap();
    let evals: Vec<f64> = t
        .state
        .log_history
        .iter()
        .filter_map(|l| l.get("eval_accuracy").and_then(Value::as_f64))
        .collect();
    let acc = *evals.last().unwrap();
    assert!(acc >= 0.9, "held-out accuracy {acc} with bf16");
    let saved = dir.path().join("final");
    t.save_model(&saved).unwrap();
    let w =
        candle_core::safetensors::load(saved.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    assert!(w.values().all(|t| t.dtype() == candle_core::DType::F32));
    // Arguments and model must agree.
    let f32_model = load(&d.labels);
    let e = Trainer::new(a, &f32_model, Some(&d.tok), d.train.clone(), None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("TrainLoad { bf16: true"), "{e}");
    let plain = args(&out, json!({}));
    let e = Trainer::new(plain, &model, Some(&d.tok), d.train.clone(), None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("bf16 is not set"), "{e}");
}

/// Records every hook it sees and acts on the control: asks for a save after step 1
/// and stops the run after step 3.
struct Recorder {
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl TrainerCallback for Recorder {
    fn on_init_end(&mut self, _: &TrainingArguments, _: &TrainerState, _: &mut TrainerControl) {
        self.push("init_end");
    }
    fn on_train_begin(&mut self, _: &TrainingArguments, _: &TrainerState, _: &mut TrainerControl) {
        self.push("train_begin");
    }
    fn on_epoch_begin(&mut self, _: &TrainingArguments, _: &TrainerState, _: &mut TrainerControl) {
        self.push("epoch_begin");
    }
    fn on_step_begin(&mut self, _: &TrainingArguments, _: &TrainerState, _: &mut TrainerControl) {
        self.push("step_begin");
    }
    fn on_substep_end(&mut self, _: &TrainingArguments, _: &TrainerState, _: &mut TrainerControl) {
        self.push("substep_end");
    }
    fn on_pre_optimizer_step(
        &mut self,
        _: &TrainingArguments,
        _: &TrainerState,
        _: &mut TrainerControl,
    ) {
        self.push("pre_optimizer_step");
    }
    fn on_optimizer_step(
        &mut self,
        _: &TrainingArguments,
        _: &TrainerState,
        _: &mut TrainerControl,
    ) {
        self.push("optimizer_step");
    }
    fn on_step_end(&mut self, _: &TrainingArguments, s: &TrainerState, c: &mut TrainerControl) {
        self.push(&format!("step_end {}", s.global_step));
        if s.global_step == 1 {
            c.should_save = true;
        }
        if s.global_step == 3 {
            c.should_training_stop = true;
        }
    }
    fn on_log(
        &mut self,
        _: &TrainingArguments,
        _: &TrainerState,
        _: &mut TrainerControl,
        logs: &serde_json::Map<String, Value>,
    ) {
        let kind = ["loss", "eval_loss", "train_loss"]
            .into_iter()
            .find(|k| logs.contains_key(*k))
            .unwrap_or("other");
        self.push(&format!("log {kind}"));
    }
    fn on_save(&mut self, _: &TrainingArguments, s: &TrainerState, _: &mut TrainerControl) {
        self.push(&format!("save {}", s.global_step));
    }
    fn on_epoch_end(&mut self, _: &TrainingArguments, _: &TrainerState, _: &mut TrainerControl) {
        self.push("epoch_end");
    }
    fn on_train_end(&mut self, _: &TrainingArguments, _: &TrainerState, _: &mut TrainerControl) {
        self.push("train_end");
    }
    fn on_prediction_step(
        &mut self,
        _: &TrainingArguments,
        _: &TrainerState,
        _: &mut TrainerControl,
    ) {
        self.push("prediction_step");
    }
    fn on_evaluate(
        &mut self,
        _: &TrainingArguments,
        _: &TrainerState,
        _: &mut TrainerControl,
        _: &serde_json::Map<String, Value>,
    ) {
        self.push("evaluate");
    }
    fn on_predict(
        &mut self,
        _: &TrainingArguments,
        _: &TrainerState,
        _: &mut TrainerControl,
        metrics: &serde_json::Map<String, Value>,
    ) {
        self.push(&format!("predict {}", metrics.len()));
    }
}

impl Recorder {
    fn push(&self, what: &str) {
        self.seen.lock().unwrap().push(what.to_string());
    }
}

/// The hooks come in Python's order (accumulation 2: a sub-step, then clipping's
/// pre-optimizer hook, the step, the step's end), and a callback's control is obeyed:
/// a save it asks for after step 1 is written although save_strategy is no, and the run
/// stops after step 3 of 8. `predict` gives the `test_` metrics and calls `on_predict`.
#[test]
fn callbacks_see_pythons_hook_order_and_steer_the_loop() {
    let dir = tempfile::tempdir().unwrap();
    let d = data(dir.path());
    let model = load(&d.labels);
    let out = dir.path().join("out");
    let a = args(
        &out,
        json!({"max_steps": 8, "gradient_accumulation_steps": 2, "logging_steps": 2}),
    );
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut t = Trainer::new(a, &model, Some(&d.tok), d.train.clone(), None).unwrap();
    t.add_callback(Box::new(Recorder { seen: seen.clone() }));
    t.set_compute_metrics(accuracy_metrics());
    t.train(None).unwrap();
    assert_eq!(t.state.global_step, 3, "stopped by the callback");
    let got = seen.lock().unwrap().clone();
    let step = |n: usize| {
        vec![
            "step_begin".to_string(),
            "substep_end".into(),
            "pre_optimizer_step".into(),
            "optimizer_step".into(),
            format!("step_end {n}"),
        ]
    };
    let mut want: Vec<String> = vec![
        "init_end".into(),
        "train_begin".into(),
        "epoch_begin".into(),
    ];
    want.extend(step(1));
    want.push("save 1".into());
    want.extend(step(2));
    want.push("log loss".into());
    want.extend(step(3));
    // A stop asked by a callback does not log (step 3 is not a logging step), as in
    // Python; the epoch ends, the run's summary is logged and the run ends.
    want.extend(["epoch_end", "log train_loss", "train_end"].map(String::from));
    assert_eq!(got, want);
    assert_eq!(
        list_checkpoints(&out)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect::<Vec<_>>(),
        [1]
    );
    // predict: 32 held-out examples in batches of 16.
    seen.lock().unwrap().clear();
    let res = t.predict(&d.eval).unwrap();
    assert_eq!(res.predictions.label_ids.len(), d.eval.len());
    assert_eq!(res.predictions.predictions.len(), d.eval.len());
    let mut keys: Vec<&str> = res.metrics.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "test_accuracy",
            "test_loss",
            "test_runtime",
            "test_samples_per_second",
            "test_steps_per_second"
        ]
    );
    assert_eq!(
        res.metrics["test_accuracy"].as_f64().unwrap(),
        accuracy(&res.predictions)
    );
    assert_eq!(
        *seen.lock().unwrap(),
        ["prediction_step", "prediction_step", "predict 5"]
    );
}

/// An evaluation strategy without an evaluation set is refused, as Python's Trainer
/// refuses it.
#[test]
fn an_eval_strategy_needs_an_eval_set() {
    let dir = tempfile::tempdir().unwrap();
    let d = data(dir.path());
    let model = load(&d.labels);
    let a = args(&dir.path().join("out"), json!({"eval_strategy": "steps"}));
    let e = Trainer::new(a, &model, Some(&d.tok), d.train.clone(), None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no evaluation set"), "{e}");
}

/// A model whose save fails on its `fail_at`-th call, after writing part of its files:
/// a process that dies in the middle of writing a checkpoint.
struct FailingSave<'a> {
    inner: &'a dyn TrainModel,
    calls: std::sync::atomic::AtomicUsize,
    fail_at: usize,
}

impl TrainModel for FailingSave<'_> {
    fn parameters(&self) -> Vec<(String, candle_core::Var)> {
        self.inner.parameters()
    }
    fn loss(
        &self,
        batch: &Batch,
    ) -> rustformers_trainer::Result<(candle_core::Tensor, candle_core::Tensor)> {
        self.inner.loss(batch)
    }
    fn save(&self, dir: &Path) -> rustformers_trainer::Result<()> {
        let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if n == self.fail_at {
            std::fs::write(dir.join("model.safetensors"), b"half a file").unwrap();
            return Err(rustformers_trainer::TrainerError::Other("disk full".into()));
        }
        self.inner.save(dir)
    }
    fn set_training(&self, on: bool, seed: u64) {
        self.inner.set_training(on, seed)
    }
    fn bf16(&self) -> bool {
        self.inner.bf16()
    }
    fn gradient_checkpointing(&self) -> bool {
        self.inner.gradient_checkpointing()
    }
    fn backward(
        &self,
        loss: &candle_core::Tensor,
    ) -> rustformers_trainer::Result<candle_core::backprop::GradStore> {
        self.inner.backward(loss)
    }
}

/// A save that fails midway leaves the previous checkpoint whole (it still resumes)
/// and no `checkpoint-N` for the failed step; the next run clears the unfinished
/// temporary folder.
#[test]
fn a_save_that_fails_midway_leaves_the_previous_checkpoint_whole() {
    let dir = tempfile::tempdir().unwrap();
    let d = data(dir.path());
    let model = load(&d.labels);
    let failing = FailingSave {
        inner: &model,
        calls: 0.into(),
        fail_at: 2,
    };
    let out = dir.path().join("out");
    let extra = json!({"max_steps": 6, "save_steps": 2, "save_strategy": "steps",
        "logging_steps": 1});
    let mut t = Trainer::new(
        args(&out, extra.clone()),
        &failing,
        Some(&d.tok),
        d.train.clone(),
        None,
    )
    .unwrap();
    let e = t.train(None).unwrap_err().to_string();
    assert!(e.contains("disk full"), "{e}");
    let ckpts: Vec<usize> = list_checkpoints(&out)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(ckpts, [2], "only the finished save is a checkpoint");
    let unfinished: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(".checkpoint-4.tmp-"))
        .collect();
    assert_eq!(unfinished.len(), 1, "the failed save's temporary folder");
    // The curves up to the last finished save are there.
    assert!(out.join("training_curves.png").is_file());
    // checkpoint-2 is whole: a fresh model resumes from it and finishes.
    let fresh = load(&d.labels);
    let mut t2 = Trainer::new(
        args(&out, extra),
        &fresh,
        Some(&d.tok),
        d.train.clone(),
        None,
    )
    .unwrap();
    t2.train(Some(&out.join("checkpoint-2"))).unwrap();
    assert_eq!(t2.state.global_step, 6);
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(names.is_empty(), "left over: {names:?}");
    assert_eq!(
        list_checkpoints(&out)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect::<Vec<_>>(),
        [2, 4, 6]
    );
}

/// load_best_model_at_end with training that moves the weights: the final weights are
/// the best checkpoint's, not the last step's. The metric is accuracy with
/// greater_is_better false, so the best is the first evaluation's (accuracy does not
/// fall below it while the task is learned), whatever the ties.
#[test]
fn the_best_checkpoint_is_loaded_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let d = data(dir.path());
    let model = load(&d.labels);
    let out = dir.path().join("out");
    let a = args(
        &out,
        json!({"max_steps": 6, "eval_strategy": "steps", "eval_steps": 2,
            "save_strategy": "steps", "save_steps": 2, "load_best_model_at_end": true,
            "metric_for_best_model": "accuracy", "greater_is_better": false,
            "learning_rate": 5e-3}),
    );
    let mut t = Trainer::new(
        a,
        &model,
        Some(&d.tok),
        d.train.clone(),
        Some(d.eval.clone()),
    )
    .unwrap();
    t.set_compute_metrics(accuracy_metrics());
    t.train(None).unwrap();
    // The lowest accuracy (the first evaluation reaching it) is the best.
    let evals: Vec<(u64, f64)> = t
        .state
        .log_history
        .iter()
        .filter_map(|l| Some((l["step"].as_u64()?, l.get("eval_accuracy")?.as_f64()?)))
        .collect();
    assert_eq!(evals.len(), 3);
    let lowest = evals
        .iter()
        .fold(evals[0], |b, e| if e.1 < b.1 { *e } else { b });
    let best = PathBuf::from(t.state.best_model_checkpoint.clone().unwrap());
    assert!(
        best.ends_with(format!("checkpoint-{}", lowest.0)),
        "{} for {evals:?}",
        best.display()
    );
    assert!(!best.ends_with("checkpoint-6"), "{}", best.display());
    let saved = |ck: &Path| -> Vec<Vec<f32>> {
        let st =
            candle_core::safetensors::load(ck.join("model.safetensors"), &candle_core::Device::Cpu)
                .unwrap();
        model
            .trainable_parameters()
            .iter()
            .map(|(n, _)| st[n].flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect()
    };
    let now = weights(&model);
    assert_eq!(max_weight_diff(&now, &saved(&best)), 0.0);
    assert!(max_weight_diff(&now, &saved(&out.join("checkpoint-6"))) > 1e-4);
}

/// Token-classification features: a word the vocabulary splits into several pieces
/// takes its tag on the first piece only (-100 on the rest and on the special tokens);
/// `max_length` truncates the row and its labels together.
#[test]
fn token_labels_go_to_first_sub_tokens_and_truncate_with_the_row() {
    use rustformers_core::tokenizer::{EncodeOptions, TextInput};
    use rustformers_trainer::data::{LabelValue, TokenExample};
    use rustformers_trainer::trainer::{token_classification_features, IGNORE};
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-bert-tokcls");
    let tok = AutoTokenizer::from_pretrained(dir.to_str().unwrap()).unwrap();
    // "zebra" is not in the 348-piece vocabulary: it becomes several `##` pieces.
    let pieces = tok
        .encode(
            TextInput::Words(&["zebra".to_string()]),
            &EncodeOptions {
                add_special_tokens: false,
                ..Default::default()
            },
        )
        .unwrap()
        .input_ids[0]
        .len();
    assert!(pieces > 1, "zebra is {pieces} piece(s)");
    let ex = TokenExample {
        line: 1,
        tokens: vec!["zebra".into(), "the".into()],
        tags: vec![LabelValue::Id(1), LabelValue::Id(2)],
    };
    let f = token_classification_features(&tok, std::slice::from_ref(&ex), &[vec![1, 2]], None)
        .unwrap();
    let mut want = vec![IGNORE, 1];
    want.extend(std::iter::repeat_n(IGNORE, pieces - 1));
    want.extend([2, IGNORE]);
    assert_eq!(f[0].labels, want);
    assert_eq!(f[0].input_ids.len(), want.len());
    let short = token_classification_features(&tok, &[ex], &[vec![1, 2]], Some(3)).unwrap();
    assert_eq!(short[0].input_ids.len(), 3);
    assert_eq!(short[0].labels, [IGNORE, 1, IGNORE]);
    assert_eq!(
        *short[0].input_ids.last().unwrap(),
        tok.token_to_id("[SEP]").unwrap()
    );
}

/// Text pairs (sentence1/sentence2) are encoded as pairs: `[CLS] a [SEP] b [SEP]` with
/// token type 0 through the first `[SEP]` and 1 after it.
#[test]
fn text_pairs_are_encoded_as_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let tok = AutoTokenizer::from_pretrained(fixture().to_str().unwrap()).unwrap();
    let p = dir.path().join("pairs.jsonl");
    std::fs::write(
        &p,
        "{\"sentence1\": \"the hot one\", \"sentence2\": \"it was for you\", \"label\": 1}\n",
    )
    .unwrap();
    let ex = text_classification(&p, "label").unwrap();
    let f = text_classification_features(&tok, &ex, &[1], None).unwrap();
    let sep = tok.token_to_id("[SEP]").unwrap();
    let cls = tok.token_to_id("[CLS]").unwrap();
    let ids = &f[0].input_ids;
    assert_eq!(ids[0], cls);
    let seps: Vec<usize> = (0..ids.len()).filter(|i| ids[*i] == sep).collect();
    assert_eq!(seps.len(), 2);
    assert_eq!(seps[1], ids.len() - 1);
    // "the hot one": 3 words, each in the vocabulary.
    assert_eq!(seps[0], 4);
    let types = &f[0].token_type_ids;
    assert!(types[..=seps[0]].iter().all(|t| *t == 0), "{types:?}");
    assert!(types[seps[0] + 1..].iter().all(|t| *t == 1), "{types:?}");
    assert_eq!(f[0].labels, [1]);
}

/// What a killed save leaves is cleared at the next start: a temporary folder is
/// deleted; the previous copy of a re-saved step comes back as `checkpoint-N` when the
/// process died between the two renames, and is deleted when `checkpoint-N` is whole.
/// A folder that only looks similar is left alone.
#[test]
fn unfinished_saves_are_cleared_and_a_swapped_out_checkpoint_restored() {
    let dir = tempfile::tempdir().unwrap();
    let d = data(dir.path());
    let model = load(&d.labels);
    let out = dir.path().join("out");
    for (name, file) in [
        (".checkpoint-99.tmp-1", "half"),
        (".checkpoint-98.old-1", "whole-98"),
        (".checkpoint-97.old-1", "stale-97"),
        ("checkpoint-97", "whole-97"),
        (".checkpoint-x.tmp-1", "mine"),
    ] {
        std::fs::create_dir_all(out.join(name)).unwrap();
        std::fs::write(out.join(name).join("f"), file).unwrap();
    }
    let a = args(&out, json!({"max_steps": 1}));
    let mut t = Trainer::new(a, &model, Some(&d.tok), d.train.clone(), None).unwrap();
    t.train(None).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains("checkpoint"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [".checkpoint-x.tmp-1", "checkpoint-97", "checkpoint-98"]
    );
    let read = |n: &str| std::fs::read_to_string(out.join(n).join("f")).unwrap();
    assert_eq!(read("checkpoint-98"), "whole-98");
    assert_eq!(read("checkpoint-97"), "whole-97");
}

/// A callback that refuses the arguments stops `train` before anything is written.
#[test]
fn a_callback_refusing_the_arguments_stops_training_before_any_write() {
    let dir = tempfile::tempdir().unwrap();
    let d = data(dir.path());
    let model = load(&d.labels);
    let out = dir.path().join("out");
    let a = args(&out, json!({"max_steps": 2}));
    let mut t = Trainer::new(a, &model, Some(&d.tok), d.train.clone(), None).unwrap();
    t.add_callback(Box::new(EarlyStoppingCallback::new(1, 0.0)));
    let e = t.train(None).unwrap_err().to_string();
    assert!(e.contains("needs metric_for_best_model"), "{e}");
    assert!(!out.exists());
    assert_eq!(t.state.global_step, 0);
}
