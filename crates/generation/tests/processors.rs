//! Logits processors equal Python's (transformers 4.46.3): every recorded processor
//! (tests/fixtures/logits-processors.json, tools/golden/make_decoders.py) applied to the
//! recorded scores, and every recorded chain built by `processors::from_config` from its
//! generation config, within 1e-6 (`-inf` exactly).

use std::path::PathBuf;

use serde_json::{Map, Value};

use rustformers_generation::processors::{
    self, Epsilon, Eta, LogitsProcessor, MinLength, MinNewTokens, MinP, NoBadWords, NoRepeatNGram,
    RepetitionPenalty, SuppressTokens, Temperature, TopK, TopP, Typical,
};
use rustformers_generation::GenerationConfig;

fn fixture() -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/logits-processors.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn float(v: &Value) -> f32 {
    match v {
        Value::Number(n) => n.as_f64().unwrap() as f32,
        Value::String(s) if s == "-inf" => f32::NEG_INFINITY,
        Value::String(s) if s == "inf" => f32::INFINITY,
        Value::String(s) if s == "nan" => f32::NAN,
        other => panic!("not a float: {other}"),
    }
}

fn matrix(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(float).collect())
        .collect()
}

fn ids(v: &Value) -> Vec<u32> {
    match v {
        Value::Number(n) => vec![n.as_u64().unwrap() as u32],
        _ => serde_json::from_value(v.clone()).unwrap(),
    }
}

fn usize_or(k: &Map<String, Value>, name: &str, default: usize) -> usize {
    k.get(name)
        .map(|v| v.as_u64().unwrap() as usize)
        .unwrap_or(default)
}

fn f64_of(k: &Map<String, Value>, name: &str) -> f64 {
    k[name].as_f64().unwrap()
}

/// The processor for a Python class and its kwargs, and the number of generated tokens
/// the rows stand for.
fn build(class: &str, k: &Map<String, Value>, len: usize) -> (Box<dyn LogitsProcessor>, usize) {
    let keep = usize_or(k, "min_tokens_to_keep", 1);
    let p: Box<dyn LogitsProcessor> = match class {
        "TemperatureLogitsWarper" => Box::new(Temperature::new(f64_of(k, "temperature") as f32)),
        "TopKLogitsWarper" => Box::new(TopK::new(usize_or(k, "top_k", 0), keep)),
        "TopPLogitsWarper" => Box::new(TopP::new(f64_of(k, "top_p"), keep)),
        "MinPLogitsWarper" => Box::new(MinP::new(f64_of(k, "min_p"), keep)),
        "TypicalLogitsWarper" => Box::new(Typical::new(f64_of(k, "mass"), keep)),
        "EpsilonLogitsWarper" => Box::new(Epsilon::new(f64_of(k, "epsilon"), keep)),
        "EtaLogitsWarper" => Box::new(Eta::new(f64_of(k, "epsilon"), keep)),
        "RepetitionPenaltyLogitsProcessor" => {
            Box::new(RepetitionPenalty::new(f64_of(k, "penalty") as f32))
        }
        "NoRepeatNGramLogitsProcessor" => {
            Box::new(NoRepeatNGram::new(usize_or(k, "ngram_size", 0)))
        }
        "NoBadWordsLogitsProcessor" => Box::new(NoBadWords::new(
            serde_json::from_value(k["bad_words_ids"].clone()).unwrap(),
            &ids(&k["eos_token_id"]),
        )),
        "MinLengthLogitsProcessor" => Box::new(MinLength::new(
            usize_or(k, "min_length", 0),
            ids(&k["eos_token_id"]),
        )),
        "MinNewTokensLengthLogitsProcessor" => {
            let skip = usize_or(k, "prompt_length_to_skip", 0);
            return (
                Box::new(MinNewTokens::new(
                    usize_or(k, "min_new_tokens", 0),
                    ids(&k["eos_token_id"]),
                )),
                len - skip,
            );
        }
        "SuppressTokensLogitsProcessor" => {
            Box::new(SuppressTokens::new(ids(&k["suppress_tokens"])))
        }
        other => panic!("no rustformers processor for {other}: add it"),
    };
    (p, 0)
}

/// Python class name → the rustformers type (its Debug name).
fn rust_name(class: &str) -> &'static str {
    match class {
        "TemperatureLogitsWarper" => "Temperature",
        "TopKLogitsWarper" => "TopK",
        "TopPLogitsWarper" => "TopP",
        "MinPLogitsWarper" => "MinP",
        "TypicalLogitsWarper" => "Typical",
        "EpsilonLogitsWarper" => "Epsilon",
        "EtaLogitsWarper" => "Eta",
        "RepetitionPenaltyLogitsProcessor" => "RepetitionPenalty",
        "NoRepeatNGramLogitsProcessor" => "NoRepeatNGram",
        "NoBadWordsLogitsProcessor" => "NoBadWords",
        "MinLengthLogitsProcessor" => "MinLength",
        "MinNewTokensLengthLogitsProcessor" => "MinNewTokens",
        "SuppressTokensLogitsProcessor" => "SuppressTokens",
        other => panic!("unknown Python processor {other}"),
    }
}

fn compare(what: &str, got: &[Vec<f32>], want: &[Vec<f32>]) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (r, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{what}");
        for (j, (a, b)) in g.iter().zip(w).enumerate() {
            if b.is_infinite() || a.is_infinite() {
                assert_eq!(a, b, "{what}: row {r} token {j}");
            } else {
                assert!(
                    (a - b).abs() <= 1e-6,
                    "{what}: row {r} token {j}: {a} vs Python {b}"
                );
            }
        }
    }
}

#[test]
fn each_processor_matches_python() {
    let f = fixture();
    let scores = matrix(&f["scores"]);
    let input: Vec<Vec<u32>> = serde_json::from_value(f["input_ids"].clone()).unwrap();
    let records = f["processors"].as_array().unwrap();
    assert!(records.len() >= 15);
    for rec in records {
        let class = rec["class"].as_str().unwrap();
        let kwargs = rec["kwargs"].as_object().unwrap();
        let what = format!("{class} {kwargs:?}");
        let got: Vec<Vec<f32>> = scores
            .iter()
            .zip(&input)
            .map(|(row, tokens)| {
                let (p, new) = build(class, kwargs, tokens.len());
                let mut s = row.clone();
                p.process(tokens, new, &mut s);
                s
            })
            .collect();
        compare(&what, &got, &matrix(&rec["output"]));
    }
}

#[test]
fn chains_from_config_match_python() {
    let f = fixture();
    let scores = matrix(&f["scores"]);
    let input: Vec<Vec<u32>> = serde_json::from_value(f["input_ids"].clone()).unwrap();
    for chain in f["chains"].as_array().unwrap() {
        // As recorded: GenerationConfig(eos_token_id=2, pad_token_id=0, **kwargs).
        let mut kwargs = chain["generation_config"].as_object().unwrap().clone();
        kwargs.insert("eos_token_id".into(), 2.into());
        kwargs.insert("pad_token_id".into(), 0.into());
        let config = GenerationConfig::default().with_overrides(&kwargs).unwrap();
        let list = processors::from_config(&config);
        let names: Vec<String> = list
            .iter()
            .map(|p| {
                let d = format!("{p:?}");
                d.split([' ', '(', '{'])
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        let want_names: Vec<&str> = chain["processors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| rust_name(c.as_str().unwrap()))
            .collect();
        assert_eq!(names, want_names, "{kwargs:?}");
        let got: Vec<Vec<f32>> = scores
            .iter()
            .zip(&input)
            .map(|(row, tokens)| {
                let mut s = row.clone();
                processors::apply(&list, tokens, 0, &mut s);
                s
            })
            .collect();
        compare(
            &format!("chain {kwargs:?}"),
            &got,
            &matrix(&chain["output"]),
        );
    }
}
