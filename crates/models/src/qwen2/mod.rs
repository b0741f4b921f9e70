//! Qwen2 family (`model_type: qwen2`).

pub mod config;
pub mod modeling;

pub use config::Qwen2Config;
pub use modeling::{Qwen2ForCausalLM, Qwen2ForSequenceClassification, Qwen2Model};

/// The family's declaration (see [`crate::family`]).
pub const FAMILY: crate::family::Family<Qwen2Config> = crate::family::Family {
    info: crate::family::FamilyInfo {
        model_types: &["qwen2"],
        base_model_prefix: modeling::BASE_MODEL_PREFIX,
        tied_save_keys: &[],
        key_policy: &config::KEY_POLICY,
        lora_targets: &["q_proj", "v_proj"],
        generates: true,
    },
    parse: |t, p, _| rustformers_core::config::parse_config(t, p),
};
