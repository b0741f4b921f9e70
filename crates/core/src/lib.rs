//! rustformers core: errors, Hub resolution, configs, weights, tokenizers and the
//! layers model families share. See DESIGN.md for the layering.

pub mod chat_template;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod gguf;
pub mod hub;
pub mod kernels;
pub mod kv_cache;
pub mod layers;
pub mod linear;
pub mod lora;
pub mod rng;
pub mod rope_parameters;
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

/// Helpers for the crate's tests.
#[cfg(test)]
pub(crate) mod test_util {
    use candle_core::Tensor;

    /// `max |a - b|` over every element.
    pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs())
            .and_then(|d| d.flatten_all())
            .and_then(|d| d.max(0))
            .and_then(|d| d.to_scalar::<f32>())
            .expect("tensors of one shape and dtype f32")
    }

    /// `max |t|` over every element (f32).
    pub fn max_abs(t: &Tensor) -> f32 {
        t.abs()
            .and_then(|a| a.max_all())
            .and_then(|m| m.to_scalar::<f32>())
            .expect("an f32 tensor")
    }
}
