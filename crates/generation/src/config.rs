//! `GenerationConfig`: generation_config.json keys with Python's defaults
//! (transformers 4.46, generation/configuration_utils.py), per-call overrides, and
//! `validate()` with clear errors.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use rustformers_core::error::read_to_string;
use rustformers_core::{Error, ModelFiles, Result};

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

fn d_max_length() -> usize {
    20
}
fn d_one() -> f64 {
    1.0
}
fn d_top_k() -> usize {
    50
}
fn d_beams() -> usize {
    1
}
fn d_false() -> Value {
    Value::Bool(false)
}
fn d_returns() -> usize {
    1
}

/// One id or several (`eos_token_id` may be either in JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(i64),
    Many(Vec<i64>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            Self::One(i) => u32::try_from(*i).into_iter().collect(),
            Self::Many(v) => v.iter().filter_map(|i| u32::try_from(*i).ok()).collect(),
        }
    }
}

/// When beam search stops (`early_stopping`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlyStopping {
    /// As soon as `num_beams` hypotheses are finished.
    True,
    /// When the best running beam, scored at the current length, cannot beat the worst
    /// finished hypothesis (a heuristic).
    False,
    /// Only when no running beam can beat the worst finished hypothesis at any length
    /// (canonical beam search).
    Never,
}

/// Decoding options, named as in Python.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationConfig {
    #[serde(default = "d_max_length")]
    pub max_length: usize,
    #[serde(default)]
    pub max_new_tokens: Option<usize>,
    #[serde(default)]
    pub min_length: usize,
    #[serde(default)]
    pub min_new_tokens: Option<usize>,
    #[serde(default)]
    pub do_sample: bool,
    #[serde(default = "d_beams")]
    pub num_beams: usize,
    #[serde(default = "d_one")]
    pub temperature: f64,
    #[serde(default = "d_top_k")]
    pub top_k: usize,
    #[serde(default = "d_one")]
    pub top_p: f64,
    #[serde(default)]
    pub min_p: Option<f64>,
    #[serde(default = "d_one")]
    pub typical_p: f64,
    /// Epsilon sampling: 0 (off) or in (0, 1).
    #[serde(default)]
    pub epsilon_cutoff: f64,
    /// Eta sampling: 0 (off) or in (0, 1).
    #[serde(default)]
    pub eta_cutoff: f64,
    #[serde(default = "d_one")]
    pub repetition_penalty: f64,
    /// OpenAI's presence penalty (rustformers' extension, for the server): each token
    /// generated so far loses this much score. Not written to generation_config.json
    /// when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub presence_penalty: f64,
    /// OpenAI's frequency penalty: each token loses this much per time generated.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub frequency_penalty: f64,
    #[serde(default)]
    pub no_repeat_ngram_size: usize,
    #[serde(default)]
    pub bad_words_ids: Option<Vec<Vec<u32>>>,
    /// Tokens never generated.
    #[serde(default)]
    pub suppress_tokens: Option<Vec<u32>>,
    /// Tokens not generated as the first new token.
    #[serde(default)]
    pub begin_suppress_tokens: Option<Vec<u32>>,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub pad_token_id: Option<TokenIds>,
    #[serde(default)]
    pub bos_token_id: Option<TokenIds>,
    #[serde(default = "d_one")]
    pub length_penalty: f64,
    /// `true`, `false` or `"never"`, as in Python.
    #[serde(default = "d_false")]
    pub early_stopping: Value,
    #[serde(default = "d_returns")]
    pub num_return_sequences: usize,
    #[serde(default)]
    pub stop_strings: Option<Vec<String>>,
    /// Seed of the sampling RNG (rustformers; Python seeds torch globally).
    #[serde(default)]
    pub seed: Option<u64>,
    /// Keys no typed field claims (kept on save).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

/// Python's defaults (the same values the serde defaults give for `{}`).
impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_length: 20,
            max_new_tokens: None,
            min_length: 0,
            min_new_tokens: None,
            do_sample: false,
            num_beams: 1,
            temperature: 1.0,
            top_k: 50,
            top_p: 1.0,
            min_p: None,
            typical_p: 1.0,
            epsilon_cutoff: 0.0,
            eta_cutoff: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            no_repeat_ngram_size: 0,
            bad_words_ids: None,
            suppress_tokens: None,
            begin_suppress_tokens: None,
            eos_token_id: None,
            pad_token_id: None,
            bos_token_id: None,
            length_penalty: 1.0,
            early_stopping: Value::Bool(false),
            num_return_sequences: 1,
            stop_strings: None,
            seed: None,
            extra: serde_json::Map::new(),
        }
    }
}

impl GenerationConfig {
    /// The option names (Python's), as generation_config.json and the per-call
    /// overrides spell them.
    pub fn known_keys() -> Vec<String> {
        let mut known: Vec<String> = match serde_json::to_value(Self::default()) {
            Ok(Value::Object(o)) => o.keys().cloned().collect(),
            _ => Vec::new(),
        };
        // Left out of the JSON while 0 (generation_config.json files stay Python's).
        known.extend(["presence_penalty".into(), "frequency_penalty".into()]);
        known
    }

    /// The model's generation defaults, as transformers 5.25 loads them: its
    /// generation_config.json alone when it has one; else the generation options of
    /// config.json as written (bos/eos/pad ids, and `max_length`, `do_sample`, ... that
    /// older checkpoints keep there; not the config class's defaults). Only a model
    /// without config.json (GGUF, whose config is built from its metadata) takes the
    /// model config's ids.
    pub fn from_files(
        files: &ModelFiles,
        model_config: &rustformers_core::PretrainedConfig,
    ) -> Result<Self> {
        if let Some(p) = files.get("generation_config.json")? {
            return Self::from_json_str(&read_to_string(&p)?, &p);
        }
        if let Some(p) = files.get("config.json")? {
            let raw = rustformers_core::error::read_json(&p)?;
            let known = Self::known_keys();
            let options: serde_json::Map<String, Value> = raw
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, v)| !v.is_null() && known.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let mut cfg = Self::default()
                .with_overrides(&options)
                .map_err(|e| Error::Config {
                    path: p.display().to_string(),
                    message: format!("generation options: {e}"),
                })?;
            // Options that change the tokens but are not implemented: kept, so that
            // `validate` refuses them by name.
            for (key, _) in REFUSED_KEYS {
                if let Some(v) = raw.get(*key).filter(|v| !v.is_null()) {
                    cfg.extra.insert(key.to_string(), v.clone());
                }
            }
            return Ok(cfg);
        }
        let to_ids = |v: &Option<Value>| -> Option<TokenIds> {
            v.as_ref()
                .and_then(|v| serde_json::from_value(v.clone()).ok())
        };
        Ok(Self {
            eos_token_id: to_ids(&model_config.eos_token_id),
            bos_token_id: to_ids(&model_config.bos_token_id),
            pad_token_id: model_config.pad_token_id.map(TokenIds::One),
            ..Self::default()
        })
    }

    /// Parses generation_config.json text.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        rustformers_core::config::parse_config(text, path)
    }

    /// Applies per-call overrides given with Python's names (`max_new_tokens`, ...); a
    /// name that is not a generation option is an error listing the known ones.
    pub fn with_overrides(&self, overrides: &serde_json::Map<String, Value>) -> Result<Self> {
        let mut v = serde_json::to_value(self).map_err(|e| Error::Json {
            context: "generation config".into(),
            source: e,
        })?;
        let known = Self::known_keys();
        if let Some(bad) = overrides.keys().find(|k| !known.contains(k)) {
            return Err(Error::invalid(format!(
                "unknown generation option `{bad}`; known: {}",
                known.join(", ")
            )));
        }
        if let Value::Object(o) = &mut v {
            for (k, val) in overrides {
                o.insert(k.clone(), val.clone());
            }
        }
        let cfg: Self = rustformers_core::config::parse_config(
            &v.to_string(),
            Path::new("generation options"),
        )?;
        Ok(cfg)
    }

    /// The eos ids (possibly several).
    pub fn eos_ids(&self) -> Vec<u32> {
        self.eos_token_id
            .as_ref()
            .map(TokenIds::to_vec)
            .unwrap_or_default()
    }

    /// The pad id: `pad_token_id`, else the first eos id, as Python falls back.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad_token_id
            .as_ref()
            .and_then(|p| p.to_vec().first().copied())
            .or_else(|| self.eos_ids().first().copied())
    }

    /// Tokens to generate for a prompt of `prompt_len`: `max_new_tokens`, else
    /// `max_length - prompt_len`.
    pub fn new_tokens_for(&self, prompt_len: usize) -> usize {
        self.max_new_tokens
            .unwrap_or_else(|| self.max_length.saturating_sub(prompt_len))
    }

    /// Tokens that must be generated before eos is allowed.
    pub fn min_new_tokens_for(&self, prompt_len: usize) -> usize {
        self.min_new_tokens
            .unwrap_or_else(|| self.min_length.saturating_sub(prompt_len))
    }

    /// `early_stopping` as a mode: `true`, `false` or `"never"`.
    pub fn early_stopping_mode(&self) -> Result<EarlyStopping> {
        match &self.early_stopping {
            Value::Bool(true) => Ok(EarlyStopping::True),
            Value::Bool(false) | Value::Null => Ok(EarlyStopping::False),
            Value::String(s) if s == "never" => Ok(EarlyStopping::Never),
            other => Err(Error::invalid(format!(
                "early_stopping must be true, false or \"never\", got {other}"
            ))),
        }
    }

    /// Checks values, with one clear message per problem.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::invalid(m));
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return bad(format!("temperature must be > 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if let Some(m) = self.min_p {
            if !(0.0..=1.0).contains(&m) {
                return bad(format!("min_p must be in [0, 1], got {m}"));
            }
        }
        if !(self.typical_p > 0.0 && self.typical_p <= 1.0) {
            return bad(format!(
                "typical_p must be in (0, 1], got {}",
                self.typical_p
            ));
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return bad(format!("{name} must lie in [-2, 2], got {v}"));
            }
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(format!(
                "repetition_penalty must be > 0, got {}",
                self.repetition_penalty
            ));
        }
        if self.num_beams == 0 {
            return bad("num_beams must be at least 1".into());
        }
        if self.num_return_sequences == 0 {
            return bad("num_return_sequences must be at least 1".into());
        }
        if !self.do_sample && self.num_return_sequences > self.num_beams {
            return bad(format!(
                "num_return_sequences ({}) cannot exceed num_beams ({}) without sampling",
                self.num_return_sequences, self.num_beams
            ));
        }
        if self.max_new_tokens == Some(0) {
            return bad("max_new_tokens must be at least 1".into());
        }
        if let (Some(min), Some(max)) = (self.min_new_tokens, self.max_new_tokens) {
            if min > max {
                return bad(format!(
                    "min_new_tokens ({min}) is larger than max_new_tokens ({max})"
                ));
            }
        }
        for (name, v) in [
            ("epsilon_cutoff", self.epsilon_cutoff),
            ("eta_cutoff", self.eta_cutoff),
        ] {
            if !(0.0..1.0).contains(&v) {
                return bad(format!("{name} must be in [0, 1), got {v}"));
            }
        }
        if !self.length_penalty.is_finite() {
            return bad(format!(
                "length_penalty must be finite, got {}",
                self.length_penalty
            ));
        }
        self.early_stopping_mode()?;
        if let Some(stops) = &self.stop_strings {
            if stops.iter().any(String::is_empty) {
                return bad("stop_strings cannot contain an empty string".into());
            }
        }
        KEY_POLICY.check(
            |k| self.extra.get(k),
            "generation option",
            " (it would change the tokens); remove it from generation_config.json or the call",
        )?;
        Ok(())
    }
}

/// Keys of Python's `GenerationConfig` (5.25) without a typed field here that cannot
/// change the tokens generated (speed, extra outputs, assisted decoding, encoder-decoder
/// models).
const INERT_KEYS: &[(&str, &str)] = &[
    ("transformers_version", "the version that wrote the file"),
    (
        "_from_model_config",
        "a marker of how Python built the config",
    ),
    ("use_cache", "whether a KV cache is kept: the same tokens"),
    (
        "cache_implementation",
        "the kind of KV cache: the same tokens",
    ),
    ("cache_config", "the KV cache's settings: the same tokens"),
    ("max_cache_len", "the KV cache's size: the same tokens"),
    ("compile_config", "torch.compile settings"),
    ("disable_compile", "torch.compile settings"),
    ("output_attentions", "extra outputs"),
    ("output_hidden_states", "extra outputs"),
    ("output_scores", "extra outputs"),
    ("output_logits", "extra outputs"),
    ("return_dict_in_generate", "the container of the outputs"),
    (
        "is_assistant",
        "assisted decoding (an assistant model is passed to generate)",
    ),
    (
        "num_assistant_tokens",
        "assisted decoding: greedy tokens do not change",
    ),
    (
        "num_assistant_tokens_schedule",
        "assisted decoding: greedy tokens do not change",
    ),
    (
        "assistant_confidence_threshold",
        "assisted decoding: greedy tokens do not change",
    ),
    (
        "assistant_lookbehind",
        "assisted decoding across tokenizers",
    ),
    ("target_lookbehind", "assisted decoding across tokenizers"),
    (
        "assistant_early_exit",
        "assisted decoding (self-speculative)",
    ),
    ("assistant_ensemble_weight", "assisted decoding"),
    (
        "prompt_lookup_num_tokens",
        "prompt-lookup decoding: greedy tokens do not change",
    ),
    (
        "max_matching_ngram_size",
        "prompt-lookup decoding: greedy tokens do not change",
    ),
    (
        "speculation_type",
        "speculative decoding: greedy tokens do not change",
    ),
    (
        "use_mtp",
        "multi-token-prediction speculation: greedy tokens do not change",
    ),
    ("prefill_chunk_size", "chunked prefill: the same tokens"),
    (
        "continuous_batching_config",
        "the serving engine's settings",
    ),
    ("decoder_start_token_id", "encoder-decoder models only"),
    (
        "encoder_no_repeat_ngram_size",
        "encoder-decoder models only (Python skips it otherwise)",
    ),
];

/// Keys of Python's `GenerationConfig` that change the tokens and are not implemented
/// here, with the value that does nothing: `validate` refuses them by name otherwise.
const REFUSED_KEYS: &[(&str, &str)] = &[
    ("forced_bos_token_id", "null"),
    ("forced_eos_token_id", "null"),
    ("exponential_decay_length_penalty", "null"),
    ("encoder_repetition_penalty", "1.0"),
    ("sequence_bias", "null"),
    ("guidance_scale", "1.0"),
    ("renormalize_logits", "false"),
    ("remove_invalid_values", "false"),
    ("num_beam_groups", "1"),
    ("diversity_penalty", "0.0"),
    ("penalty_alpha", "null"),
    ("dola_layers", "null"),
    ("watermarking_config", "null"),
    ("token_healing", "false"),
    ("constraints", "null"),
    ("force_words_ids", "null"),
    ("max_time", "null"),
    ("top_h", "null"),
    ("low_memory", "false"),
];

/// The generation options without a typed field: inert ones and refused ones.
pub const KEY_POLICY: rustformers_core::config::KeyPolicy = rustformers_core::config::KeyPolicy {
    inert: INERT_KEYS,
    refused: REFUSED_KEYS,
};

/// The keys of a model's config.json that nothing reads: neither the model (its typed
/// fields and [`rustformers_core::config::KeyPolicy`]) nor generation (the options
/// `from_files` takes from config.json). What `rustformers inspect` lists.
pub fn unread_config_keys(config: &rustformers_models::ModelConfig) -> Vec<String> {
    let generation = GenerationConfig::known_keys();
    config
        .unread_keys()
        .into_iter()
        .filter(|k| !generation.contains(k))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c = GenerationConfig::default();
        let parsed: GenerationConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, parsed);
        assert_eq!(c.max_length, 20);
        assert_eq!(c.top_k, 50);
        let mut o = serde_json::Map::new();
        o.insert("max_new_tokens".into(), 5.into());
        o.insert("eos_token_id".into(), serde_json::json!([1, 2]));
        let c = c.with_overrides(&o).unwrap();
        assert_eq!(c.max_new_tokens, Some(5));
        assert_eq!(c.eos_ids(), vec![1, 2]);
        assert_eq!(c.new_tokens_for(100), 5);
        let mut typo = serde_json::Map::new();
        typo.insert("max_new_tokenz".into(), 5.into());
        let err = GenerationConfig::default()
            .with_overrides(&typo)
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_new_tokenz"), "{err}");
        o.insert("temperature".into(), "hot".into());
        let err = GenerationConfig::default()
            .with_overrides(&o)
            .unwrap_err()
            .to_string();
        assert!(err.contains("temperature"), "{err}");
    }

    #[test]
    fn validation() {
        assert!(GenerationConfig::default().validate().is_ok());
        let c = GenerationConfig {
            top_p: 0.0,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("top_p"));
        let c = GenerationConfig {
            num_return_sequences: 2,
            ..Default::default()
        };
        assert!(c.validate().is_err());
        let c = GenerationConfig {
            temperature: 0.0,
            ..Default::default()
        };
        assert!(c.validate().is_err());
    }
}
