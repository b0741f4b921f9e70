//! DistilBERT configuration, mirroring Python's `DistilBertConfig` (transformers 4.46,
//! models/distilbert/configuration_distilbert.py): same keys, same defaults.
//!
//! Python maps `hidden_size`, `num_attention_heads` and `num_hidden_layers` onto `dim`,
//! `n_heads` and `n_layers` (its `attribute_map`); config.json files use the short names.

use serde::{Deserialize, Serialize};

use rustformers_core::config::parse_config;
use rustformers_core::config::KeyPolicy;
use rustformers_core::layers::Activation;
use rustformers_core::{Error, PretrainedConfig, Result};

/// Python's default `pad_token_id` for DistilBERT.
pub const DEFAULT_PAD_TOKEN_ID: i64 = 0;

fn d_vocab() -> usize {
    30522
}
fn d_max_pos() -> usize {
    512
}
fn d_layers() -> usize {
    6
}
fn d_heads() -> usize {
    12
}
fn d_dim() -> usize {
    768
}
fn d_hidden_dim() -> usize {
    4 * 768
}
fn d_dropout() -> f64 {
    0.1
}
fn d_act() -> String {
    "gelu".into()
}
fn d_init_range() -> f64 {
    0.02
}
fn d_seq_classif_dropout() -> f64 {
    0.2
}

/// config.json keys Python's `DistilBertConfig` has that no typed field holds (see
/// [`KeyPolicy`]; checked against Python's keys by the unread-key test).
pub const KEY_POLICY: KeyPolicy = KeyPolicy::NONE;

/// config.json of a DistilBERT checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DistilBertConfig {
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_max_pos")]
    pub max_position_embeddings: usize,
    /// Whether the position table was initialised with sinusoids. Checkpoints store
    /// the table either way; a checkpoint without it gets the sinusoids computed.
    #[serde(default)]
    pub sinusoidal_pos_embds: bool,
    #[serde(default = "d_layers")]
    pub n_layers: usize,
    #[serde(default = "d_heads")]
    pub n_heads: usize,
    #[serde(default = "d_dim")]
    pub dim: usize,
    #[serde(default = "d_hidden_dim")]
    pub hidden_dim: usize,
    #[serde(default = "d_dropout")]
    pub dropout: f64,
    #[serde(default = "d_dropout")]
    pub attention_dropout: f64,
    #[serde(default = "d_act")]
    pub activation: String,
    #[serde(default = "d_init_range")]
    pub initializer_range: f64,
    #[serde(default = "d_dropout")]
    pub qa_dropout: f64,
    #[serde(default = "d_seq_classif_dropout")]
    pub seq_classif_dropout: f64,
    #[serde(flatten)]
    pub base: PretrainedConfig,
}

impl DistilBertConfig {
    /// Parses config.json text, filling in Python's `pad_token_id` default (0) so that
    /// save writes it.
    pub fn from_json_str(text: &str, path: &std::path::Path) -> Result<Self> {
        let mut c: Self = parse_config(text, path)?;
        c.base.note_nulls(text);
        c.base
            .default_token_ids(Some(DEFAULT_PAD_TOKEN_ID), None, None);
        Ok(c)
    }

    /// Checks the values a forward pass relies on.
    pub fn validate(&self) -> Result<()> {
        let err = |message: String| Error::Config {
            path: "config.json".into(),
            message,
        };
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("dim", self.dim),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("hidden_dim", self.hidden_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(err(format!("{name} must be positive")));
            }
        }
        if !self.dim.is_multiple_of(self.n_heads) {
            return Err(err(format!(
                "dim {} is not a multiple of n_heads {}",
                self.dim, self.n_heads
            )));
        }
        Activation::from_name(&self.activation).map_err(|e| err(e.to_string()))?;
        self.base.labels()?;
        Ok(())
    }
}

crate::family::family_config!(DistilBertConfig, hidden: |c| c.dim,
    positions: |c| c.max_position_embeddings, saved: |c| c.clone());

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn defaults_follow_python() {
        let c = DistilBertConfig::from_json_str("{}", Path::new("c")).unwrap();
        assert_eq!(
            (c.dim, c.n_layers, c.n_heads, c.hidden_dim),
            (768, 6, 12, 3072)
        );
        assert_eq!(c.base.pad_token_id, Some(0));
        assert!(!c.sinusoidal_pos_embds);
        assert_eq!(c.seq_classif_dropout, 0.2);
        c.validate().unwrap();
        let bad =
            DistilBertConfig::from_json_str(r#"{"dim":30,"n_heads":4}"#, Path::new("c")).unwrap();
        assert!(bad.validate().is_err());
        let bad =
            DistilBertConfig::from_json_str(r#"{"activation":"nope"}"#, Path::new("c")).unwrap();
        assert!(bad.validate().is_err());
    }
}
