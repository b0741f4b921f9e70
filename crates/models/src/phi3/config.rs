//! Phi-3 configuration, mirroring Python's `Phi3Config` (transformers 4.46,
//! models/phi3/configuration_phi3.py). Differs from Llama's: `original_max_position_embeddings`,
//! `sliding_window` (default none), dropout rates, `rope_scaling` of type `longrope`
//! only (the legacy `su` and `yarn` names mean `longrope`, as Python's
//! `_rope_scaling_adjustment` rewrites them), Phi-3's token ids, and
//! `partial_rotary_factor` (read by transformers 4.48+ for Phi-4-mini; 1.0 by default).

use serde::{Deserialize, Serialize};

use rustformers_core::layers::Activation;
use rustformers_core::{Error, PretrainedConfig, Result};

fn d_vocab() -> usize {
    32064
}
fn d_hidden() -> usize {
    3072
}
fn d_intermediate() -> usize {
    8192
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
    4096
}
fn d_init() -> f64 {
    0.02
}
fn d_eps() -> f64 {
    1e-5
}
fn d_true() -> bool {
    true
}
fn d_theta() -> f64 {
    10000.0
}
fn d_one() -> f64 {
    1.0
}

/// config.json of a Phi-3 checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Phi3Config {
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
    /// Defaults to `num_attention_heads`.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub resid_pdrop: f64,
    #[serde(default)]
    pub embd_pdrop: f64,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(default = "d_act")]
    pub hidden_act: String,
    #[serde(default = "d_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_max_pos")]
    pub original_max_position_embeddings: usize,
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
    /// Keys at cache index `j` are visible to the query at index `i` when
    /// `i - window < j <= i`; none by default.
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// The share of each head that rotates (Phi-4-mini: 0.75).
    #[serde(default = "d_one")]
    pub partial_rotary_factor: f64,
    #[serde(flatten)]
    pub base: PretrainedConfig,
}

/// Phi-3's `rope_scaling`: `longrope` frequency factors.
#[derive(Debug, Clone, PartialEq)]
pub struct LongRope {
    /// Used while the sequence (cached + new positions) fits
    /// `original_max_position_embeddings`.
    pub short_factor: Vec<f64>,
    /// Used past it.
    pub long_factor: Vec<f64>,
}

impl Phi3Config {
    /// Parses config.json, filling the token ids Python's `Phi3Config` defaults
    /// (`bos_token_id` 1, `eos_token_id` and `pad_token_id` 32000) when the file has none.
    pub fn from_json_str(text: &str, path: &std::path::Path) -> Result<Self> {
        let mut c: Self = rustformers_core::config::parse_config(text, path)?;
        c.base.bos_token_id.get_or_insert(1.into());
        c.base.eos_token_id.get_or_insert(32000.into());
        c.base.pad_token_id.get_or_insert(32000);
        Ok(c)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    pub fn num_key_value_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// The rotated share of each head: `int(head_dim * partial_rotary_factor)`.
    pub fn rotary_dim(&self) -> usize {
        (self.head_dim() as f64 * self.partial_rotary_factor) as usize
    }

    /// Phi-3's default is untied input/output embeddings.
    pub fn tie_word_embeddings(&self) -> bool {
        self.base.tie_word_embeddings.unwrap_or(false)
    }

    /// The `longrope` factors, or `None` without `rope_scaling`; any other scaling is an
    /// error, as in Python.
    pub fn long_rope(&self) -> Result<Option<LongRope>> {
        let err = |message: String| Error::Config {
            path: "config.json".into(),
            message,
        };
        let Some(v) = self.rope_scaling.as_ref().filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let kind = v
            .get("type")
            .or_else(|| v.get("rope_type"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("");
        if !matches!(kind, "longrope" | "su" | "yarn") {
            return Err(Error::Unsupported(format!(
                "Phi-3 rope_scaling type `{kind}` is not supported: Phi-3 knows only `longrope` \
                 (also spelled `su` or `yarn`) with short_factor and long_factor"
            )));
        }
        let half = self.rotary_dim() / 2;
        let factors = |key: &str| -> Result<Vec<f64>> {
            let list = v
                .get(key)
                .and_then(serde_json::Value::as_array)
                .ok_or_else(|| err(format!("rope_scaling `{kind}` needs a `{key}` list")))?;
            let out: Vec<f64> = list.iter().filter_map(serde_json::Value::as_f64).collect();
            if out.len() != list.len() || out.len() != half {
                return Err(err(format!(
                    "rope_scaling `{key}` must be {half} numbers (rotary dimension / 2), got {}",
                    list.len()
                )));
            }
            if out.iter().any(|f| !f.is_finite() || *f <= 0.0) {
                return Err(err(format!(
                    "rope_scaling `{key}` must be positive numbers"
                )));
            }
            Ok(out)
        };
        Ok(Some(LongRope {
            short_factor: factors("short_factor")?,
            long_factor: factors("long_factor")?,
        }))
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
            (
                "original_max_position_embeddings",
                self.original_max_position_embeddings,
            ),
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
        if !(self.partial_rotary_factor > 0.0 && self.partial_rotary_factor <= 1.0) {
            return Err(err(format!(
                "partial_rotary_factor must be in (0, 1], got {}",
                self.partial_rotary_factor
            )));
        }
        let rot = self.rotary_dim();
        if rot == 0 || !rot.is_multiple_of(2) {
            return Err(err(format!(
                "the rotary dimension (head_dim {} × partial_rotary_factor {}) must be even and positive, got {rot}",
                self.head_dim(),
                self.partial_rotary_factor
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
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return Err(err(format!(
                "rope_theta must be > 1, got {}",
                self.rope_theta
            )));
        }
        Activation::from_name(&self.hidden_act).map_err(|e| err(e.to_string()))?;
        self.long_rope()?;
        Ok(())
    }
}
