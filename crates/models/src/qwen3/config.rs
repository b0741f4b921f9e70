//! Qwen3 configuration, mirroring Python's `Qwen3Config` (transformers 4.51,
//! models/qwen3/configuration_qwen3.py; 4.46 has no Qwen3). Copied from
//! `qwen2/config.rs`; differs in: `head_dim` (default 128) and `attention_bias`
//! (default false, for all four projections), and the sliding window is per layer.

use serde::{Deserialize, Serialize};

use rustformers_core::layers::Activation;
use rustformers_core::rotary::RopeScaling;
use rustformers_core::{Error, PretrainedConfig, Result};

fn d_vocab() -> usize {
    151936
}
fn d_hidden() -> usize {
    4096
}
fn d_intermediate() -> usize {
    22016
}
fn d_layers() -> usize {
    32
}
fn d_heads() -> usize {
    32
}
fn d_kv_heads() -> Option<usize> {
    Some(32)
}
fn d_act() -> String {
    "silu".into()
}
fn d_max_pos() -> usize {
    32768
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
fn d_theta() -> f64 {
    10000.0
}
fn d_head_dim() -> Option<usize> {
    Some(128)
}
fn d_window() -> Option<usize> {
    Some(4096)
}
fn d_max_window_layers() -> usize {
    28
}

/// config.json of a Qwen3 checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Qwen3Config {
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
    /// Python's default is 32; an explicit `null` means `num_attention_heads`.
    #[serde(default = "d_kv_heads")]
    pub num_key_value_heads: Option<usize>,
    /// Python's default is 128; an explicit `null` means `hidden_size / num_attention_heads`.
    #[serde(default = "d_head_dim")]
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
    #[serde(default = "d_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub use_sliding_window: bool,
    /// Only used with `use_sliding_window`.
    #[serde(default = "d_window")]
    pub sliding_window: Option<usize>,
    /// Layers from this index on use the sliding window (with `use_sliding_window`).
    #[serde(default = "d_max_window_layers")]
    pub max_window_layers: usize,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(flatten)]
    pub base: PretrainedConfig,
}

impl Qwen3Config {
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    pub fn num_key_value_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Qwen3's default is untied input/output embeddings.
    pub fn tie_word_embeddings(&self) -> bool {
        self.base.tie_word_embeddings.unwrap_or(false)
    }

    /// The attention window of layer `layer`, as `Qwen3Attention` sets it: `sliding_window`
    /// when `use_sliding_window` and `layer >= max_window_layers`, else none.
    ///
    /// (4.51's eager/SDPA mask builder applies `config.sliding_window` to every layer
    /// whenever it is not null, even with `use_sliding_window` false; released Qwen3
    /// checkpoints set it to null, and this follows the per-layer rule the attention
    /// module states and later releases use.)
    pub fn layer_sliding_window(&self, layer: usize) -> Option<usize> {
        if self.use_sliding_window && layer >= self.max_window_layers {
            self.sliding_window
        } else {
            None
        }
    }

    pub fn rope_scaling(&self) -> Result<RopeScaling> {
        RopeScaling::from_config(self.rope_scaling.as_ref(), self.max_position_embeddings)
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
        if self.use_sliding_window && self.sliding_window == Some(0) {
            return Err(err("sliding_window must be positive".into()));
        }
        if !self.rms_norm_eps.is_finite() || self.rms_norm_eps <= 0.0 {
            return Err(err("rms_norm_eps must be positive".into()));
        }
        Activation::from_name(&self.hidden_act).map_err(|e| err(e.to_string()))?;
        self.rope_scaling()?;
        Ok(())
    }
}
