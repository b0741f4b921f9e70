//! rustformers core: errors, Hub resolution, configs, weights, tokenizers and the
//! layers model families share. See DESIGN.md for the layering.

pub mod chat_template;
pub mod config;
pub mod error;
pub mod gguf;
pub mod hub;
pub mod kernels;
pub mod kv_cache;
pub mod layers;
pub mod linear;
pub mod rotary;
pub mod tokenizer;
pub mod weights;

pub use candle_core;
pub use candle_nn;
pub use config::PretrainedConfig;
pub use error::{Error, Result};
pub use hub::ModelFiles;
pub use tokenizer::{
    AutoTokenizer, BatchEncoding, EncodeOptions, Padding, Side, TextInput, Truncation,
};
pub use weights::{Checkpoint, LoadReport};
