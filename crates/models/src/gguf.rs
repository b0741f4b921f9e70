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
    let mut tensors = g.load_all(device)?;
    let norm_offset = if arch == "gemma2" { 1.0 } else { 0.0 };
    // Run quantized: the linear weights move into the store (repacked), the backend keeps
    // the rest.
    let store = match dtype {
        None => Some(Arc::new(quantized_store(&mut tensors)?)),
        Some(_) => None,
    };
    let backend = GgufBackend::new(Arc::new(tensors), norm_offset);
    let compute = dtype.unwrap_or(DType::F32);
    let vb = VarBuilder::from_backend(Box::new(backend), compute, device.clone());
    Ok(Weights::new(vb, store))
}

/// Writes a GGUF checkpoint out as a normal HF checkpoint that Python loads: config.json,
/// model.safetensors (dequantized to f32 under HF names; llama's q/k rows put back in
/// the HF order; Gemma's norms without llama.cpp's +1), generation_config.json and the
/// tokenizer files. Returns the written paths.
pub fn convert_to_safetensors(
    g: &GgufFile,
    out_dir: &std::path::Path,
) -> Result<Vec<std::path::PathBuf>> {
    use std::collections::BTreeMap;

    use rustformers_core::error::write_atomic;
    use rustformers_core::weights::save_safetensors;

    let arch = g.architecture()?;
    let config_value = g.config_json()?;
    let config = crate::auto::ModelConfig::from_json_str(&config_value.to_string(), g.path())?;
    let heads = config_value["num_attention_heads"].as_u64().unwrap_or(1) as usize;
    let kv_heads = config_value["num_key_value_heads"]
        .as_u64()
        .unwrap_or(heads as u64) as usize;
    let tied = config_value["tie_word_embeddings"]
        .as_bool()
        .unwrap_or(false);
    let device = candle_core::Device::Cpu;
    let tensors = g.load_all(&device)?;
    let mut dense: BTreeMap<String, candle_core::Tensor> = BTreeMap::new();
    for (name, q) in tensors.iter() {
        if tied && name == "lm_head.weight" {
            continue;
        }
        let mut t = q.dequantize(&device)?;
        if arch == "gemma2" && name.ends_with("norm.weight") {
            t = (t - 1.0)?;
        }
        if arch == "llama"
            && (name.ends_with("self_attn.q_proj.weight")
                || name.ends_with("self_attn.k_proj.weight"))
        {
            let n = if name.ends_with("q_proj.weight") {
                heads
            } else {
                kv_heads
            };
            t = unpermute_rows(&t, n)?;
        }
        dense.insert(name.clone(), t.contiguous()?);
    }
    std::fs::create_dir_all(out_dir).map_err(|e| rustformers_core::Error::io(out_dir, e))?;
    let mut written = Vec::new();
    let p = out_dir.join("model.safetensors");
    save_safetensors(&dense, &p)?;
    written.push(p);
    let mut cfg = config.clone();
    cfg.base_mut().set_saved_dtype("float32");
    let p = out_dir.join("config.json");
    write_atomic(&p, cfg.to_json_string()?.as_bytes())?;
    written.push(p);
    let mut gen = serde_json::Map::new();
    for key in ["bos_token_id", "eos_token_id", "pad_token_id"] {
        if let Some(v) = config_value.get(key) {
            gen.insert(key.into(), v.clone());
        }
    }
    let p = out_dir.join("generation_config.json");
    let text = serde_json::to_string_pretty(&serde_json::Value::Object(gen)).map_err(|e| {
        rustformers_core::Error::Json {
            context: "generation_config.json".into(),
            source: e,
        }
    })?;
    write_atomic(&p, format!("{text}\n").as_bytes())?;
    written.push(p);
    let tok = rustformers_core::AutoTokenizer::from_gguf(g)?;
    written.extend(tok.save_pretrained(out_dir)?);
    Ok(written)
}

/// Undoes llama.cpp's q/k row permutation (per head, rows `[0, h/2, 1, h/2 + 1, ...]`
/// back to `[0, 1, ...]`), as transformers' `reverse_permute_weights`.
fn unpermute_rows(
    w: &candle_core::Tensor,
    heads: usize,
) -> candle_core::Result<candle_core::Tensor> {
    let (rows, cols) = w.dims2()?;
    if heads == 0 || rows % (2 * heads) != 0 {
        candle_core::bail!("cannot split {rows} rows into {heads} rotary heads");
    }
    let half = rows / heads / 2;
    w.reshape((heads, half, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))
}
