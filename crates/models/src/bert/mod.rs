//! BERT family (`model_type: bert`).

pub mod config;
pub mod modeling;

pub use config::BertConfig;
pub use modeling::{
    BertForMaskedLM, BertForQuestionAnswering, BertForSequenceClassification,
    BertForTokenClassification, BertModel,
};

/// The family's declaration (see [`crate::family`]).
pub const FAMILY: crate::family::Family<BertConfig> = crate::family::Family {
    info: crate::family::FamilyInfo {
        model_types: &["bert"],
        base_model_prefix: modeling::BASE_MODEL_PREFIX,
        tied_save_keys: &[],
        key_policy: &config::KEY_POLICY,
        lora_targets: &["query", "value"],
        generates: false,
    },
    parse: |t, p, _| {
        let mut c: BertConfig = rustformers_core::config::parse_config(t, p)?;
        // BertConfig's pad 0 where config.json has no key.
        c.base.note_nulls(t);
        c.base.default_token_ids(Some(0), None, None);
        Ok(c)
    },
};
