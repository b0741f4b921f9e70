//! Gemma2 configuration, mirroring Python's `Gemma2Config` (transformers 5.25,
//! models/gemma2/configuration_gemma2.py). Differs from Llama's: `hidden_activation`
//! (not `hidden_act`), `query_pre_attn_scalar`, `sliding_window` on the layers
//! `layer_types` names, the two soft-capping values, `cache_implementation`, tied
//! embeddings and Gemma's token ids by default; `use_bidirectional_attention` is refused.

use serde::{Deserialize, Serialize};

use rustformers_core::config::KeyPolicy;
use rustformers_core::layers::Activation;
use rustformers_core::rope_parameters::{layer_types, sliding_windows, RopeKeys, RopeParameters};
use rustformers_core::{Error, PretrainedConfig, Result};

fn d_vocab() -> usize {
    256000
}
fn d_hidden() -> usize {
    2304
}
fn d_intermediate() -> usize {
    9216
}
fn d_layers() -> usize {
    26
}
fn d_heads() -> usize {
    8
}
fn d_kv_heads() -> usize {
    4
}
fn d_head_dim() -> usize {
    256
}
fn d_act() -> String {
    "gelu_pytorch_tanh".into()
}
fn d_max_pos() -> usize {
    8192
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
fn d_query_pre_attn_scalar() -> usize {
    256
}
fn d_window() -> Option<usize> {
    Some(4096)
}
fn d_final_cap() -> Option<f64> {
    Some(30.0)
}
fn d_attn_cap() -> Option<f64> {
    Some(50.0)
}
fn d_cache_implementation() -> Option<String> {
    Some("hybrid".into())
}

/// config.json keys Python's `Gemma2Config` has that no typed field holds (see
/// [`KeyPolicy`]; checked against Python's keys by the unread-key test).
pub const KEY_POLICY: KeyPolicy = KeyPolicy::NONE;

/// config.json of a Gemma2 checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Gemma2Config {
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
    #[serde(default = "d_kv_heads")]
    pub num_key_value_heads: usize,
    #[serde(default = "d_head_dim")]
    pub head_dim: usize,
    /// The MLP activation (4.46's Gemma2 reads this key, not `hidden_act`).
    #[serde(default = "d_act")]
    pub hidden_activation: String,
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
    pub attention_dropout: f64,
    /// Attention scores are scaled by `query_pre_attn_scalar ** -0.5` (not `head_dim`'s).
    /// An int, as 5.x's strict `Gemma2Config` types it (it refuses 256.0).
    #[serde(default = "d_query_pre_attn_scalar")]
    pub query_pre_attn_scalar: usize,
    /// The window of the even-numbered layers (the odd ones attend globally).
    #[serde(default = "d_window")]
    pub sliding_window: Option<usize>,
    /// `cap * tanh(logits / cap)` on the output logits; `null` for none.
    #[serde(default = "d_final_cap")]
    pub final_logit_softcapping: Option<f64>,
    /// `cap * tanh(scores / cap)` on the attention scores, before the mask; `null` for none.
    #[serde(default = "d_attn_cap")]
    pub attn_logit_softcapping: Option<f64>,
    #[serde(default = "d_cache_implementation")]
    pub cache_implementation: Option<String>,
    /// 5.x: `full_attention` / `sliding_attention` per layer (derived when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<String>>,
    /// 5.x: attention without the causal mask (an encoder use); refused when true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_bidirectional_attention: Option<bool>,
    #[serde(flatten)]
    pub base: PretrainedConfig,
}

impl Gemma2Config {
    /// Parses config.json, filling the token ids Python's `Gemma2Config` defaults
    /// (`pad_token_id` 0, `eos_token_id` 1, `bos_token_id` 2) when the file has none.
    pub fn from_json_str(text: &str, path: &std::path::Path) -> Result<Self> {
        let mut c: Self = rustformers_core::config::parse_config(text, path)?;
        c.base.note_nulls(text);
        c.base.default_token_ids(Some(0), Some(2), Some(1));
        Ok(c)
    }

    /// Gemma2's default is tied input/output embeddings.
    pub fn tie_word_embeddings(&self) -> bool {
        self.base.tie_word_embeddings.unwrap_or(true)
    }

    /// The attention kind of every layer: config.json's `layer_types`, else as 5.25's
    /// `Gemma2Config` derives it (even layers `sliding_attention`, odd ones full).
    pub fn layer_types(&self) -> Result<Vec<String>> {
        layer_types(self.layer_types.as_deref(), self.num_hidden_layers, |i| {
            i.is_multiple_of(2)
        })
    }

    /// The attention window of each layer: `sliding_window` on `sliding_attention` layers.
    pub fn layer_sliding_windows(&self) -> Result<Vec<Option<usize>>> {
        Ok(sliding_windows(&self.layer_types()?, self.sliding_window))
    }
    /// The resolved RoPE parameters (one set for every layer).
    pub fn rope(&self) -> Result<RopeParameters> {
        let types = self.layer_types()?;
        self.rope
            .whole_head("Gemma2", self.max_position_embeddings, Some(&types))
    }

    /// This config as transformers 5.x saves it (`rope_parameters`, `layer_types`).
    pub fn saved_form(&self) -> Result<Self> {
        let mut c = self.clone();
        let types = self.layer_types()?;
        c.rope = self
            .rope
            .saved(self.max_position_embeddings, Some(&types))?;
        c.layer_types = Some(types);
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
            ("num_key_value_heads", self.num_key_value_heads),
            ("max_position_embeddings", self.max_position_embeddings),
            ("head_dim", self.head_dim),
        ] {
            if v == 0 {
                return Err(err(format!("{name} must be positive")));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            )));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(err(format!(
                "head_dim {} must be even for rotary embeddings",
                self.head_dim
            )));
        }
        if self.sliding_window == Some(0) {
            return Err(err(
                "sliding_window must be positive (or null for none)".into()
            ));
        }
        if self.query_pre_attn_scalar == 0 {
            return Err(err("query_pre_attn_scalar must be positive".into()));
        }
        for (name, cap) in [
            ("final_logit_softcapping", self.final_logit_softcapping),
            ("attn_logit_softcapping", self.attn_logit_softcapping),
        ] {
            if cap.is_some_and(|c| !c.is_finite() || c <= 0.0) {
                return Err(err(format!("{name} must be positive (or null for none)")));
            }
        }
        if !self.rms_norm_eps.is_finite() || self.rms_norm_eps <= 0.0 {
            return Err(err("rms_norm_eps must be positive".into()));
        }
        if self.use_bidirectional_attention == Some(true) {
            return Err(Error::Unsupported(
                "use_bidirectional_attention true (Gemma2 without the causal mask) is not \
                 implemented"
                    .into(),
            ));
        }
        Activation::from_name(&self.hidden_activation).map_err(|e| err(e.to_string()))?;
        self.rope()?;
        Ok(())
    }
}

crate::family::family_config!(Gemma2Config, hidden: |c| c.hidden_size,
    positions: |c| c.max_position_embeddings, saved: |c| c.saved_form()?);
