//! DistilBERT family (`model_type: distilbert`).

pub mod config;
pub mod modeling;

pub use config::DistilBertConfig;
pub use modeling::{
    DistilBertForMaskedLM, DistilBertForQuestionAnswering, DistilBertForSequenceClassification,
    DistilBertForTokenClassification, DistilBertModel,
};

/// The family's declaration (see [`crate::family`]).
pub const FAMILY: crate::family::Family<DistilBertConfig> = crate::family::Family {
    info: crate::family::FamilyInfo {
        model_types: &["distilbert"],
        base_model_prefix: modeling::BASE_MODEL_PREFIX,
        tied_save_keys: &[],
        key_policy: &config::KEY_POLICY,
        lora_targets: &["q_lin", "v_lin"],
        generates: false,
    },
    parse: |t, p, _| DistilBertConfig::from_json_str(t, p),
};
