//! RoBERTa family (`model_type: roberta` and `xlm-roberta`, which share the network;
//! only the Python class names and the `vocab_size` default differ).

pub mod config;
pub mod modeling;

pub use config::RobertaConfig;
pub use modeling::{
    RobertaForMaskedLM, RobertaForQuestionAnswering, RobertaForSequenceClassification,
    RobertaForTokenClassification, RobertaModel,
};
