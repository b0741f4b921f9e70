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
    /// 4.x's name of [`PretrainedConfig::dtype`] (read; 5.x writes `dtype`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torch_dtype: Option<String>,
    /// The dtype the weights were saved in (5.x).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tie_word_embeddings: Option<bool>,
    /// Keys no typed field claims, kept so that save writes them back.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// Keys config.json sets to `null`: Python keeps an explicit null (it overrides a
    /// non-null default), and save writes it back.
    #[serde(skip)]
    pub explicit_nulls: Vec<String>,
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

    /// The saved dtype: `dtype`, else 4.x's `torch_dtype` (5.x reads them so).
    pub fn saved_dtype(&self) -> Option<&str> {
        self.dtype.as_deref().or(self.torch_dtype.as_deref())
    }

    /// Records the saved dtype as transformers 5.x writes it (`dtype`, no `torch_dtype`).
    pub fn set_saved_dtype(&mut self, dtype: &str) {
        self.dtype = Some(dtype.to_string());
        self.torch_dtype = None;
    }

    /// Refuses the keys [`COMMON_KEYS`] and the family's `policy` refuse, set to a value
    /// no family here implements (an encoder-decoder config, cross-attention, ...).
    pub fn refuse_unsupported(&self, policy: &KeyPolicy) -> Result<()> {
        let context = format!(" for model type `{}`", self.model_type);
        for p in [&COMMON_KEYS, policy] {
            p.check(|k| self.extra.get(k), "config.json", &context)?;
        }
        Ok(())
    }

    /// The keys of config.json that nothing reads: no typed field, and neither the
    /// family's `policy` nor [`COMMON_KEYS`] accounts for them (what `rustformers inspect`
    /// lists; a key Python reads that lands here is a silent difference).
    pub fn unread_keys(&self, policy: &KeyPolicy) -> Vec<String> {
        self.extra
            .keys()
            .filter(|k| !policy.covers(k) && !COMMON_KEYS.covers(k))
            .cloned()
            .collect()
    }

    /// Notes the keys `text` (config.json) sets to `null`.
    pub fn note_nulls(&mut self, text: &str) {
        self.explicit_nulls = null_keys(text);
    }

    /// Fills Python's default token ids where config.json has no key (an explicit `null`
    /// stays null); call [`Self::note_nulls`] first.
    pub fn default_token_ids(&mut self, pad: Option<i64>, bos: Option<i64>, eos: Option<i64>) {
        let absent = |key: &str, set: bool| !set && !self.explicit_nulls.iter().any(|k| k == key);
        if let Some(p) = pad.filter(|_| absent("pad_token_id", self.pad_token_id.is_some())) {
            self.pad_token_id = Some(p);
        }
        if let Some(b) = bos.filter(|_| absent("bos_token_id", self.bos_token_id.is_some())) {
            self.bos_token_id = Some(b.into());
        }
        if let Some(e) = eos.filter(|_| absent("eos_token_id", self.eos_token_id.is_some())) {
            self.eos_token_id = Some(e.into());
        }
    }

    /// Whether input and output embeddings are tied (Python default: true).
    pub fn tie_word_embeddings(&self) -> bool {
        self.tie_word_embeddings.unwrap_or(true)
    }
}

/// How a family accounts for the config.json keys it has no typed field for (typed fields
/// are read by construction). Every key of Python's config class must be typed, inert or
/// refused (the unread-key test checks it against Python's keys).
#[derive(Debug, Clone, Copy)]
pub struct KeyPolicy {
    /// Keys whose value cannot change this family's outputs, with the reason.
    pub inert: &'static [(&'static str, &'static str)],
    /// Keys that change the outputs and are not implemented, each with the value that
    /// does nothing (JSON text): [`KeyPolicy::check`] refuses them by name when set to
    /// anything else than that value or `null`.
    pub refused: &'static [(&'static str, &'static str)],
}

impl KeyPolicy {
    /// No keys beyond the typed fields.
    pub const NONE: KeyPolicy = KeyPolicy {
        inert: &[],
        refused: &[],
    };

    fn covers(&self, key: &str) -> bool {
        self.inert.iter().any(|(k, _)| *k == key) || self.refused.iter().any(|(k, _)| *k == key)
    }

    /// Refuses the first `refused` key that `get` finds set to a value that acts: one
    /// error `"{what} `key` = value is not implemented{context}"`.
    pub fn check<'v>(
        &self,
        get: impl Fn(&str) -> Option<&'v serde_json::Value>,
        what: &str,
        context: &str,
    ) -> Result<()> {
        for (key, noop) in self.refused {
            let Some(v) = get(key).filter(|v| !v.is_null()) else {
                continue;
            };
            let quiet = serde_json::from_str::<serde_json::Value>(noop).is_ok_and(|n| {
                match (n.as_f64(), v.as_f64()) {
                    (Some(a), Some(b)) => a == b,
                    _ => n == *v,
                }
            });
            if !quiet {
                return Err(Error::Unsupported(format!(
                    "{what} `{key}` = {v} is not implemented{context}"
                )));
            }
        }
        Ok(())
    }
}

/// Keys of Python's `PreTrainedConfig` (shared by every family) that no typed field reads.
pub const COMMON_KEYS: KeyPolicy = KeyPolicy {
    inert: &[
        ("_name_or_path", "where Python loaded the config from"),
        ("transformers_version", "the version that wrote the file"),
        (
            "output_attentions",
            "asks Python for extra outputs, not different ones",
        ),
        (
            "output_hidden_states",
            "asks Python for extra outputs, not different ones",
        ),
        ("return_dict", "the container of Python's outputs"),
        (
            "chunk_size_feed_forward",
            "chunks the feed-forward computation: the same numbers",
        ),
        (
            "use_cache",
            "whether generation keeps a KV cache: the same tokens",
        ),
        (
            "initializer_range",
            "initialises weights a checkpoint lacks (new heads, training from scratch)",
        ),
        ("torchscript", "a PyTorch export switch"),
        ("tf_legacy_loss", "TensorFlow-only"),
        ("use_bfloat16", "TensorFlow/JAX-only"),
        ("finetuning_task", "a label, read by no model"),
        (
            "tokenizer_class",
            "names the tokenizer class (read from tokenizer_config.json)",
        ),
        (
            "task_specific_params",
            "pipeline presets Python's pipelines no longer apply",
        ),
        (
            "prefix",
            "pipeline presets Python's pipelines no longer apply",
        ),
        (
            "sep_token_id",
            "read by no model here (the tokenizer's is used)",
        ),
        ("decoder_start_token_id", "encoder-decoder generation only"),
        (
            "cross_attention_hidden_size",
            "encoder-decoder only (is_encoder_decoder is refused)",
        ),
        (
            "tie_encoder_decoder",
            "encoder-decoder only (is_encoder_decoder is refused)",
        ),
        (
            "_attn_implementation",
            "Python's attention kernel choice: the same numbers",
        ),
        (
            "attn_implementation",
            "Python's attention kernel choice: the same numbers",
        ),
        (
            "_from_model_config",
            "a marker of how Python built the config",
        ),
        ("base_config_key", "a marker of composite configs"),
    ],
    refused: &[
        // An encoder-decoder model, cross-attention layers, pruned attention heads.
        ("is_encoder_decoder", "false"),
        ("add_cross_attention", "false"),
        ("pruned_heads", "{}"),
    ],
};

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

/// The top-level keys `text` sets to `null` (none when it is not a JSON object).
pub fn null_keys(text: &str) -> Vec<String> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(map)) => map
            .into_iter()
            .filter(|(_, v)| v.is_null())
            .map(|(k, _)| k)
            .collect(),
        _ => Vec::new(),
    }
}

/// Serialises a config as Python writes config.json: pretty, two-space indent, sorted keys.
pub fn config_to_json_string<T: Serialize>(config: &T) -> Result<String> {
    config_to_json_string_with_nulls(config, &[])
}

/// [`config_to_json_string`], writing `nulls` as `null` where the config has no value.
pub fn config_to_json_string_with_nulls<T: Serialize>(
    config: &T,
    nulls: &[String],
) -> Result<String> {
    let mut value = serde_json::to_value(config).map_err(|e| Error::Json {
        context: "serialising config".into(),
        source: e,
    })?;
    if let serde_json::Value::Object(map) = &mut value {
        for k in nulls {
            map.entry(k.clone()).or_insert(serde_json::Value::Null);
        }
    }
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
