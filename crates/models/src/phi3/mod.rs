//! Phi-3 family (`model_type: phi3`).

pub mod config;
pub mod modeling;

pub use config::Phi3Config;
pub use modeling::{Phi3ForCausalLM, Phi3ForSequenceClassification, Phi3Model};

/// The family's declaration (see [`crate::family`]).
pub const FAMILY: crate::family::Family<Phi3Config> = crate::family::Family {
    info: crate::family::FamilyInfo {
        model_types: &["phi3"],
        base_model_prefix: modeling::BASE_MODEL_PREFIX,
        tied_save_keys: &[],
        key_policy: &config::KEY_POLICY,
        lora_targets: &["qkv_proj"],
        generates: true,
    },
    parse: |t, p, _| Phi3Config::from_json_str(t, p),
};
