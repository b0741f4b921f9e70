//! Qwen3 family (`model_type: qwen3`; Python transformers 4.51+).

pub mod config;
pub mod modeling;

pub use config::Qwen3Config;
pub use modeling::{Qwen3ForCausalLM, Qwen3Model};
