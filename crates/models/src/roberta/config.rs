//! RoBERTa configuration, mirroring Python's `RobertaConfig` (transformers 4.46,
//! models/roberta/configuration_roberta.py) and `XLMRobertaConfig`
//! (models/xlm_roberta/configuration_xlm_roberta.py): same keys, same defaults.
//!
//! Both Python classes take the same keys with the same defaults except `vocab_size`
//! (50265 for RoBERTa, 30522 for XLM-RoBERTa); every real checkpoint names it, and the
//! XLM-RoBERTa parser below fills the other default in when it is absent.

use serde::{Deserialize, Serialize};

use rustformers_core::config::parse_config;
use rustformers_core::config::KeyPolicy;
use rustformers_core::layers::Activation;
use rustformers_core::{Error, PretrainedConfig, Result};

/// Python's default `pad_token_id` for RoBERTa; also the `padding_idx` that position
/// ids count from.
pub const DEFAULT_PAD_TOKEN_ID: i64 = 1;
const DEFAULT_BOS_TOKEN_ID: i64 = 0;
const DEFAULT_EOS_TOKEN_ID: i64 = 2;

fn d_vocab() -> usize {
    50265
}
fn d_hidden() -> usize {
    768
}
fn d_layers() -> usize {
    12
}
fn d_heads() -> usize {
    12
}
fn d_intermediate() -> usize {
    3072
}
fn d_act() -> String {
    "gelu".into()
}
fn d_dropout() -> f64 {
    0.1
}
fn d_max_pos() -> usize {
    512
}
fn d_type_vocab() -> usize {
    2
}
fn d_init_range() -> f64 {
    0.02
}
fn d_eps() -> f64 {
    1e-12
}
fn d_pos_type() -> String {
    "absolute".into()
}
fn d_true() -> bool {
    true
}

/// config.json keys Python's `RobertaConfig` has that no typed field holds (see
/// [`KeyPolicy`]; checked against Python's keys by the unread-key test).
pub const KEY_POLICY: KeyPolicy = KeyPolicy {
    inert: &[],
    // The model as a decoder (causal mask, for encoder-decoder use).
    refused: &[("is_decoder", "false")],
};

/// config.json of a RoBERTa or XLM-RoBERTa checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RobertaConfig {
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "d_act")]
    pub hidden_act: String,
    #[serde(default = "d_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "d_dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "d_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "d_init_range")]
    pub initializer_range: f64,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "d_pos_type")]
    pub position_embedding_type: String,
    #[serde(default = "d_true")]
    pub use_cache: bool,
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
    #[serde(flatten)]
    pub base: PretrainedConfig,
}

impl RobertaConfig {
    /// Parses a `roberta` config.json, filling in the special-token ids Python's
    /// `RobertaConfig.__init__` defaults (pad 1, bos 0, eos 2) so that save writes them.
    pub fn from_json_str(text: &str, path: &std::path::Path) -> Result<Self> {
        let mut c: Self = parse_config(text, path)?;
        c.base.note_nulls(text);
        c.base.default_token_ids(
            Some(DEFAULT_PAD_TOKEN_ID),
            Some(DEFAULT_BOS_TOKEN_ID),
            Some(DEFAULT_EOS_TOKEN_ID),
        );
        Ok(c)
    }

    /// Parses an `xlm-roberta` config.json: as [`Self::from_json_str`], with
    /// `XLMRobertaConfig`'s `vocab_size` default (30522) when the key is absent.
    pub fn from_xlm_json_str(text: &str, path: &std::path::Path) -> Result<Self> {
        let mut c = Self::from_json_str(text, path)?;
        let has_vocab = serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| v.get("vocab_size").map(|_| ()))
            .is_some();
        if !has_vocab {
            c.vocab_size = 30522;
        }
        Ok(c)
    }

    /// The padding index: position ids of real tokens start right after it.
    pub fn padding_idx(&self) -> i64 {
        self.base.pad_token_id.unwrap_or(DEFAULT_PAD_TOKEN_ID)
    }

    /// The longest input the position table allows: positions run from
    /// `padding_idx + 1` to `padding_idx + seq_len`, so a 514-row table takes 512 tokens.
    pub fn max_input_tokens(&self) -> usize {
        let pad = usize::try_from(self.padding_idx()).unwrap_or(0);
        self.max_position_embeddings.saturating_sub(pad + 1)
    }

    /// Checks the values a forward pass relies on.
    pub fn validate(&self) -> Result<()> {
        let err = |message: String| Error::Config {
            path: "config.json".into(),
            message,
        };
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ] {
            if v == 0 {
                return Err(err(format!("{name} must be positive")));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if self.position_embedding_type != "absolute" {
            return Err(err(format!(
                "position_embedding_type `{}` is not supported (only `absolute`)",
                self.position_embedding_type
            )));
        }
        let pad = self.padding_idx();
        if pad < 0 || pad as u64 >= self.vocab_size as u64 {
            return Err(err(format!(
                "pad_token_id {pad} must be a token id below vocab_size {}",
                self.vocab_size
            )));
        }
        if self.max_input_tokens() == 0 {
            return Err(err(format!(
                "max_position_embeddings {} leaves no position after padding_idx {pad}; \
                 RoBERTa positions start at pad_token_id + 1",
                self.max_position_embeddings
            )));
        }
        if !self.layer_norm_eps.is_finite() || self.layer_norm_eps <= 0.0 {
            return Err(err("layer_norm_eps must be a positive number".into()));
        }
        Activation::from_name(&self.hidden_act).map_err(|e| err(e.to_string()))?;
        self.base.labels()?;
        Ok(())
    }
}

crate::family::family_config!(RobertaConfig, hidden: |c| c.hidden_size,
    positions: |c| c.max_input_tokens(), saved: |c| c.clone());

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn defaults_follow_python() {
        let c =
            RobertaConfig::from_json_str(r#"{"model_type":"roberta"}"#, Path::new("c")).unwrap();
        assert_eq!(c.vocab_size, 50265);
        assert_eq!(c.type_vocab_size, 2);
        assert_eq!(c.base.pad_token_id, Some(1));
        assert_eq!(c.base.bos_token_id, Some(0.into()));
        assert_eq!(c.base.eos_token_id, Some(2.into()));
        assert_eq!(c.max_input_tokens(), 510);
        c.validate().unwrap();
        let x = RobertaConfig::from_xlm_json_str(r#"{"model_type":"xlm-roberta"}"#, Path::new("c"))
            .unwrap();
        assert_eq!(x.vocab_size, 30522);
        let x =
            RobertaConfig::from_xlm_json_str(r#"{"vocab_size":250002}"#, Path::new("c")).unwrap();
        assert_eq!(x.vocab_size, 250002);
    }

    #[test]
    fn bad_values_are_errors() {
        for text in [
            r#"{"hidden_size":30,"num_attention_heads":4}"#,
            r#"{"position_embedding_type":"relative_key"}"#,
            r#"{"max_position_embeddings":2}"#,
            r#"{"pad_token_id":-1}"#,
            r#"{"hidden_act":"nope"}"#,
        ] {
            let c = RobertaConfig::from_json_str(text, Path::new("c")).unwrap();
            assert!(c.validate().is_err(), "{text}");
        }
    }
}
