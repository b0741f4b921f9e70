//! Gemma2 family (`model_type: gemma2`).

pub mod config;
pub mod modeling;

pub use config::Gemma2Config;
pub use modeling::{Gemma2ForCausalLM, Gemma2Model};
