//! No key that changes the numbers passes unread. For every family, each key of Python's
//! config class (recorded from transformers 5.25 by tools/golden/make_config_keys.py into
//! tests/fixtures/config-keys/) is read by a typed field, read as a generation option, or
//! accounted for by the family's `KEY_POLICY` (inert, with a reason; or refused by name
//! when set to a value rustformers does not implement). Every fixture's config.json has
//! no unread key, and a key nothing knows is reported unread.

use std::path::PathBuf;

use serde_json::{json, Value};

use rustformers_generation::{unread_config_keys, GenerationConfig};
use rustformers_models::ModelConfig;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// A value that acts where `noop` (JSON text) does nothing.
fn acting(noop: &str) -> Value {
    match noop {
        "false" => json!(true),
        "{}" => json!({"0": [1]}),
        _ => json!(3),
    }
}

fn parse(v: &Value) -> rustformers_core::Result<ModelConfig> {
    ModelConfig::from_json_str(&v.to_string(), std::path::Path::new("config.json"))
}

/// Each recorded Python key, set to Python's default: typed, generation option, or in the
/// family's policy; each refused key set to its refused value is an error naming it.
#[test]
fn every_python_config_key_is_read_or_accounted_for() {
    let dir = fixtures().join("config-keys");
    let generation = GenerationConfig::known_keys();
    let mut families = 0;
    let mut problems = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
        if stem == "generation_config" {
            continue;
        }
        let rec: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let model_type = stem.as_str();
        let defaults = rec["defaults"].as_object().unwrap();
        let base = parse(&json!({ "model_type": model_type }))
            .unwrap_or_else(|e| panic!("{model_type}: an empty config does not load: {e}"));
        let policy = base.key_policy();
        // An absent key means Python's default: every value rustformers writes for an
        // empty config equals the default Python records.
        let written: Value = serde_json::from_str(&base.to_json_string().unwrap()).unwrap();
        // Token ids count even when absent from the save: what the model reads.
        for key in ["pad_token_id", "bos_token_id", "eos_token_id"] {
            let ours = written.get(key).cloned().unwrap_or(Value::Null);
            let theirs = defaults.get(key).cloned().unwrap_or(Value::Null);
            if ours != theirs {
                problems.push(format!(
                    "{model_type}: default `{key}` is {ours}, Python's is {theirs}"
                ));
            }
        }
        for (key, ours) in written.as_object().unwrap() {
            let Some(theirs) = defaults.get(key) else {
                continue;
            };
            // The JSON number kind counts: 5.x's strict configs refuse a float where
            // the field is an int (and Python writes what its type says).
            let same = ours == theirs;
            if !same && !matches!(key.as_str(), "model_type" | "transformers_version") {
                problems.push(format!(
                    "{model_type}: default `{key}` is {ours}, Python's is {theirs}"
                ));
            }
        }
        for (key, reason) in policy
            .inert
            .iter()
            .chain(rustformers_core::config::COMMON_KEYS.inert)
        {
            assert!(
                !reason.trim().is_empty(),
                "{model_type}: `{key}` has no reason"
            );
        }
        for key in rec["keys"].as_array().unwrap() {
            let key = key.as_str().unwrap();
            let default = defaults.get(key).cloned().unwrap_or(Value::Null);
            let mut v = json!({ "model_type": model_type });
            v[key] = default.clone();
            let config = match parse(&v) {
                Ok(c) => c,
                Err(e) => {
                    problems.push(format!(
                        "{model_type}: `{key}` at Python's default {default} is refused: {e}"
                    ));
                    continue;
                }
            };
            let lands_in_extra = config.base().extra.contains_key(key);
            let accounted = policy.inert.iter().any(|(k, _)| *k == key)
                || policy.refused.iter().any(|(k, _)| *k == key)
                || rustformers_core::config::COMMON_KEYS
                    .inert
                    .iter()
                    .chain(rustformers_core::config::COMMON_KEYS.refused)
                    .any(|(k, _)| *k == key)
                || generation.iter().any(|k| k == key);
            if lands_in_extra && !accounted {
                problems.push(format!(
                    "{model_type}: Python's `{key}` is neither read nor in the key policy"
                ));
            }
        }
        for (key, noop) in policy
            .refused
            .iter()
            .chain(rustformers_core::config::COMMON_KEYS.refused)
        {
            // The no-op value loads; one that acts is refused, naming the key.
            let mut v = json!({ "model_type": model_type });
            v[*key] = serde_json::from_str(noop).unwrap();
            if let Err(e) = parse(&v) {
                problems.push(format!(
                    "{model_type}: `{key}` = {noop} (no-op) is refused: {e}"
                ));
            }
            let value = acting(noop);
            v[*key] = value.clone();
            match parse(&v) {
                Ok(_) => problems.push(format!("{model_type}: `{key}` = {value} is not refused")),
                Err(e) if !e.to_string().contains(key) => problems.push(format!(
                    "{model_type}: refusing `{key}` = {value} does not name it: {e}"
                )),
                Err(_) => {}
            }
        }
        families += 1;
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(families, 11, "config-keys fixtures (one per model type)");
}

/// Every checkpoint among the fixtures has no unread key; one nobody knows is reported.
#[test]
fn fixture_configs_have_no_unread_keys() {
    let mut checked = 0;
    let mut entries: Vec<_> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for dir in entries {
        let path = dir.join("config.json");
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let config = ModelConfig::from_json_str(&text, &path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let unread = unread_config_keys(&config);
        assert!(unread.is_empty(), "{}: {unread:?}", path.display());
        let mut v: Value = serde_json::from_str(&text).unwrap();
        v["a_key_nothing_reads"] = json!(1);
        let config = parse(&v).unwrap();
        assert_eq!(unread_config_keys(&config), vec!["a_key_nothing_reads"]);
        checked += 1;
    }
    assert!(checked >= 30, "only {checked} fixture configs");
}
