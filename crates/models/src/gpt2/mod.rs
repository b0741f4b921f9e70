//! GPT-2 family (`model_type: gpt2`).

pub mod config;
pub mod modeling;

pub use config::Gpt2Config;
pub use modeling::{Gpt2ForSequenceClassification, Gpt2LMHeadModel, Gpt2Model};

/// The family's declaration (see [`crate::family`]).
pub const FAMILY: crate::family::Family<Gpt2Config> = crate::family::Family {
    info: crate::family::FamilyInfo {
        model_types: &["gpt2"],
        base_model_prefix: modeling::BASE_MODEL_PREFIX,
        tied_save_keys: &[],
        key_policy: &config::KEY_POLICY,
        lora_targets: &["c_attn"],
        generates: true,
    },
    parse: |t, p, _| Gpt2Config::from_json_str(t, p),
};
