//! GPT-2 configuration, mirroring Python's `GPT2Config` (transformers 4.46,
//! models/gpt2/configuration_gpt2.py): GPT-2's own key names (`n_embd`, `n_layer`,
//! `n_head`, `n_positions`, `n_inner`, `activation_function`, `layer_norm_epsilon`),
//! which Python's `attribute_map` also exposes as `hidden_size`,
//! `num_hidden_layers`, `num_attention_heads` and `max_position_embeddings`.

use serde::{Deserialize, Serialize};

use rustformers_core::config::KeyPolicy;
use rustformers_core::layers::Activation;
use rustformers_core::{Error, PretrainedConfig, Result};

fn d_vocab() -> usize {
    50257
}
fn d_positions() -> usize {
    1024
}
fn d_embd() -> usize {
    768
}
fn d_layer() -> usize {
    12
}
fn d_head() -> usize {
    12
}
fn d_act() -> String {
    "gelu_new".into()
}
fn d_pdrop() -> f64 {
    0.1
}
fn d_eps() -> f64 {
    1e-5
}
fn d_init() -> f64 {
    0.02
}
fn d_true() -> bool {
    true
}

/// config.json keys Python's `GPT2Config` has that no typed field holds (see
/// [`KeyPolicy`]; checked against Python's keys by the unread-key test).
pub const KEY_POLICY: KeyPolicy = KeyPolicy {
    inert: &[
        (
            "summary_type",
            "read by GPT2DoubleHeadsModel's multiple-choice head only",
        ),
        (
            "summary_use_proj",
            "read by GPT2DoubleHeadsModel's multiple-choice head only",
        ),
        (
            "summary_activation",
            "read by GPT2DoubleHeadsModel's multiple-choice head only",
        ),
        (
            "summary_proj_to_labels",
            "read by GPT2DoubleHeadsModel's multiple-choice head only",
        ),
        (
            "summary_first_dropout",
            "read by GPT2DoubleHeadsModel's multiple-choice head only",
        ),
    ],
    refused: &[],
};

/// config.json of a GPT-2 checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Gpt2Config {
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    /// The number of learned positions (the context length).
    #[serde(default = "d_positions")]
    pub n_positions: usize,
    #[serde(default = "d_embd")]
    pub n_embd: usize,
    #[serde(default = "d_layer")]
    pub n_layer: usize,
    #[serde(default = "d_head")]
    pub n_head: usize,
    /// The MLP width; defaults to `4 * n_embd`.
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "d_act")]
    pub activation_function: String,
    #[serde(default = "d_pdrop")]
    pub resid_pdrop: f64,
    #[serde(default = "d_pdrop")]
    pub embd_pdrop: f64,
    #[serde(default = "d_pdrop")]
    pub attn_pdrop: f64,
    #[serde(default = "d_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "d_init")]
    pub initializer_range: f64,
    /// Divide attention scores by `sqrt(head_dim)`.
    #[serde(default = "d_true")]
    pub scale_attn_weights: bool,
    #[serde(default = "d_true")]
    pub use_cache: bool,
    /// Also divide attention scores of layer `i` by `i + 1`.
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    /// Compute attention scores in f32 (same result in f32).
    #[serde(default)]
    pub reorder_and_upcast_attn: bool,
    /// Cross-attention blocks (GPT-2 as the decoder of an encoder-decoder model).
    #[serde(default)]
    pub add_cross_attention: bool,
    #[serde(flatten)]
    pub base: PretrainedConfig,
}

impl Gpt2Config {
    /// Parses config.json, filling the token ids Python's `GPT2Config` defaults
    /// (`bos_token_id` and `eos_token_id` 50256) when the file has none.
    pub fn from_json_str(text: &str, path: &std::path::Path) -> Result<Self> {
        let mut c: Self = rustformers_core::config::parse_config(text, path)?;
        c.base.note_nulls(text);
        c.base.default_token_ids(None, Some(50256), Some(50256));
        Ok(c)
    }

    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head.max(1)
    }

    pub fn inner_dim(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    /// GPT-2 ties the LM head to `wte` unless the config says otherwise.
    pub fn tie_word_embeddings(&self) -> bool {
        self.base.tie_word_embeddings.unwrap_or(true)
    }

    pub fn validate(&self) -> Result<()> {
        let err = |message: String| Error::Config {
            path: "config.json".into(),
            message,
        };
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("n_positions", self.n_positions),
            ("n_embd", self.n_embd),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_inner", self.inner_dim()),
        ] {
            if v == 0 {
                return Err(err(format!("{name} must be positive")));
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(err(format!(
                "n_embd {} is not a multiple of n_head {}",
                self.n_embd, self.n_head
            )));
        }
        if !self.layer_norm_epsilon.is_finite() || self.layer_norm_epsilon < 0.0 {
            return Err(err("layer_norm_epsilon must not be negative".into()));
        }
        if self.add_cross_attention {
            return Err(Error::Unsupported(
                "GPT-2 with add_cross_attention (the decoder of an encoder-decoder model) is not \
                 supported; only decoder-only GPT-2 checkpoints load"
                    .into(),
            ));
        }
        Activation::from_name(&self.activation_function).map_err(|e| err(e.to_string()))?;
        Ok(())
    }
}

crate::family::family_config!(Gpt2Config, hidden: |c| c.n_embd,
    positions: |c| c.n_positions, saved: |c| c.clone());
