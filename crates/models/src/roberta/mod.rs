//! RoBERTa family (`model_type: roberta` and `xlm-roberta`, which share the network;
//! only the Python class names and the `vocab_size` default differ).

pub mod config;
pub mod modeling;

pub use config::RobertaConfig;
pub use modeling::{
    RobertaForMaskedLM, RobertaForQuestionAnswering, RobertaForSequenceClassification,
    RobertaForTokenClassification, RobertaModel,
};

/// The family's declaration (see [`crate::family`]).
pub const FAMILY: crate::family::Family<RobertaConfig> = crate::family::Family {
    info: crate::family::FamilyInfo {
        model_types: &["roberta", "xlm-roberta"],
        base_model_prefix: modeling::BASE_MODEL_PREFIX,
        tied_save_keys: modeling::TIED_SAVE_KEYS,
        key_policy: &config::KEY_POLICY,
        lora_targets: &["query", "value"],
        generates: false,
    },
    parse: |t, p, model_type| match model_type {
        "xlm-roberta" => RobertaConfig::from_xlm_json_str(t, p),
        _ => RobertaConfig::from_json_str(t, p),
    },
};
