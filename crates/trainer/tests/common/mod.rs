//! Helpers the trainer's parity tests share.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use serde_json::Value;

use rustformers_models::{
    AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSequenceClassification,
    AutoModelForTokenClassification, LoadOptions, TrainLoad,
};
use rustformers_trainer::trainer::{Batch, IGNORE};
use rustformers_trainer::TrainModel;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// A JSON matrix of ids as a `[rows, cols]` u32 tensor, Python's -100 as [`IGNORE`].
pub fn matrix(v: &Value) -> Tensor {
    let rows: Vec<Vec<i64>> = serde_json::from_value(v.clone()).unwrap();
    let (r, c) = (rows.len(), rows[0].len());
    let flat: Vec<u32> = rows
        .concat()
        .into_iter()
        .map(|x| if x < 0 { IGNORE } else { x as u32 })
        .collect();
    Tensor::from_vec(flat, (r, c), &Device::Cpu).unwrap()
}

/// `(max |a - b|, max |b|)`.
pub fn max_diff(a: &Tensor, b: &Tensor) -> (f32, f32) {
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    (diff, scale)
}

/// One PyTorch step fixture of tests/fixtures/train (tools/golden/make_train_step.py):
/// its JSON, its tensors (`grad.*`, `param.*`) and its batch.
pub struct StepFixture {
    pub name: String,
    pub task: String,
    pub exp: Value,
    pub want: HashMap<String, Tensor>,
    pub batch: Batch,
}

/// Every step fixture, by name.
pub fn step_fixtures() -> Vec<StepFixture> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures().join("train"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".json")
                .map(str::to_string)
        })
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let exp: Value = serde_json::from_str(
                &std::fs::read_to_string(fixtures().join(format!("train/{name}.json"))).unwrap(),
            )
            .unwrap();
            let want = candle_core::safetensors::load(
                fixtures().join(format!("train/{name}.safetensors")),
                &Device::Cpu,
            )
            .unwrap();
            let task = exp["task"].as_str().unwrap().to_string();
            let ids = matrix(&exp["input_ids"]);
            let labels = if task == "seqcls" {
                let l: Vec<u32> = serde_json::from_value(exp["labels"].clone()).unwrap();
                Tensor::new(l.as_slice(), &Device::Cpu).unwrap()
            } else {
                matrix(&exp["labels"])
            };
            let batch = Batch {
                token_type_ids: ids.zeros_like().unwrap(),
                attention_mask: matrix(&exp["attention_mask"]),
                input_ids: ids,
                labels,
            };
            StepFixture {
                name,
                task,
                exp,
                want,
                batch,
            }
        })
        .collect()
}

/// The fixture model `name` loaded for training with the head `task` names.
pub fn load_for_training(name: &str, task: &str, t: &TrainLoad) -> Box<dyn TrainModel> {
    let r = fixtures().join(name);
    let r = r.to_str().unwrap();
    let o = LoadOptions::default();
    match task {
        "seqcls" => Box::new(AutoModelForSequenceClassification::for_training(r, &o, t).unwrap()),
        "tokcls" => Box::new(AutoModelForTokenClassification::for_training(r, &o, t).unwrap()),
        "mlm" => Box::new(AutoModelForMaskedLM::for_training(r, &o, t).unwrap()),
        "causal" => Box::new(AutoModelForCausalLM::for_training(r, &o, t).unwrap()),
        other => panic!("task {other}"),
    }
}
