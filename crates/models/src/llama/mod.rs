//! Llama family (`model_type: llama`).

pub mod config;
pub mod modeling;

pub use config::LlamaConfig;
pub use modeling::{LlamaForCausalLM, LlamaForSequenceClassification, LlamaModel};

/// The family's declaration (see [`crate::family`]).
pub const FAMILY: crate::family::Family<LlamaConfig> = crate::family::Family {
    info: crate::family::FamilyInfo {
        model_types: &["llama"],
        base_model_prefix: modeling::BASE_MODEL_PREFIX,
        tied_save_keys: &[],
        key_policy: &config::KEY_POLICY,
        lora_targets: &["q_proj", "v_proj"],
        generates: true,
    },
    parse: |t, p, _| {
        let mut c: LlamaConfig = rustformers_core::config::parse_config(t, p)?;
        // LlamaConfig's bos 1 / eos 2 where config.json has no key.
        c.base.note_nulls(t);
        c.base.default_token_ids(None, Some(1), Some(2));
        Ok(c)
    },
};
