//! Odd inputs through every pipeline: empty, whitespace, control characters, emoji,
//! text longer than the model — each gives an output or a clear error, never a panic.

use std::path::PathBuf;

use serde_json::{json, Value};

use rustformers_pipelines::{pipeline, Params};

fn dir(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn texts() -> Vec<String> {
    vec![
        String::new(),
        "   \t\n ".into(),
        "\u{0}\u{1}\u{7f}".into(),
        "👩‍👩‍👧‍👦🏳️‍🌈".into(),
        "word ".repeat(400),
    ]
}

#[test]
fn text_pipelines_never_panic() {
    for (task, fixture, extra) in [
        ("feature-extraction", "tiny-bert-base", json!({})),
        ("text-classification", "tiny-roberta-seqcls", json!({})),
        (
            "token-classification",
            "tiny-distilbert-tokcls",
            json!({"aggregation_strategy": "max"}),
        ),
        ("fill-mask", "tiny-bert-mlm", json!({})),
        (
            "zero-shot-classification",
            "tiny-bert-seqcls",
            json!({"candidate_labels": "a,b"}),
        ),
    ] {
        let p = pipeline(task, dir(fixture).as_str()).unwrap();
        let params: Params = extra.as_object().unwrap().clone();
        for t in texts() {
            let long = t.len() > 1000;
            match p.run_one(Value::String(t.clone()), &params) {
                Ok(_) => assert!(
                    !long || task == "token-classification" || task == "zero-shot-classification",
                    "{task}: long input accepted"
                ),
                Err(e) => {
                    let msg = e.to_string();
                    assert!(!msg.is_empty());
                    if long && task != "fill-mask" {
                        assert!(msg.contains("longer than"), "{task}: {msg}");
                    }
                }
            }
        }
    }
}

#[test]
fn question_answering_odd_inputs() {
    let p = pipeline("question-answering", dir("tiny-roberta-qa").as_str()).unwrap();
    let none = Params::new();
    for (q, c) in [
        ("", "context"),
        ("q", ""),
        ("\u{0}", "some context"),
        ("who?", "👩‍👩‍👧‍👦"),
    ] {
        let _ = p.run_one(json!({"question": q, "context": c}), &none);
    }
    // A long context is windowed, not rejected.
    let long = "paris london ".repeat(300);
    assert!(p
        .run_one(json!({"question": "where?", "context": long}), &none)
        .is_ok());
    for bad in [
        json!("just text"),
        json!({"question": 1, "context": "x"}),
        json!({"q": "x"}),
    ] {
        assert!(p.run_one(bad, &none).is_err());
    }
    let params: Params = json!({"doc_stride": 500, "max_seq_len": 64})
        .as_object()
        .unwrap()
        .clone();
    let err = p
        .run_one(json!({"question": "q", "context": "c"}), &params)
        .unwrap_err()
        .to_string();
    assert!(err.contains("doc_stride"), "{err}");
}
