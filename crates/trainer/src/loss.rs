//! Task losses as Python's model heads compute them when given `labels`.

use candle_core::{DType, Tensor, D};

/// Mean cross-entropy of `logits` `[n, classes]` against `labels` `[n]` (u32), leaving
/// out positions labelled `ignore` (Python's `-100`, passed here as `u32::MAX`).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> candle_core::Result<Tensor> {
    let logits = logits.to_dtype(DType::F32)?;
    let n = logits.dim(0)?;
    let labels_v = labels.to_vec1::<u32>()?;
    let keep: Vec<u32> = (0..n as u32)
        .filter(|i| labels_v[*i as usize] != IGNORE)
        .collect();
    if keep.is_empty() {
        // Python returns NaN for a batch with every label ignored; 0 keeps training going.
        return Tensor::zeros((), DType::F32, logits.device());
    }
    let (logits, labels) = if keep.len() == n {
        (logits, labels.clone())
    } else {
        let idx = Tensor::new(keep.as_slice(), logits.device())?;
        (logits.index_select(&idx, 0)?, labels.index_select(&idx, 0)?)
    };
    let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let picked = log_probs.gather(&labels.unsqueeze(1)?, 1)?;
    picked.mean_all()?.neg()
}

/// The label value left out of the loss (Python's `-100`).
pub const IGNORE: u32 = u32::MAX;

/// Mean squared error (a one-label head: regression).
pub fn mse(pred: &Tensor, target: &Tensor) -> candle_core::Result<Tensor> {
    (pred.flatten_all()? - target.flatten_all()?)?
        .sqr()?
        .mean_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn cross_entropy_matches_its_definition() {
        let logits = Tensor::new(
            &[[1f32, 2.0, 0.5], [0.1, -1.0, 3.0], [2.0, 2.0, 2.0]],
            &Device::Cpu,
        )
        .unwrap();
        let labels = Tensor::new(&[1u32, 2, IGNORE], &Device::Cpu).unwrap();
        let got = cross_entropy(&logits, &labels)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let lse = |r: [f64; 3]| r.iter().map(|x| x.exp()).sum::<f64>().ln();
        let want = ((lse([1.0, 2.0, 0.5]) - 2.0) + (lse([0.1, -1.0, 3.0]) - 3.0)) / 2.0;
        assert!((got as f64 - want).abs() < 1e-6, "{got} vs {want}");
    }
}
