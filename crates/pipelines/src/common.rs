//! Helpers the task pipelines share: tensors from encodings, softmax/sigmoid as Python's
//! pipelines compute them (f32, max-shifted), JSON numbers, batching.

use candle_core::{Device, Tensor};
use serde_json::Value;

use rustformers_core::{BatchEncoding, Error, Result};

/// `[batch, seq]` u32 tensors of ids, attention mask and token types.
pub struct EncodedTensors {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    pub token_type_ids: Tensor,
}

impl EncodedTensors {
    pub fn inputs(&self) -> rustformers_models::EncoderInputs<'_> {
        rustformers_models::EncoderInputs {
            input_ids: &self.input_ids,
            attention_mask: Some(&self.attention_mask),
            token_type_ids: Some(&self.token_type_ids),
        }
    }
}

fn matrix(rows: &[Vec<u32>], device: &Device) -> Result<Tensor> {
    let b = rows.len();
    let s = rows.first().map(Vec::len).unwrap_or(0);
    if rows.iter().any(|r| r.len() != s) {
        return Err(Error::invalid(
            "rows of a batch must be padded to one length",
        ));
    }
    let flat: Vec<u32> = rows.iter().flatten().copied().collect();
    Ok(Tensor::from_vec(flat, (b, s), device)?)
}

/// Builds model input tensors from a padded batch encoding.
pub fn to_tensors(enc: &BatchEncoding, device: &Device) -> Result<EncodedTensors> {
    if enc.input_ids.iter().any(Vec::is_empty) {
        return Err(Error::invalid(
            "an input produced no tokens (empty text with no special tokens)",
        ));
    }
    Ok(EncodedTensors {
        input_ids: matrix(&enc.input_ids, device)?,
        attention_mask: matrix(&enc.attention_mask, device)?,
        token_type_ids: matrix(&enc.token_type_ids, device)?,
    })
}

/// Builds model input tensors from rows of different lengths, padding on the right
/// (ids with `pad_id`, mask and token types with 0).
pub fn padded_tensors(enc: &BatchEncoding, pad_id: u32, device: &Device) -> Result<EncodedTensors> {
    let len = enc.input_ids.iter().map(Vec::len).max().unwrap_or(0);
    let pad = |rows: &[Vec<u32>], v: u32| -> Vec<Vec<u32>> {
        rows.iter()
            .map(|r| {
                let mut r = r.clone();
                r.resize(len, v);
                r
            })
            .collect()
    };
    let padded = BatchEncoding {
        input_ids: pad(&enc.input_ids, pad_id),
        attention_mask: pad(&enc.attention_mask, 0),
        token_type_ids: pad(&enc.token_type_ids, 0),
        ..Default::default()
    };
    to_tensors(&padded, device)
}

/// Softmax over a vector, max-shifted, in f32 (numpy's arithmetic in Python's pipelines).
pub fn softmax(x: &[f32]) -> Vec<f32> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = x.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

/// Elementwise logistic sigmoid, as `1 / (1 + exp(-x))`.
pub fn sigmoid(x: &[f32]) -> Vec<f32> {
    x.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect()
}

/// A JSON number from an f32, with the exact value Python's `float(np.float32(x))` has.
pub fn num(x: f32) -> Value {
    serde_json::Number::from_f64(x as f64)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// Indices sorted by descending value; ties keep index order.
pub fn argsort_desc(x: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|a, b| {
        x[*b]
            .partial_cmp(&x[*a])
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    idx
}

/// Index of the largest value (the first on ties, as numpy's argmax).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best
}

/// Reads a text input: a JSON string.
pub fn text_of<'a>(task: &str, v: &'a Value) -> Result<&'a str> {
    v.as_str()
        .ok_or_else(|| Error::invalid(format!("{task}: each input must be a string, got {v}")))
}

/// Validates `batch_size`.
pub fn batch_size(v: Option<usize>) -> Result<usize> {
    match v {
        None => Ok(1),
        Some(0) => Err(Error::invalid("batch_size must be at least 1")),
        Some(n) => Ok(n),
    }
}

/// Row `i` of a `[batch, ...]` tensor as a flat f32 vector.
pub fn row_f32(t: &Tensor, i: usize) -> Result<Vec<f32>> {
    Ok(t.get(i)?
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

/// Row `i` of a `[batch, seq, n]` tensor as vectors of `n` f32 for the real (unpadded)
/// positions given by the row's attention mask.
pub fn row_matrix(t: &Tensor, i: usize, mask: &[u32]) -> Result<Vec<Vec<f32>>> {
    let (start, len) = real_range(mask);
    let r = t.get(i)?.to_dtype(candle_core::DType::F32)?;
    Ok(r.narrow(0, start, len)?.to_vec2::<f32>()?)
}

/// Row `i` of a `[batch, seq]` tensor for the real positions.
pub fn row_vector(t: &Tensor, i: usize, mask: &[u32]) -> Result<Vec<f32>> {
    let (start, len) = real_range(mask);
    let r = t.get(i)?.to_dtype(candle_core::DType::F32)?;
    Ok(r.narrow(0, start, len)?.to_vec1::<f32>()?)
}

/// The real positions of a padded row of any per-token list.
pub fn unpad<T: Clone>(row: &[T], mask: &[u32]) -> Vec<T> {
    let (start, len) = real_range(mask);
    row[start..start + len].to_vec()
}

/// Number of real (non-padding) positions and their range in a padded row.
pub fn real_range(mask: &[u32]) -> (usize, usize) {
    let start = mask.iter().position(|m| *m != 0).unwrap_or(0);
    let len = mask.iter().filter(|m| **m != 0).count();
    (start, len)
}
