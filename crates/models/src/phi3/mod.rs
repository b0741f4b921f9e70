//! Phi-3 family (`model_type: phi3`).

pub mod config;
pub mod modeling;

pub use config::Phi3Config;
pub use modeling::{Phi3ForCausalLM, Phi3Model};
