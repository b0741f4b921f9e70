//! Llama family (`model_type: llama`).

pub mod config;
pub mod modeling;

pub use config::LlamaConfig;
pub use modeling::{LlamaForCausalLM, LlamaForSequenceClassification, LlamaModel};
