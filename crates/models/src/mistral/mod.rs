//! Mistral family (`model_type: mistral`).

pub mod config;
pub mod modeling;

pub use config::MistralConfig;
pub use modeling::{MistralForCausalLM, MistralModel};
