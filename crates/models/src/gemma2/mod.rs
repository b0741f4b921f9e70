//! Gemma2 family (`model_type: gemma2`).

pub mod config;
pub mod modeling;

pub use config::Gemma2Config;
pub use modeling::{Gemma2ForCausalLM, Gemma2ForSequenceClassification, Gemma2Model};

/// The family's declaration (see [`crate::family`]).
pub const FAMILY: crate::family::Family<Gemma2Config> = crate::family::Family {
    info: crate::family::FamilyInfo {
        model_types: &["gemma2"],
        base_model_prefix: modeling::BASE_MODEL_PREFIX,
        tied_save_keys: &[],
        key_policy: &config::KEY_POLICY,
        lora_targets: &["q_proj", "v_proj"],
        generates: true,
    },
    parse: |t, p, _| Gemma2Config::from_json_str(t, p),
};
