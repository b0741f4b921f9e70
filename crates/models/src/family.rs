//! What a model family declares about itself, in its own folder: its config type (through
//! [`FamilyConfig`]) and a `FAMILY` constant ([`Family`]) with the `model_type`s it reads,
//! its config parser, Python's `base_model_prefix`, its tied-weight aliases, its account
//! of config keys, its default LoRA targets and whether it generates text. The Auto
//! classes, the CLI, the server and the trainer ask the family instead of keeping their
//! own lists; `auto.rs` lists the families, one line each (docs/adding-a-model.md).

use std::path::Path;

use rustformers_core::config::KeyPolicy;
use rustformers_core::{PretrainedConfig, Result};

/// A family's config, as the Auto classes and the tools use it.
pub trait FamilyConfig {
    /// The keys every config has.
    fn base(&self) -> &PretrainedConfig;
    fn base_mut(&mut self) -> &mut PretrainedConfig;
    /// Checks the values (clear errors naming the key).
    fn validate(&self) -> Result<()>;
    /// config.json text as transformers 5.x writes it, with `nulls` written as `null`
    /// where the config has no value.
    fn to_json_string(&self, nulls: &[String]) -> Result<String>;
    /// Width of the hidden states.
    fn hidden_size(&self) -> usize;
    /// The longest input the position embeddings allow.
    fn max_input_positions(&self) -> usize;
}

/// Implements [`FamilyConfig`] for a family's config (a struct with a `base` field and
/// a `validate` method), naming how to read its hidden size, its longest input and what
/// it saves:
///
/// ```ignore
/// family_config!(LlamaConfig, hidden: |c| c.hidden_size,
///     positions: |c| c.max_position_embeddings, saved: |c| c.saved_form()?);
/// ```
macro_rules! family_config {
    ($ty:ty, hidden: |$h:ident| $hidden:expr, positions: |$p:ident| $positions:expr,
     saved: |$s:ident| $saved:expr) => {
        impl $crate::family::FamilyConfig for $ty {
            fn base(&self) -> &rustformers_core::PretrainedConfig {
                &self.base
            }
            fn base_mut(&mut self) -> &mut rustformers_core::PretrainedConfig {
                &mut self.base
            }
            fn validate(&self) -> rustformers_core::Result<()> {
                <$ty>::validate(self)
            }
            fn to_json_string(&self, nulls: &[String]) -> rustformers_core::Result<String> {
                let $s = self;
                rustformers_core::config::config_to_json_string_with_nulls(&$saved, nulls)
            }
            fn hidden_size(&self) -> usize {
                let $h = self;
                $hidden
            }
            fn max_input_positions(&self) -> usize {
                let $p = self;
                $positions
            }
        }
    };
}
pub(crate) use family_config;

/// A family's static facts (the part of [`Family`] that does not depend on its config
/// type).
#[derive(Debug)]
pub struct FamilyInfo {
    /// The config.json `model_type`s the family reads (RoBERTa: `roberta`, `xlm-roberta`).
    pub model_types: &'static [&'static str],
    /// Python's `base_model_prefix`: the base model's key prefix in head checkpoints.
    pub base_model_prefix: &'static str,
    /// Tied tensors `save_pretrained` writes under a second name (alias, source).
    pub tied_save_keys: &'static [(&'static str, &'static str)],
    /// The config keys without a typed field: inert (with the reason) or refused.
    pub key_policy: &'static KeyPolicy,
    /// PEFT's default LoRA targets (`TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`).
    pub lora_targets: &'static [&'static str],
    /// A causal language model (text generation, the chat server).
    pub generates: bool,
}

/// What a family folder declares: its facts and its config parser.
pub struct Family<C> {
    pub info: FamilyInfo,
    /// Parses config.json text; the `model_type` is one of `info.model_types`.
    pub parse: fn(text: &str, path: &Path, model_type: &str) -> Result<C>,
}
