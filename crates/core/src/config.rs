//! The part of config.json every model shares (Python's `PretrainedConfig`).
//!
//! Model configs embed [`PretrainedConfig`] with `#[serde(flatten)]`, so keys no typed
//! field claims land in [`PretrainedConfig::extra`] and are written back on save.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Fields common to every model config, with Python's defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PretrainedConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architectures: Option<Vec<String>>,
    #[serde(default)]
    pub model_type: String,
    /// Label names by class index; keys are decimal strings as in config.json.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id2label: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label2id: Option<BTreeMap<String, i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_labels: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torch_dtype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tie_word_embeddings: Option<bool>,
    /// Keys no typed field claims, kept so that save writes them back.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl PretrainedConfig {
    /// Class labels in index order. As in Python, a config without `id2label` has
    /// `num_labels` (default 2) labels named `LABEL_i`.
    pub fn labels(&self) -> Result<Vec<String>> {
        match &self.id2label {
            Some(map) if !map.is_empty() => {
                let mut pairs = Vec::with_capacity(map.len());
                for (k, v) in map {
                    let idx: usize = k.trim().parse().map_err(|_| Error::Config {
                        path: "config.json".into(),
                        message: format!("id2label key `{k}` is not a class index"),
                    })?;
                    pairs.push((idx, v.clone()));
                }
                pairs.sort();
                for (i, (idx, _)) in pairs.iter().enumerate() {
                    if *idx != i {
                        return Err(Error::Config {
                            path: "config.json".into(),
                            message: format!(
                                "id2label indices must be 0..{}, found {idx}",
                                pairs.len()
                            ),
                        });
                    }
                }
                Ok(pairs.into_iter().map(|(_, v)| v).collect())
            }
            _ => Ok((0..self.num_labels.unwrap_or(2))
                .map(|i| format!("LABEL_{i}"))
                .collect()),
        }
    }

    /// Number of classes for classification heads.
    pub fn num_labels(&self) -> Result<usize> {
        Ok(self.labels()?.len())
    }

    /// Sets the label names (id2label and label2id), as Python's `num_labels` setter does.
    pub fn set_labels(&mut self, labels: &[String]) {
        self.id2label = Some(
            labels
                .iter()
                .enumerate()
                .map(|(i, l)| (i.to_string(), l.clone()))
                .collect(),
        );
        self.label2id = Some(
            labels
                .iter()
                .enumerate()
                .map(|(i, l)| (l.clone(), i as i64))
                .collect(),
        );
        self.num_labels = None;
    }

    /// Whether input and output embeddings are tied (Python default: true).
    pub fn tie_word_embeddings(&self) -> bool {
        self.tie_word_embeddings.unwrap_or(true)
    }
}

/// Parses a typed config from config.json text, naming `path` in errors.
pub fn parse_config<T: serde::de::DeserializeOwned>(text: &str, path: &Path) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Error::Config {
        path: path.display().to_string(),
        message: match culprit_key::<T>(text) {
            Some(key) => format!("`{key}`: {e}"),
            None => e.to_string(),
        },
    })
}

/// Names the key whose value a typed config rejects: serde's flatten loses the field
/// name, so each key is tried alone (every typed field has a default). Error path only.
fn culprit_key<T: serde::de::DeserializeOwned>(text: &str) -> Option<String> {
    let serde_json::Value::Object(map) = serde_json::from_str(text).ok()? else {
        return None;
    };
    map.into_iter().find_map(|(k, v)| {
        let single = serde_json::Value::Object([(k.clone(), v)].into_iter().collect());
        serde_json::from_value::<T>(single).is_err().then_some(k)
    })
}

/// Serialises a config as Python writes config.json: pretty, two-space indent, sorted keys.
pub fn config_to_json_string<T: Serialize>(config: &T) -> Result<String> {
    let value = serde_json::to_value(config).map_err(|e| Error::Json {
        context: "serialising config".into(),
        source: e,
    })?;
    let sorted = sort_keys(value);
    let mut s = serde_json::to_string_pretty(&sorted).map_err(|e| Error::Json {
        context: "serialising config".into(),
        source: e,
    })?;
    s.push('\n');
    Ok(s)
}

fn sort_keys(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sort_keys(v)))
                    .collect(),
            )
        }
        serde_json::Value::Array(a) => {
            serde_json::Value::Array(a.into_iter().map(sort_keys).collect())
        }
        other => other,
    }
}

/// Reads the `model_type` (and `architectures`) of a config.json without typing the rest.
pub fn peek_model_type(text: &str, path: &Path) -> Result<(String, Vec<String>)> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| Error::Config {
        path: path.display().to_string(),
        message: format!("malformed JSON: {e}"),
    })?;
    let obj = v.as_object().ok_or_else(|| Error::Config {
        path: path.display().to_string(),
        message: "expected a JSON object".into(),
    })?;
    let model_type = obj
        .get("model_type")
        .and_then(|m| m.as_str())
        .unwrap_or("")
        .to_string();
    let archs = obj
        .get("architectures")
        .and_then(|a| a.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Ok((model_type, archs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_labels_and_extra_keys_round_trip() {
        let text = r#"{"model_type":"bert","foo":{"a":1},"id2label":{"1":"POS","0":"NEG"}}"#;
        let c: PretrainedConfig = parse_config(text, Path::new("config.json")).unwrap();
        assert_eq!(c.labels().unwrap(), vec!["NEG", "POS"]);
        assert_eq!(c.extra.get("foo").unwrap()["a"], 1);
        let out = config_to_json_string(&c).unwrap();
        assert!(out.contains("\"foo\""));
        let c2: PretrainedConfig = parse_config(&out, Path::new("x")).unwrap();
        assert_eq!(c, c2);
        let d: PretrainedConfig = parse_config("{}", Path::new("x")).unwrap();
        assert_eq!(d.labels().unwrap(), vec!["LABEL_0", "LABEL_1"]);
    }

    #[test]
    fn bad_id2label_is_an_error() {
        let c: PretrainedConfig =
            parse_config(r#"{"id2label":{"0":"A","5":"B"}}"#, Path::new("c")).unwrap();
        assert!(c.labels().is_err());
        let c: PretrainedConfig =
            parse_config(r#"{"id2label":{"x":"A"}}"#, Path::new("c")).unwrap();
        assert!(c.labels().is_err());
    }
}
