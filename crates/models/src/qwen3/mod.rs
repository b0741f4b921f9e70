//! Qwen3 family (`model_type: qwen3`; Python transformers 4.51+).

pub mod config;
pub mod modeling;

pub use config::Qwen3Config;
pub use modeling::{Qwen3ForCausalLM, Qwen3ForSequenceClassification, Qwen3Model};

/// The family's declaration (see [`crate::family`]).
pub const FAMILY: crate::family::Family<Qwen3Config> = crate::family::Family {
    info: crate::family::FamilyInfo {
        model_types: &["qwen3"],
        base_model_prefix: modeling::BASE_MODEL_PREFIX,
        tied_save_keys: &[],
        key_policy: &config::KEY_POLICY,
        lora_targets: &["q_proj", "v_proj"],
        generates: true,
    },
    parse: |t, p, _| rustformers_core::config::parse_config(t, p),
};
