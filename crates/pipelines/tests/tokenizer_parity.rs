//! Tokenizer parity with Python's fast tokenizers: ids, masks, token types, character
//! offsets and decodes on 300 varied strings (accents, CJK, emoji, whitespace runs, very
//! long inputs), and batch cases (padding sides, max_length, pair truncation strategies,
//! stride with overflowing tokens), recorded by tools/golden/make_tokenizer_parity.py.

use std::path::PathBuf;

use serde_json::Value;

use rustformers_core::{
    AutoTokenizer, EncodeOptions, ModelFiles, Padding, Side, TextInput, Truncation,
};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn fixture(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(name)).unwrap()).unwrap()
}

#[test]
fn roberta_byte_level_bpe_matches_python() {
    let dir = fixtures().join("tiny-roberta-base");
    let tok = AutoTokenizer::from_pretrained(dir.to_str().unwrap()).unwrap();
    check_tokenizer_parity(&tok, &fixture("tokenizer-parity/roberta.json"));
}

#[test]
fn minilm_wordpiece_matches_python() {
    const MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";
    let cached = ModelFiles::resolve(MODEL)
        .ok()
        .and_then(|f| f.root().map(|r| r.join("tokenizer.json").is_file()))
        .unwrap_or(false);
    if !cached {
        if std::env::var("RUSTFORMERS_REQUIRE_REAL_MODELS").as_deref() == Ok("1") {
            panic!("{MODEL} is not in the Hub cache: run scripts/fetch-test-models.sh");
        }
        eprintln!("NOTICE: {MODEL} not cached; run scripts/fetch-test-models.sh to test it");
        return;
    }
    let tok = AutoTokenizer::from_pretrained(MODEL).unwrap();
    check_tokenizer_parity(&tok, &fixture("tokenizer-parity/minilm.json"));
}

fn ids(v: &Value) -> Vec<Vec<u32>> {
    serde_json::from_value(v.clone()).unwrap()
}

fn offsets(v: &Value) -> Vec<Vec<(usize, usize)>> {
    let raw: Vec<Vec<[usize; 2]>> = serde_json::from_value(v.clone()).unwrap();
    raw.into_iter()
        .map(|r| r.into_iter().map(|[a, b]| (a, b)).collect())
        .collect()
}

/// Checks the single-string and batch cases of a tokenizer-parity fixture.
fn check_tokenizer_parity(tok: &AutoTokenizer, fx: &Value) {
    let singles = fx["singles"].as_array().unwrap();
    assert!(singles.len() >= 300);
    for s in singles {
        let text = s["text"].as_str().unwrap();
        let enc = tok
            .encode(TextInput::Single(text), &EncodeOptions::default())
            .unwrap();
        assert_eq!(
            enc.input_ids[0],
            ids(&Value::Array(vec![s["input_ids"].clone()]))[0],
            "{text:?}"
        );
        assert_eq!(
            enc.attention_mask[0],
            ids(&Value::Array(vec![s["attention_mask"].clone()]))[0]
        );
        assert_eq!(
            enc.token_type_ids[0],
            ids(&Value::Array(vec![s["token_type_ids"].clone()]))[0]
        );
        assert_eq!(
            enc.offsets[0],
            offsets(&Value::Array(vec![s["offset_mapping"].clone()]))[0],
            "{text:?}"
        );
        let decoded = tok.decode(&enc.input_ids[0], true).unwrap();
        assert_eq!(decoded, s["decoded"].as_str().unwrap(), "decode {text:?}");
    }
    for case in fx["batches"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let texts: Vec<String> = match &case["text"] {
            Value::String(s) => vec![s.clone()],
            v => serde_json::from_value(v.clone()).unwrap(),
        };
        let pairs: Option<Vec<String>> = match &case["text_pair"] {
            Value::Null => None,
            Value::String(s) => Some(vec![s.clone()]),
            v => Some(serde_json::from_value(v.clone()).unwrap()),
        };
        let inputs: Vec<TextInput> = match &pairs {
            Some(p) => texts
                .iter()
                .zip(p)
                .map(|(a, b)| TextInput::Pair(a, b))
                .collect(),
            None => texts.iter().map(|t| TextInput::Single(t)).collect(),
        };
        let kw = &case["kwargs"];
        let opts = EncodeOptions {
            padding: match &kw["padding"] {
                Value::Bool(true) => Padding::Longest,
                Value::String(s) if s == "longest" => Padding::Longest,
                Value::String(s) if s == "max_length" => Padding::MaxLength,
                _ => Padding::None,
            },
            truncation: match &kw["truncation"] {
                Value::Bool(true) => Truncation::LongestFirst,
                Value::String(s) => Truncation::parse(s).unwrap(),
                _ => Truncation::None,
            },
            max_length: kw["max_length"].as_u64().map(|m| m as usize),
            stride: kw["stride"].as_u64().unwrap_or(0) as usize,
            return_overflowing_tokens: kw["return_overflowing_tokens"].as_bool().unwrap_or(false),
            padding_side: match kw["padding_side"].as_str() {
                Some("left") => Some(Side::Left),
                Some("right") => Some(Side::Right),
                _ => None,
            },
            ..Default::default()
        };
        let result = tok.encode_batch(&inputs, &opts);
        if case.get("error").is_some_and(|e| !e.is_null()) {
            assert!(
                result.is_err(),
                "{name}: Python raised {}, rustformers did not",
                case["error"]
            );
            continue;
        }
        let enc = result.unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = &case["encoding"];
        assert_eq!(enc.input_ids, ids(&want["input_ids"]), "{name}");
        assert_eq!(enc.attention_mask, ids(&want["attention_mask"]), "{name}");
        if !want["token_type_ids"].is_null() {
            assert_eq!(enc.token_type_ids, ids(&want["token_type_ids"]), "{name}");
        }
        if !want["offset_mapping"].is_null() {
            assert_eq!(enc.offsets, offsets(&want["offset_mapping"]), "{name}");
        }
        if let Some(m) = want
            .get("overflow_to_sample_mapping")
            .filter(|m| !m.is_null())
        {
            let m: Vec<usize> = serde_json::from_value(m.clone()).unwrap();
            assert_eq!(enc.overflow_to_sample_mapping, m, "{name}");
        }
    }
}
