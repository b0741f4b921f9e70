//! Mistral family (`model_type: mistral`).

pub mod config;
pub mod modeling;

pub use config::MistralConfig;
pub use modeling::{MistralForCausalLM, MistralForSequenceClassification, MistralModel};

/// The family's declaration (see [`crate::family`]).
pub const FAMILY: crate::family::Family<MistralConfig> = crate::family::Family {
    info: crate::family::FamilyInfo {
        model_types: &["mistral"],
        base_model_prefix: modeling::BASE_MODEL_PREFIX,
        tied_save_keys: &[],
        key_policy: &config::KEY_POLICY,
        lora_targets: &["q_proj", "v_proj"],
        generates: true,
    },
    parse: |t, p, _| MistralConfig::from_json_str(t, p),
};
