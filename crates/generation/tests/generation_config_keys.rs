//! No generation option that changes the tokens passes unread: each key of Python's
//! `GenerationConfig` (recorded from transformers 5.25 into
//! tests/fixtures/config-keys/generation_config.json) is a typed option here, inert (with
//! the reason), or refused by name by `validate` unless it holds a value that does
//! nothing; Python's runtime defaults are rustformers' defaults.

use std::path::PathBuf;

use serde_json::{json, Value};

use rustformers_generation::config::KEY_POLICY;
use rustformers_generation::GenerationConfig;

fn recorded() -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/config-keys/generation_config.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn parse(v: Value) -> GenerationConfig {
    GenerationConfig::from_json_str(
        &v.to_string(),
        std::path::Path::new("generation_config.json"),
    )
    .unwrap()
}

#[test]
fn every_python_generation_key_is_read_or_accounted_for() {
    let rec = recorded();
    let known = GenerationConfig::known_keys();
    let mut problems = Vec::new();
    for key in rec["keys"].as_array().unwrap() {
        let key = key.as_str().unwrap();
        let typed = known.iter().any(|k| k == key);
        let inert = KEY_POLICY.inert.iter().any(|(k, _)| *k == key);
        let refused = KEY_POLICY.refused.iter().any(|(k, _)| *k == key);
        if [typed, inert, refused].iter().filter(|b| **b).count() != 1 {
            problems.push(format!(
                "`{key}`: typed {typed}, inert {inert}, refused {refused} (exactly one)"
            ));
        }
    }
    for (key, noop) in KEY_POLICY.refused {
        // Set to something that acts: refused, naming the key.
        let acting = match *noop {
            "false" => json!(true),
            "null" => json!(3),
            _ => json!(2.5),
        };
        let c = parse(json!({ *key: acting }));
        match c.validate() {
            Err(e) if e.to_string().contains(key) => {}
            other => problems.push(format!("`{key}` = {acting}: {other:?}")),
        }
        // Null, or the value that does nothing: accepted.
        let quiet = parse(json!({ *key: serde_json::from_str::<Value>(noop).unwrap() }));
        if let Err(e) = quiet.validate() {
            problems.push(format!("`{key}` at its no-op value is refused: {e}"));
        }
    }
    // Python's runtime defaults (what generate uses when nothing is set).
    let ours = serde_json::to_value(GenerationConfig::default()).unwrap();
    for (key, theirs) in rec["runtime_defaults"].as_object().unwrap() {
        let Some(mine) = ours.get(key) else {
            continue;
        };
        let same = match (mine.as_f64(), theirs.as_f64()) {
            (Some(a), Some(b)) => a == b,
            _ => mine == theirs,
        };
        if !same {
            problems.push(format!("default `{key}` is {mine}, Python's is {theirs}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
