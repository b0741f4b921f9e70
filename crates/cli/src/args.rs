//! Parsing of `run`'s free-form pipeline flags: `--top-k 3`, `--aggregation-strategy simple`,
//! `--normalize`, `--targets a --targets b`, `--key=value`. Names are Python's parameter
//! names with dashes; values are JSON when they parse as JSON, else strings.

use anyhow::{bail, Result};
use serde_json::{Map, Value};

/// Flags that take no value (`--normalize` means true).
const BOOLEAN_FLAGS: &[&str] = &[
    "normalize",
    "multi-label",
    "handle-impossible-answer",
    "grouped-entities",
    "do-sample",
    "return-tensors",
];

/// What `run` was asked to do.
#[derive(Debug, Default, PartialEq)]
pub struct RunArgs {
    pub task: String,
    pub model: Option<String>,
    pub dtype: Option<String>,
    pub params: Map<String, Value>,
    pub inputs: Vec<String>,
}

/// A flag value: JSON if it parses (numbers, booleans, lists), `None`/`null` as null,
/// anything else as a string.
pub fn parse_value(s: &str) -> Value {
    match s {
        "None" | "null" => return Value::Null,
        "True" => return Value::Bool(true),
        "False" => return Value::Bool(false),
        _ => {}
    }
    match serde_json::from_str::<Value>(s) {
        Ok(v @ (Value::Number(_) | Value::Bool(_) | Value::Array(_) | Value::Object(_))) => v,
        _ => Value::String(s.to_string()),
    }
}

fn insert(params: &mut Map<String, Value>, key: String, value: Value) {
    match params.get_mut(&key) {
        Some(Value::Array(a)) if !value.is_array() => a.push(value),
        Some(existing) => {
            let prev = existing.take();
            *existing = Value::Array(vec![prev, value]);
        }
        None => {
            params.insert(key, value);
        }
    }
}

/// Parses the words after `run`.
pub fn parse_run(words: &[String]) -> Result<RunArgs> {
    let mut out = RunArgs::default();
    let mut i = 0;
    let mut only_inputs = false;
    while i < words.len() {
        let w = &words[i];
        i += 1;
        if only_inputs || !w.starts_with("--") || w == "--" {
            if w == "--" && !only_inputs {
                only_inputs = true;
                continue;
            }
            if out.task.is_empty() {
                out.task = w.clone();
            } else {
                out.inputs.push(w.clone());
            }
            continue;
        }
        let body = &w[2..];
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (body.to_string(), None),
        };
        if name.is_empty() {
            bail!("empty flag `{w}`");
        }
        let value = if let Some(v) = inline {
            Some(v)
        } else if BOOLEAN_FLAGS.contains(&name.as_str()) {
            None
        } else if i < words.len() {
            i += 1;
            Some(words[i - 1].clone())
        } else {
            bail!("flag --{name} needs a value");
        };
        match name.as_str() {
            "model" | "dtype" => {
                let v = value.unwrap_or_default();
                if v.is_empty() {
                    bail!("--{name} needs a value");
                }
                if name == "model" {
                    out.model = Some(v);
                } else {
                    out.dtype = Some(v);
                }
            }
            _ => {
                let key = name.replace('-', "_");
                let v = match value {
                    Some(v) => parse_value(&v),
                    None => Value::Bool(true),
                };
                insert(&mut out.params, key, v);
            }
        }
    }
    if out.task.is_empty() {
        bail!("run needs a task, e.g. `rustformers run feature-extraction \"some text\"`");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_flags_values_and_inputs() {
        let a = parse_run(&words(&[
            "fill-mask",
            "--model",
            "m",
            "--top-k",
            "3",
            "--targets",
            "a",
            "--targets",
            "b",
            "--normalize",
            "hello",
            "--pooling=mean",
            "--",
            "--not-a-flag",
        ]))
        .unwrap();
        assert_eq!(a.task, "fill-mask");
        assert_eq!(a.model.as_deref(), Some("m"));
        assert_eq!(a.params["top_k"], 3);
        assert_eq!(a.params["targets"], serde_json::json!(["a", "b"]));
        assert_eq!(a.params["normalize"], true);
        assert_eq!(a.params["pooling"], "mean");
        assert_eq!(a.inputs, vec!["hello", "--not-a-flag"]);
    }

    #[test]
    fn errors() {
        assert!(parse_run(&words(&[])).is_err());
        assert!(parse_run(&words(&["t", "--top-k"])).is_err());
        assert!(parse_run(&words(&["t", "--model="])).is_err());
        assert_eq!(parse_value("None"), Value::Null);
        assert_eq!(parse_value("none"), Value::String("none".into()));
    }
}
