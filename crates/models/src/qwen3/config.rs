//! Qwen3 configuration, mirroring Python's `Qwen3Config` (transformers 4.51,
//! models/qwen3/configuration_qwen3.py; 4.46 has no Qwen3). Copied from
//! `qwen2/config.rs`; differs in: `head_dim` (default 128) and `attention_bias`
//! (default false, for all four projections), and the sliding window is per layer.

use serde::{Deserialize, Serialize};

use rustformers_core::config::KeyPolicy;
use rustformers_core::layers::Activation;
use rustformers_core::rope_parameters::{layer_types, sliding_windows, RopeKeys, RopeParameters};
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
fn d_head_dim() -> Option<usize> {
    Some(128)
}
fn d_window() -> Option<usize> {
    Some(4096)
}
fn d_max_window_layers() -> usize {
    28
}

/// config.json keys Python's `Qwen3Config` has that no typed field holds (see
/// [`KeyPolicy`]; checked against Python's keys by the unread-key test).
pub const KEY_POLICY: KeyPolicy = KeyPolicy::NONE;

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
    /// `rope_parameters` (5.x) or `rope_theta` / `rope_scaling` (4.x), read as 5.25 does.
    #[serde(flatten)]
    pub rope: RopeKeys,
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
    /// 5.x: `full_attention` / `sliding_attention` per layer (derived when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<String>>,
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

    /// The attention kind of every layer, as 5.25's `Qwen3Config` derives it when
    /// config.json has no `layer_types`: `sliding_attention` from `max_window_layers` on
    /// when `use_sliding_window` and `sliding_window` is set.
    pub fn layer_types(&self) -> Result<Vec<String>> {
        let sliding = self.use_sliding_window && self.sliding_window.is_some();
        layer_types(self.layer_types.as_deref(), self.num_hidden_layers, |i| {
            sliding && i >= self.max_window_layers
        })
    }

    /// The attention window of each layer: `sliding_window` on `sliding_attention` layers
    /// (5.25 sets `sliding_window` to none without `use_sliding_window`), else none.
    pub fn layer_sliding_windows(&self) -> Result<Vec<Option<usize>>> {
        let window = self.sliding_window.filter(|_| self.use_sliding_window);
        Ok(sliding_windows(&self.layer_types()?, window))
    }

    /// The resolved RoPE parameters (one set for every layer).
    pub fn rope(&self) -> Result<RopeParameters> {
        let types = self.layer_types()?;
        self.rope
            .whole_head("Qwen3", self.max_position_embeddings, Some(&types))
    }

    /// This config as transformers 5.x saves it (`rope_parameters`, `layer_types`).
    pub fn saved_form(&self) -> Result<Self> {
        let mut c = self.clone();
        let types = self.layer_types()?;
        c.rope = self
            .rope
            .saved(self.max_position_embeddings, Some(&types))?;
        c.layer_types = Some(types);
        c.num_key_value_heads = Some(self.num_key_value_heads());
        c.head_dim = Some(self.head_dim());
        // Python keeps the window only with `use_sliding_window`.
        c.sliding_window = self.sliding_window.filter(|_| self.use_sliding_window);
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
        if self.use_sliding_window && self.sliding_window == Some(0) {
            return Err(err("sliding_window must be positive".into()));
        }
        if !self.rms_norm_eps.is_finite() || self.rms_norm_eps <= 0.0 {
            return Err(err("rms_norm_eps must be positive".into()));
        }
        Activation::from_name(&self.hidden_act).map_err(|e| err(e.to_string()))?;
        self.layer_types()?;
        self.rope()?;
        Ok(())
    }
}

crate::family::family_config!(Qwen3Config, hidden: |c| c.hidden_size,
    positions: |c| c.max_position_embeddings, saved: |c| c.saved_form()?);
