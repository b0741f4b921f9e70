//! What the Trainer saves, Python loads with the same outputs: four short trainings
//! (BERT sequence classification, full and LoRA; Llama causal LM, full; GPT-2 causal LM,
//! LoRA on its Conv1D) are saved with `save_model`, and their logits are compared with
//! the logits Python `transformers` 5.25.0 (with peft 0.22.0 for the adapters) gave for
//! the same trainings' saves (tests/fixtures/python-loads, recorded by
//! tools/golden/make_python_loads.py, which runs this test to write the folders).
//!
//! The files must also have the tensors (names, dtypes, shapes) and config entries
//! Python read: a renamed or transposed tensor would fail that even where rustformers
//! reads its own save back consistently.

mod common;
use common::{fixtures, matrix, max_diff};

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::{json, Value};

use rustformers_core::lora::LoraConfig;
use rustformers_core::AutoTokenizer;
use rustformers_models::{
    AutoModelForCausalLM, AutoModelForSequenceClassification, LoadOptions, TrainLoad,
};
use rustformers_trainer::data::{LabelValue, TextExample};
use rustformers_trainer::trainer::{
    language_modeling_features, text_classification_features, Batch, Collator,
};
use rustformers_trainer::{TrainModel, Trainer, TrainingArguments};

/// One training: the fixture model, the task and the adapter settings.
struct Case {
    name: &'static str,
    base: &'static str,
    causal: bool,
    lora: Option<Value>,
}

const CASES: [Case; 4] = [
    Case {
        name: "bert-seqcls",
        base: "tiny-bert-seqcls",
        causal: false,
        lora: None,
    },
    Case {
        name: "bert-seqcls-lora",
        base: "tiny-bert-seqcls",
        causal: false,
        lora: Some(Value::Null),
    },
    Case {
        name: "llama-causal",
        base: "tiny-llama",
        causal: true,
        lora: None,
    },
    Case {
        name: "gpt2-causal-lora",
        base: "tiny-gpt2",
        causal: true,
        lora: Some(Value::Null),
    },
];

const TEXTS: [(&str, &str); 4] = [
    ("the hot one is on", "warm"),
    ("it was for you and", "cold"),
    ("the one that is hot", "warm"),
    ("you and it was", "cold"),
];

fn lora_config(case: &Case) -> Option<LoraConfig> {
    case.lora.as_ref()?;
    let v = if case.causal {
        json!({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8,
            "target_modules": ["c_attn"], "fan_in_fan_out": true, "bias": "none",
            "inference_mode": true})
    } else {
        json!({"peft_type": "LORA", "task_type": "SEQ_CLS", "r": 4, "lora_alpha": 8,
            "target_modules": ["query", "value"], "modules_to_save": ["classifier", "score"],
            "bias": "none", "inference_mode": true})
    };
    Some(serde_json::from_value(v).unwrap())
}

/// Trains `case` for 6 steps and saves the model into `out`.
fn train_and_save(case: &Case, out: &Path) {
    let base = fixtures().join(case.base);
    let base = base.to_str().unwrap();
    let tok = AutoTokenizer::from_pretrained(base).unwrap();
    let labels = vec!["cold".to_string(), "warm".to_string()];
    let load = TrainLoad {
        labels: (!case.causal).then(|| labels.clone()),
        seed: 7,
        ignore_mismatched_sizes: true,
        lora: lora_config(case),
        ..Default::default()
    };
    let args = TrainingArguments::from_json_value(
        json!({"output_dir": out.join("run"), "max_steps": 6, "learning_rate": 5e-3,
            "per_device_train_batch_size": 2, "save_strategy": "no", "seed": 11,
            "weight_decay": 0.01, "warmup_steps": 1}),
        "test",
    )
    .unwrap();
    let opts = LoadOptions::default();
    let model: Box<dyn TrainModel> = if case.causal {
        Box::new(AutoModelForCausalLM::for_training(base, &opts, &load).unwrap())
    } else {
        Box::new(AutoModelForSequenceClassification::for_training(base, &opts, &load).unwrap())
    };
    let (features, collator) = if case.causal {
        let texts: Vec<String> = TEXTS.iter().map(|(t, _)| t.to_string()).collect();
        (
            language_modeling_features(&tok, &texts, 4).unwrap(),
            Collator::CausalLm,
        )
    } else {
        let ex: Vec<TextExample> = TEXTS
            .iter()
            .enumerate()
            .map(|(i, (t, l))| TextExample {
                line: i + 1,
                text: t.to_string(),
                text_pair: None,
                label: LabelValue::Name(l.to_string()),
            })
            .collect();
        let ids: Vec<u32> = TEXTS.iter().map(|(_, l)| u32::from(*l == "warm")).collect();
        (
            text_classification_features(&tok, &ex, &ids, None).unwrap(),
            Collator::Classification,
        )
    };
    let mut t = Trainer::new(args, model.as_ref(), Some(&tok), features, None).unwrap();
    t.set_collator(collator);
    t.train(None).unwrap();
    let dir = out.join(case.name);
    t.save_model(&dir).unwrap();
}

/// The tensors of a safetensors file: name → (dtype, shape), as Python's
/// `safe_open(...).get_slice(name)` reports them.
fn manifest(path: &Path) -> BTreeMap<String, (String, Vec<usize>)> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: BTreeMap<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(k, v)| {
            let dtype = v["dtype"].as_str().unwrap().to_string();
            let shape = serde_json::from_value(v["shape"].clone()).unwrap();
            (k, (dtype, shape))
        })
        .collect()
}

#[test]
fn python_loads_what_the_trainer_saves_with_the_same_logits() {
    // tools/golden/make_python_loads.py sets this to collect the saves for Python.
    let record = std::env::var_os("RUSTFORMERS_RECORD_TRAINED").map(std::path::PathBuf::from);
    let tmp = tempfile::tempdir().unwrap();
    let out = record.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    for case in &CASES {
        train_and_save(case, &out);
        if record.is_some() {
            continue;
        }
        let dir = out.join(case.name);
        let fx = fixtures()
            .join("python-loads")
            .join(format!("{}.json", case.name));
        let exp: Value = serde_json::from_str(
            &std::fs::read_to_string(&fx)
                .unwrap_or_else(|e| panic!("{}: {e} (run make_python_loads.py)", fx.display())),
        )
        .unwrap();
        // The files Python read: the same tensors and config entries.
        let file = if case.lora.is_some() {
            "adapter_model.safetensors"
        } else {
            "model.safetensors"
        };
        let want: BTreeMap<String, (String, Vec<usize>)> =
            serde_json::from_value(exp["tensors"].clone()).unwrap();
        assert_eq!(manifest(&dir.join(file)), want, "{}: {file}", case.name);
        let cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        for (k, v) in exp["config"].as_object().unwrap() {
            assert_eq!(&cfg[k], v, "{}: config.json {k}", case.name);
        }
        // The logits rustformers gives for the save, merged and (adapters) unmerged,
        // against Python's.
        let ids = matrix(&exp["input_ids"]);
        let mask = matrix(&exp["attention_mask"]);
        let labels = if case.causal {
            ids.clone()
        } else {
            Tensor::zeros(ids.dim(0).unwrap(), candle_core::DType::U32, &Device::Cpu).unwrap()
        };
        let batch = Batch {
            token_type_ids: ids.zeros_like().unwrap(),
            input_ids: ids,
            attention_mask: mask,
            labels,
        };
        let python = Tensor::new(
            serde_json::from_value::<Vec<Vec<Vec<f32>>>>(exp["logits"].clone())
                .map(|v| v.concat().concat())
                .or_else(|_| {
                    serde_json::from_value::<Vec<Vec<f32>>>(exp["logits"].clone())
                        .map(|v| v.concat())
                })
                .unwrap(),
            &Device::Cpu,
        )
        .unwrap();
        let mut ways = vec![LoadOptions::default()];
        if case.lora.is_some() {
            ways.push(LoadOptions {
                merge_adapter: false,
                ..Default::default()
            });
        }
        for opts in ways {
            let files = rustformers_core::ModelFiles::resolve(dir.to_str().unwrap()).unwrap();
            let model: Box<dyn TrainModel> = if case.causal {
                Box::new(AutoModelForCausalLM::from_files(files, &opts).unwrap())
            } else {
                Box::new(AutoModelForSequenceClassification::from_files(files, &opts).unwrap())
            };
            let (_, logits) = model.loss(&batch).unwrap();
            let (d, s) = max_diff(&logits.flatten_all().unwrap(), &python);
            // Both sides run f32; the trainings themselves (here and when recorded) may
            // differ by summation order between machines: measured 2.4e-6 at scale 4.8
            // on AVX-512, AVX2 and scalar kernels alike.
            assert!(
                d <= 2e-5 * (1.0 + s),
                "{} (merge_adapter {}): logits differ from Python's by {d} (scale {s})",
                case.name,
                opts.merge_adapter
            );
        }
    }
}
