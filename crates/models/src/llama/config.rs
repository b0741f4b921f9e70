//! Llama configuration, mirroring Python's `LlamaConfig` (transformers 5.25,
//! models/llama/configuration_llama.py; the 4.x keys read too).

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
    11008
}
fn d_layers() -> usize {
    32
}
fn d_heads() -> usize {
    32
}
fn d_act() -> String {
    "silu".into()
}
fn d_max_pos() -> usize {
    2048
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
fn d_one() -> usize {
    1
}
fn d_zero() -> f64 {
    0.0
}

/// config.json keys Python's `LlamaConfig` has that no typed field holds (see
/// [`KeyPolicy`]; checked against Python's keys by the unread-key test).
pub const KEY_POLICY: KeyPolicy = KeyPolicy::NONE;

/// config.json of a Llama checkpoint (also what GGUF metadata maps to).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LlamaConfig {
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
    /// Defaults to `num_attention_heads` (no grouped-query attention).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
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
    #[serde(default = "d_one")]
    pub pretraining_tp: usize,
    /// `rope_parameters` (5.x) or `rope_theta` / `rope_scaling` (4.x), read as 5.25 does.
    #[serde(flatten)]
    pub rope: RopeKeys,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default = "d_zero")]
    pub attention_dropout: f64,
    #[serde(default)]
    pub mlp_bias: bool,
    /// Defaults to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// Rotary in the interleaved layout: set for weights from GGUF files, whose q/k rows
    /// llama.cpp stores permuted for it. Not a config.json key.
    #[serde(skip)]
    pub rope_interleaved: bool,
    #[serde(flatten)]
    pub base: PretrainedConfig,
}

impl LlamaConfig {
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    pub fn num_key_value_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Llama's default is untied input/output embeddings.
    pub fn tie_word_embeddings(&self) -> bool {
        self.base.tie_word_embeddings.unwrap_or(false)
    }

    /// The resolved RoPE parameters (one set for every layer).
    pub fn rope(&self) -> Result<RopeParameters> {
        self.rope
            .whole_head("Llama", self.max_position_embeddings, None)
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
        if !self.rms_norm_eps.is_finite() || self.rms_norm_eps <= 0.0 {
            return Err(err("rms_norm_eps must be positive".into()));
        }
        if self.pretraining_tp != 1 {
            // Python only splits the matmuls; the result is the same math.
            tracing::debug!(
                "pretraining_tp {} ignored (same result)",
                self.pretraining_tp
            );
        }
        Activation::from_name(&self.hidden_act).map_err(|e| err(e.to_string()))?;
        self.rope()?;
        Ok(())
    }
}

crate::family::family_config!(LlamaConfig, hidden: |c| c.hidden_size,
    positions: |c| c.max_position_embeddings, saved: |c| c.saved_form()?);
