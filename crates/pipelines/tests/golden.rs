//! Golden parity: every pipeline case recorded from Python transformers (see
//! tools/golden/make_encoders.py) must give the same JSON, numbers within 1e-4.

use std::path::PathBuf;

use serde_json::Value;

use rustformers_pipelines::{pipeline, Params};

const TOL: f64 = 1e-4;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// Compares JSON values: same structure and keys, same strings and integers, floats
/// within `TOL`. Returns the path of the first difference.
fn diff(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64()?, y.as_f64()?);
            if (x - y).abs() > TOL {
                return Some(format!("{path}: {x} vs {y}"));
            }
            None
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                return Some(format!("{path}: length {} vs {}", x.len(), y.len()));
            }
            x.iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (p, q))| diff(p, q, &format!("{path}[{i}]")))
        }
        (Value::Object(x), Value::Object(y)) => {
            let kx: Vec<_> = x.keys().collect();
            let mut ky: Vec<_> = y.keys().collect();
            let mut kx_sorted = kx.clone();
            kx_sorted.sort();
            ky.sort();
            if kx_sorted != ky {
                return Some(format!("{path}: keys {kx_sorted:?} vs {ky:?}"));
            }
            kx.iter()
                .find_map(|k| diff(&x[*k], &y[*k], &format!("{path}.{k}")))
        }
        _ => (a != b).then(|| format!("{path}: {a} vs {b}")),
    }
}

/// Python called with a list returns a list of per-input outputs, except that
/// text-classification without `top_k` returns each text's best label unwrapped while a
/// lone text gets `[best]`; rustformers returns per input what a lone call gives.
fn expected_per_input(
    task: &str,
    inputs: &Value,
    kwargs: &Value,
    output: &Value,
) -> Vec<(Value, Value)> {
    match inputs {
        Value::Array(list) => {
            let outs = output.as_array().expect("list output for list input");
            list.iter()
                .zip(outs)
                .map(|(i, o)| {
                    let legacy = task == "text-classification" && kwargs.get("top_k").is_none();
                    let o = if legacy && i.is_string() {
                        Value::Array(vec![o.clone()])
                    } else {
                        o.clone()
                    };
                    (i.clone(), o)
                })
                .collect()
        }
        single => vec![(single.clone(), output.clone())],
    }
}

fn run_fixture(name: &str, tasks: &[&str]) {
    let dir = fixtures().join(name);
    let text = std::fs::read_to_string(dir.join("expected.json"))
        .unwrap_or_else(|e| panic!("fixture {name} missing: {e}"));
    let expected: Value = serde_json::from_str(&text).unwrap();
    let cases = expected["pipelines"].as_array().unwrap();
    let mut ran = 0;
    let mut loaded: Vec<(String, Box<dyn rustformers_pipelines::Pipeline>)> = Vec::new();
    for case in cases {
        let task = case["task"].as_str().unwrap();
        if !tasks.contains(&task) {
            continue;
        }
        if !loaded.iter().any(|(t, _)| t == task) {
            let p = pipeline(task, Some(dir.to_str().unwrap()))
                .unwrap_or_else(|e| panic!("{name}: loading {task}: {e}"));
            loaded.push((task.to_string(), p));
        }
        let pipe = &loaded.iter().find(|(t, _)| t == task).unwrap().1;
        let params: Params = case["kwargs"].as_object().cloned().unwrap_or_default();
        let pairs = expected_per_input(task, &case["inputs"], &case["kwargs"], &case["output"]);
        // All inputs of a case in one padded batch, and one at a time: both must match.
        let inputs: Vec<Value> = pairs.iter().map(|(i, _)| i.clone()).collect();
        let mut batched_params = params.clone();
        batched_params.insert("batch_size".into(), Value::from(inputs.len().max(1)));
        let batched = pipe
            .run(&inputs, &batched_params)
            .unwrap_or_else(|e| panic!("{name} {task} {params:?}: {e}"));
        for ((input, want), got_batched) in pairs.iter().zip(&batched) {
            let got = pipe
                .run_one(input.clone(), &params)
                .unwrap_or_else(|e| panic!("{name} {task} {params:?}: {e}"));
            if let Some(d) = diff(&got, want, "$") {
                panic!("{name} {task} {params:?} input {input}: {d}\n got: {got}\nwant: {want}");
            }
            if let Some(d) = diff(got_batched, want, "$") {
                panic!("{name} {task} {params:?} (batched) input {input}: {d}");
            }
        }
        ran += 1;
    }
    assert!(ran > 0, "{name}: no case for {tasks:?}");
}

#[test]
fn bert_feature_extraction() {
    run_fixture("tiny-bert-base", &["feature-extraction"]);
}

#[test]
fn bert_text_classification() {
    run_fixture("tiny-bert-seqcls", &["text-classification"]);
    run_fixture("tiny-bert-seqcls-multi", &["text-classification"]);
}

#[test]
fn bert_zero_shot() {
    run_fixture("tiny-bert-seqcls", &["zero-shot-classification"]);
}

#[test]
fn bert_token_classification() {
    run_fixture("tiny-bert-tokcls", &["token-classification"]);
}

#[test]
fn bert_fill_mask() {
    run_fixture("tiny-bert-mlm", &["fill-mask"]);
}

#[test]
fn bert_question_answering() {
    run_fixture("tiny-bert-qa", &["question-answering"]);
}

#[test]
fn roberta_pipelines() {
    run_fixture("tiny-roberta-base", &["feature-extraction"]);
    run_fixture("tiny-roberta-seqcls", &["text-classification"]);
    run_fixture("tiny-roberta-seqcls", &["zero-shot-classification"]);
    run_fixture("tiny-roberta-tokcls", &["token-classification"]);
    run_fixture("tiny-roberta-mlm", &["fill-mask"]);
    run_fixture("tiny-roberta-qa", &["question-answering"]);
}

#[test]
fn distilbert_pipelines() {
    run_fixture("tiny-distilbert-base", &["feature-extraction"]);
    run_fixture("tiny-distilbert-seqcls", &["text-classification"]);
    run_fixture("tiny-distilbert-seqcls", &["zero-shot-classification"]);
    run_fixture("tiny-distilbert-tokcls", &["token-classification"]);
    run_fixture("tiny-distilbert-mlm", &["fill-mask"]);
    run_fixture("tiny-distilbert-qa", &["question-answering"]);
}
