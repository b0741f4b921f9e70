//! Sequence classification with decoder models, parity with Python transformers
//! (tools/golden/make_decoders.py, `seqcls` fixtures): `AutoModelForSequenceClassification`
//! loads `LlamaForSequenceClassification` / `Qwen2ForSequenceClassification`, whose
//! `score` head reads the last non-pad token of each row. Logits ≤1e-4 for a
//! right-padded batch and for each text alone.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use serde_json::Value;

use rustformers_models::{AutoModelForSequenceClassification, EncoderInputs};

fn fixture(name: &str) -> (PathBuf, Value) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(dir.join("expected.json"))
        .unwrap_or_else(|e| panic!("fixture {name}: {e}"));
    (dir, serde_json::from_str(&text).unwrap())
}

fn u32s(v: &Value) -> Vec<Vec<u32>> {
    serde_json::from_value(v.clone()).unwrap()
}

fn f32s(v: &Value) -> Vec<Vec<f32>> {
    serde_json::from_value(v.clone()).unwrap()
}

fn matrix(rows: &[Vec<u32>]) -> Tensor {
    let (b, s) = (rows.len(), rows[0].len());
    Tensor::from_vec(rows.concat(), (b, s), &Device::Cpu).unwrap()
}

fn max_diff(got: &[Vec<f32>], want: &[Vec<f32>]) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .flat_map(|(g, w)| {
            assert_eq!(g.len(), w.len());
            g.iter().zip(w).map(|(a, b)| (a - b).abs())
        })
        .fold(0f32, f32::max)
}

fn check(name: &str, architecture: &str) {
    let (dir, exp) = fixture(name);
    let model = AutoModelForSequenceClassification::from_pretrained(dir.to_str().unwrap())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(model.architecture(), architecture);
    let s = &exp["seqcls"];

    let batch = &s["batch"];
    assert_eq!(batch["padding_side"], "right");
    let ids = matrix(&u32s(&batch["input_ids"]));
    let mask = matrix(&u32s(&batch["attention_mask"]));
    let logits = model
        .model
        .forward(EncoderInputs {
            input_ids: &ids,
            attention_mask: Some(&mask),
            token_type_ids: None,
        })
        .unwrap();
    let want = f32s(&batch["logits"]);
    assert_eq!(logits.dims(), &[want.len(), want[0].len()], "{name}");
    let d = max_diff(&logits.to_vec2::<f32>().unwrap(), &want);
    assert!(d <= 1e-4, "{name}: batch logits differ by {d}");

    let singles = s["singles"].as_array().unwrap();
    assert!(!singles.is_empty());
    for single in singles {
        let ids = matrix(&u32s(&single["input_ids"]));
        let logits = model.model.forward(EncoderInputs::ids(&ids)).unwrap();
        let d = max_diff(&logits.to_vec2::<f32>().unwrap(), &f32s(&single["logits"]));
        assert!(d <= 1e-4, "{name} {}: logits differ by {d}", single["text"]);
    }
}

#[test]
fn llama_sequence_classification() {
    check("tiny-llama-seqcls", "LlamaForSequenceClassification");
}

#[test]
fn qwen2_sequence_classification() {
    check("tiny-qwen2-seqcls", "Qwen2ForSequenceClassification");
}

/// The pooled position is the token before the *first* pad (`pooled_index` in the
/// fixture), as Python's `argmax(input_ids == pad) - 1`: a non-pad id at the end of a
/// padded row (which a "last non-pad token" rule would read) changes nothing.
#[test]
fn pooling_ignores_tokens_after_the_first_pad() {
    let (dir, exp) = fixture("tiny-qwen2-seqcls");
    let model = AutoModelForSequenceClassification::from_pretrained(dir.to_str().unwrap()).unwrap();
    let batch = &exp["seqcls"]["batch"];
    let mut rows = u32s(&batch["input_ids"]);
    let pooled: Vec<usize> = serde_json::from_value(batch["pooled_index"].clone()).unwrap();
    let mask = matrix(&u32s(&batch["attention_mask"]));
    // Row 0 is padded from pooled[0] + 1 on; a token after the first pad is not read.
    assert_eq!(rows[0][pooled[0] + 1], 0);
    let last = rows[0].len() - 1;
    rows[0][last] = 7;
    let logits = model
        .model
        .forward(EncoderInputs {
            input_ids: &matrix(&rows),
            attention_mask: Some(&mask),
            token_type_ids: None,
        })
        .unwrap();
    let d = max_diff(&logits.to_vec2::<f32>().unwrap(), &f32s(&batch["logits"]));
    assert!(d <= 1e-4, "logits differ by {d}");
}
