//! Phi-3 configuration, mirroring Python's `Phi3Config` (transformers 5.25,
//! models/phi3/configuration_phi3.py). Differs from Llama's: `original_max_position_embeddings`
//! at the top level (default 4096; it wins over the one in `rope_parameters`),
//! `sliding_window` (default none), dropout rates, RoPE of type `default` or `longrope`
//! only (the legacy `su` and `yarn` names mean `longrope`, as Python's
//! `convert_rope_params_to_dict` rewrites them), Phi-3's token ids, and
//! `partial_rotary_factor` (Phi-4-mini: 0.75; 1.0 by default).

use serde::{Deserialize, Serialize};

use rustformers_core::config::KeyPolicy;
use rustformers_core::layers::Activation;
use rustformers_core::rope_parameters::{RopeContext, RopeKeys, RopeParameters};
use rustformers_core::rotary::RopeScaling;
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

/// config.json keys Python's `Phi3Config` has that no typed field holds (see
/// [`KeyPolicy`]; checked against Python's keys by the unread-key test).
pub const KEY_POLICY: KeyPolicy = KeyPolicy::NONE;

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
    #[serde(default = "d_init")]
    pub initializer_range: f64,
    #[serde(default = "d_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "d_true")]
    pub use_cache: bool,
    /// `rope_parameters` (5.x) or `rope_theta` / `rope_scaling` / `partial_rotary_factor`
    /// (4.x), and the top-level `original_max_position_embeddings`, read as 5.25 does.
    #[serde(flatten)]
    pub rope: RopeKeys,
    /// Keys at cache index `j` are visible to the query at index `i` when
    /// `i - window < j <= i`; none by default.
    #[serde(default)]
    pub sliding_window: Option<usize>,
    #[serde(flatten)]
    pub base: PretrainedConfig,
}

impl Phi3Config {
    /// Parses config.json, filling the token ids Python's `Phi3Config` defaults
    /// (`bos_token_id` 1, `eos_token_id` and `pad_token_id` 32000) when the file has none.
    pub fn from_json_str(text: &str, path: &std::path::Path) -> Result<Self> {
        let mut c: Self = rustformers_core::config::parse_config(text, path)?;
        c.base.note_nulls(text);
        c.base.default_token_ids(Some(32000), Some(1), Some(32000));
        c.rope.original_max_position_embeddings.get_or_insert(4096);
        Ok(c)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    pub fn num_key_value_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// The pretraining length (Python's default 4096).
    pub fn original_max_position_embeddings(&self) -> usize {
        self.rope.original_max_position_embeddings.unwrap_or(4096)
    }

    fn rope_context(&self) -> RopeContext<'static> {
        RopeContext {
            default_theta: 10000.0,
            max_position_embeddings: self.max_position_embeddings,
            layer_types: None,
        }
    }

    /// The resolved RoPE parameters: `default` or `longrope` (with its
    /// `original_max_position_embeddings` from the top-level key), as 5.25's
    /// `Phi3Config.validate_rope` allows; any other type is refused.
    pub fn rope(&self) -> Result<RopeParameters> {
        let mut keys = self.rope.clone();
        keys.original_max_position_embeddings = Some(self.original_max_position_embeddings());
        // The legacy names of longrope (`convert_rope_params_to_dict`).
        for dict in [&mut keys.rope_scaling, &mut keys.rope_parameters]
            .into_iter()
            .flatten()
        {
            if let Some(o) = dict.as_object_mut() {
                let kind = o
                    .get("rope_type")
                    .or_else(|| o.get("type"))
                    .and_then(|v| v.as_str());
                if matches!(kind, Some("su" | "yarn")) {
                    o.remove("type");
                    o.insert("rope_type".into(), "longrope".into());
                }
            }
        }
        let p = keys.uniform(&self.rope_context())?;
        if !matches!(
            p.scaling,
            RopeScaling::Default | RopeScaling::Longrope { .. }
        ) {
            return Err(Error::Unsupported(format!(
                "Phi-3 rope_type `{}` is not supported: Phi-3 knows only `default` and \
                 `longrope` (also spelled `su` or `yarn`) with short_factor and long_factor",
                p.rope_type()
            )));
        }
        Ok(p)
    }

    /// This config as transformers 5.x saves it (`rope_parameters`).
    pub fn saved_form(&self) -> Result<Self> {
        let mut c = self.clone();
        let mut keys = self.rope.clone();
        let mut saved = self.rope()?.saved;
        // Phi3Config always records the rotated share.
        saved.entry("partial_rotary_factor").or_insert(1.0.into());
        keys.rope_parameters = Some(serde_json::Value::Object(saved));
        keys.rope_scaling = None;
        keys.partial_rotary_factor = None;
        c.rope = keys.to_saved_form(&self.rope_context())?;
        c.rope.original_max_position_embeddings = Some(self.original_max_position_embeddings());
        c.num_key_value_heads = Some(self.num_key_value_heads());
        Ok(c)
    }

    /// Phi-3's default is untied input/output embeddings.
    pub fn tie_word_embeddings(&self) -> bool {
        self.base.tie_word_embeddings.unwrap_or(false)
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
                self.original_max_position_embeddings(),
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
        let rope = self.rope()?;
        // Builds the table: checks the longrope factor lists against the rotary size.
        rustformers_core::rotary::RotaryEmbedding::from_parameters(self.head_dim(), &rope)?;
        let rot = rope.rotary_dim(self.head_dim());
        if rot == 0 || !rot.is_multiple_of(2) {
            return Err(err(format!(
                "the rotary dimension (head_dim {} × partial_rotary_factor {}) must be even and positive, got {rot}",
                self.head_dim(),
                rope.partial_rotary_factor.unwrap_or(1.0)
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
        Activation::from_name(&self.hidden_act).map_err(|e| err(e.to_string()))?;
        Ok(())
    }
}

crate::family::family_config!(Phi3Config, hidden: |c| c.hidden_size,
    positions: |c| c.max_position_embeddings, saved: |c| c.saved_form()?);
