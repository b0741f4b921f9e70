//! Qwen2 family (`model_type: qwen2`).

pub mod config;
pub mod modeling;

pub use config::Qwen2Config;
pub use modeling::{Qwen2ForCausalLM, Qwen2ForSequenceClassification, Qwen2Model};
