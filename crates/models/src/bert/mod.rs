//! BERT family (`model_type: bert`).

pub mod config;
pub mod modeling;

pub use config::BertConfig;
pub use modeling::{
    BertForMaskedLM, BertForQuestionAnswering, BertForSequenceClassification,
    BertForTokenClassification, BertModel,
};
