//! DistilBERT family (`model_type: distilbert`).

pub mod config;
pub mod modeling;

pub use config::DistilBertConfig;
pub use modeling::{
    DistilBertForMaskedLM, DistilBertForQuestionAnswering, DistilBertForSequenceClassification,
    DistilBertForTokenClassification, DistilBertModel,
};
