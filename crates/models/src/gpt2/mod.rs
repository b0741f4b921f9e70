//! GPT-2 family (`model_type: gpt2`).

pub mod config;
pub mod modeling;

pub use config::Gpt2Config;
pub use modeling::{Gpt2LMHeadModel, Gpt2Model};
