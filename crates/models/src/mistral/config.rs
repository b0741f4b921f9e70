//! Mistral configuration, mirroring Python's `MistralConfig` (transformers 5.25,
//! models/mistral/configuration_mistral.py). Differs from Llama's: `sliding_window`
//! (default 4096), 8 key/value heads and a 131072-token context by default, and no
//! biases or `pretraining_tp`. RoPE reads `rope_parameters` of every type, as 5.x's
//! Mistral does (4.46's ignored `rope_scaling`).

use serde::{Deserialize, Serialize};

use rustformers_core::config::KeyPolicy;
use rustformers_core::layers::Activation;
use rustformers_core::rope_parameters::{RopeKeys, RopeParameters};
use rustformers_core::{Error, PretrainedConfig, Result};

fn d_vocab() -> usize {
    32000
}
fn d_hidden() -> usize {
    4096
}
fn d_intermediate() -> usize {
    14336
}
fn d_layers() -> usize {
    32
}
fn d_heads() -> usize {
    32
}
fn d_kv_heads() -> Option<usize> {
    Some(8)
}
fn d_act() -> String {
    "silu".into()
}
fn d_max_pos() -> usize {
    4096 * 32
}
fn d_init() -> f64 {
    0.02
}
fn d_eps() -> f64 {
    1e-6
}
fn d_true() -> bool {
    true
}
fn d_window() -> Option<usize> {
    Some(4096)
}

/// config.json keys Python's `MistralConfig` has that no typed field holds (see
/// [`KeyPolicy`]; checked against Python's keys by the unread-key test).
pub const KEY_POLICY: KeyPolicy = KeyPolicy::NONE;

/// config.json of a Mistral checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MistralConfig {
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    /// Python's default is 8; an explicit `null` means `num_attention_heads`.
    #[serde(default = "d_kv_heads")]
    pub num_key_value_heads: Option<usize>,
    /// Defaults to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "d_act")]
    pub hidden_act: String,
    #[serde(default = "d_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_init")]
    pub initializer_range: f64,
    #[serde(default = "d_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "d_true")]
    pub use_cache: bool,
    /// `rope_parameters` (5.x) or `rope_theta` / `rope_scaling` (4.x), read as 5.25 does.
    #[serde(flatten)]
    pub rope: RopeKeys,
    /// Keys at cache index `j` are visible to the query at index `i` when
    /// `i - window < j <= i`; `null` turns the window off.
    #[serde(default = "d_window")]
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(flatten)]
    pub base: PretrainedConfig,
}

impl MistralConfig {
    /// Parses config.json, filling the token ids Python's `MistralConfig` defaults
    /// (`bos_token_id` 1, `eos_token_id` 2) when the file has none.
    pub fn from_json_str(text: &str, path: &std::path::Path) -> Result<Self> {
        let mut c: Self = rustformers_core::config::parse_config(text, path)?;
        c.base.note_nulls(text);
        c.base.default_token_ids(None, Some(1), Some(2));
        Ok(c)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    pub fn num_key_value_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Mistral's default is untied input/output embeddings.
    pub fn tie_word_embeddings(&self) -> bool {
        self.base.tie_word_embeddings.unwrap_or(false)
    }

    /// The resolved RoPE parameters (one set for every layer).
    pub fn rope(&self) -> Result<RopeParameters> {
        self.rope
            .whole_head("Mistral", self.max_position_embeddings, None)
    }

    /// This config as transformers 5.x saves it (`rope_parameters`; `head_dim` and
    /// `num_key_value_heads` as derived).
    pub fn saved_form(&self) -> Result<Self> {
        let mut c = self.clone();
        c.rope = self.rope.saved(self.max_position_embeddings, None)?;
        c.head_dim = Some(self.head_dim());
        c.num_key_value_heads = Some(self.num_key_value_heads());
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        let err = |message: String| Error::Config {
            path: "config.json".into(),
            message,
        };
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads()),
            ("max_position_embeddings", self.max_position_embeddings),
            ("head_dim", self.head_dim()),
        ] {
            if v == 0 {
                return Err(err(format!("{name} must be positive")));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads())
        {
            return Err(err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.num_key_value_heads()
            )));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(err(format!(
                "head_dim {} must be even for rotary embeddings",
                self.head_dim()
            )));
        }
        if self.sliding_window == Some(0) {
            return Err(err(
                "sliding_window must be positive (or null for none)".into()
            ));
        }
        if !self.rms_norm_eps.is_finite() || self.rms_norm_eps <= 0.0 {
            return Err(err("rms_norm_eps must be positive".into()));
        }
        self.rope()?;
        Activation::from_name(&self.hidden_act).map_err(|e| err(e.to_string()))?;
        Ok(())
    }
}

crate::family::family_config!(MistralConfig, hidden: |c| c.hidden_size,
    positions: |c| c.max_position_embeddings, saved: |c| c.saved_form()?);
