//! Loading causal LMs from GGUF files: the metadata becomes the HF config, tensors keep
//! their block format (run quantized) or are dequantized to the asked dtype (as Python's
//! `from_pretrained(..., gguf_file=...)`, which always dequantizes).

use std::sync::Arc;

use candle_core::DType;
use candle_nn::VarBuilder;

pub use rustformers_core::gguf::gguf_path;
use rustformers_core::gguf::{quantized_store, GgufBackend, GgufFile};
use rustformers_core::linear::Weights;
use rustformers_core::Result;

/// Weights of a GGUF file: quantized linear layers when `dtype` is `None`, everything
/// dequantized to `dtype` otherwise.
pub fn gguf_weights(
    g: &GgufFile,
    dtype: Option<DType>,
    device: &candle_core::Device,
) -> Result<Weights> {
    let arch = g.architecture()?;
    let tensors = Arc::new(g.load_all(device)?);
    let norm_offset = if arch == "gemma2" { 1.0 } else { 0.0 };
    let backend = GgufBackend::new(tensors.clone(), norm_offset);
    let compute = dtype.unwrap_or(DType::F32);
    let vb = VarBuilder::from_backend(Box::new(backend), compute, device.clone());
    let store = match dtype {
        None => Some(Arc::new(quantized_store(&tensors))),
        Some(_) => None,
    };
    Ok(Weights::new(vb, store))
}
