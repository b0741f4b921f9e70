//! Rotary position embeddings with the rope types of Python's `modeling_rope_utils.py`
//! (transformers 5.25): default, linear, dynamic (NTK), llama3, yarn, longrope and
//! proportional. Config keys are read by [`crate::rope_parameters`]. Frequencies and angles are computed in f32; `rotate_half` layout (the HF
//! layout, not the interleaved one).

use crate::kernels::runs_kernels;
use candle_core::{DType, Device, Tensor, D};

use crate::error::{Error, Result};

/// How frequencies are scaled: the `rope_type`s of Python's `ROPE_INIT_FUNCTIONS`
/// (read from config.json by [`crate::rope_parameters`]).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    Default,
    Linear {
        factor: f64,
    },
    Dynamic {
        factor: f64,
        original_max: usize,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max: usize,
    },
    Yarn {
        factor: f64,
        original_max: usize,
        beta_fast: f64,
        beta_slow: f64,
        attention_factor: Option<f64>,
        mscale: Option<f64>,
        mscale_all_dim: Option<f64>,
        /// Floor/ceil the correction range (5.x's `truncate`, default true).
        truncate: bool,
    },
    /// Short factors while the sequence fits `original_max`, long ones past it.
    Longrope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        factor: f64,
        attention_factor: Option<f64>,
        original_max: usize,
    },
    /// Gemma 4's: the head's first `partial_rotary_factor` share rotates with frequencies
    /// over the whole head size, the rest with frequency zero.
    Proportional {
        factor: f64,
    },
}

impl RopeScaling {
    /// The `rope_type` name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Linear { .. } => "linear",
            Self::Dynamic { .. } => "dynamic",
            Self::Llama3 { .. } => "llama3",
            Self::Yarn { .. } => "yarn",
            Self::Longrope { .. } => "longrope",
            Self::Proportional { .. } => "proportional",
        }
    }
}

fn bad(msg: String) -> Error {
    Error::Config {
        path: "config.json".into(),
        message: msg,
    }
}

/// Precomputed inverse frequencies of one model.
#[derive(Debug, Clone)]
pub struct RotaryEmbedding {
    dim: usize,
    base: f64,
    inv_freq: Vec<f32>,
    /// Longrope's frequencies past `original_max`.
    long_inv_freq: Option<Vec<f32>>,
    attention_scaling: f64,
    scaling: RopeScaling,
}

fn default_inv_freq(base: f64, dim: usize) -> Vec<f64> {
    (0..dim / 2)
        .map(|i| 1.0 / base.powf((2 * i) as f64 / dim as f64))
        .collect()
}

fn yarn_mscale(scale: f64, m: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * m * scale.ln() + 1.0
    }
}

fn to_f32(v: Vec<f64>) -> Vec<f32> {
    v.into_iter().map(|x| x as f32).collect()
}

impl RotaryEmbedding {
    /// From a config's resolved parameters and the model's head size.
    pub fn from_parameters(
        head_dim: usize,
        p: &crate::rope_parameters::RopeParameters,
    ) -> Result<Self> {
        if let RopeScaling::Proportional { factor } = p.scaling {
            return Self::proportional(head_dim, p.rope_theta, p.partial_rotary_factor, factor);
        }
        Self::new(p.rotary_dim(head_dim), p.rope_theta, p.scaling.clone())
    }

    /// `dim` is the rotated size (head_dim × partial_rotary_factor), `base` rope_theta.
    pub fn new(dim: usize, base: f64, scaling: RopeScaling) -> Result<Self> {
        if dim == 0 || !dim.is_multiple_of(2) {
            return Err(bad(format!(
                "rotary dimension must be even and positive, got {dim}"
            )));
        }
        if !(base.is_finite() && base > 1.0) {
            return Err(bad(format!("rope_theta must be > 1, got {base}")));
        }
        let mut attention_scaling = 1.0;
        let mut long_inv_freq = None;
        let inv: Vec<f64> = match &scaling {
            RopeScaling::Default | RopeScaling::Dynamic { .. } => default_inv_freq(base, dim),
            RopeScaling::Linear { factor } | RopeScaling::Proportional { factor } => {
                default_inv_freq(base, dim)
                    .into_iter()
                    .map(|f| f / factor)
                    .collect()
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max,
            } => {
                let old = *original_max as f64;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                default_inv_freq(base, dim)
                    .into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        let scaled = if wavelen > low_wavelen { f / factor } else { f };
                        let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                        if medium {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * scaled / factor + smooth * scaled
                        } else {
                            scaled
                        }
                    })
                    .collect()
            }
            RopeScaling::Yarn {
                factor,
                original_max,
                beta_fast,
                beta_slow,
                attention_factor,
                mscale,
                mscale_all_dim,
                truncate,
            } => {
                attention_scaling = match (attention_factor, mscale, mscale_all_dim) {
                    (Some(a), _, _) => *a,
                    // Python tests both for truthiness: 0 counts as unset.
                    (None, Some(m), Some(ma)) if *m != 0.0 && *ma != 0.0 => {
                        yarn_mscale(*factor, *m) / yarn_mscale(*factor, *ma)
                    }
                    _ => yarn_mscale(*factor, 1.0),
                };
                let d = dim as f64;
                let max = *original_max as f64;
                let correction = |rot: f64| {
                    (d * (max / (rot * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * base.ln())
                };
                let (low, high) = (correction(*beta_fast), correction(*beta_slow));
                let (low, high) = if *truncate {
                    (low.floor(), high.ceil())
                } else {
                    (low, high)
                };
                let (lo, hi) = (low.max(0.0), high.min(d - 1.0));
                let hi = if lo == hi { hi + 0.001 } else { hi };
                (0..dim / 2)
                    .map(|i| {
                        let pos_freq = base.powf((2 * i) as f64 / d);
                        let extrapolation = 1.0 / pos_freq;
                        let interpolation = 1.0 / (factor * pos_freq);
                        let ramp = ((i as f64 - lo) / (hi - lo)).clamp(0.0, 1.0);
                        let extrapolation_factor = 1.0 - ramp;
                        interpolation * (1.0 - extrapolation_factor)
                            + extrapolation * extrapolation_factor
                    })
                    .collect()
            }
            RopeScaling::Longrope {
                short_factor,
                long_factor,
                factor,
                attention_factor,
                original_max,
            } => {
                for (name, list) in [("short_factor", short_factor), ("long_factor", long_factor)] {
                    if list.len() != dim / 2 {
                        return Err(bad(format!(
                            "rope_parameters `{name}` must have {} numbers (rotary dimension / 2), got {}",
                            dim / 2,
                            list.len()
                        )));
                    }
                }
                attention_scaling = attention_factor.unwrap_or_else(|| {
                    if *factor <= 1.0 {
                        1.0
                    } else {
                        (1.0 + factor.ln() / (*original_max as f64).ln()).sqrt()
                    }
                });
                let with = |ext: &[f64]| -> Vec<f64> {
                    default_inv_freq(base, dim)
                        .into_iter()
                        .zip(ext)
                        .map(|(f, e)| f / e)
                        .collect()
                };
                long_inv_freq = Some(to_f32(with(long_factor)));
                with(short_factor)
            }
        };
        Ok(Self {
            dim,
            base,
            inv_freq: to_f32(inv),
            long_inv_freq,
            attention_scaling,
            scaling,
        })
    }

    /// Proportional RoPE: cos/sin over the whole head; the first
    /// `int(partial_rotary_factor * head_dim // 2)` frequencies are `base^(-2i/head_dim)`,
    /// the rest zero (those channels pass through), all divided by `factor`.
    fn proportional(
        head_dim: usize,
        base: f64,
        partial_rotary_factor: Option<f64>,
        factor: f64,
    ) -> Result<Self> {
        let mut r = Self::new(head_dim, base, RopeScaling::Proportional { factor })?;
        let angles =
            ((partial_rotary_factor.unwrap_or(1.0) * head_dim as f64) / 2.0).floor() as usize;
        for (i, f) in r.inv_freq.iter_mut().enumerate() {
            if i >= angles {
                *f = 0.0;
            }
        }
        Ok(r)
    }

    /// The factor cos and sin are multiplied by (yarn, longrope).
    pub fn attention_scaling(&self) -> f64 {
        self.attention_scaling
    }

    /// Inverse frequencies for a forward pass whose largest position is `max_pos`
    /// (dynamic NTK grows the base past the original length; longrope switches to its
    /// long factors there).
    fn inv_freq_for(&self, max_pos: usize) -> Vec<f32> {
        match &self.scaling {
            RopeScaling::Dynamic {
                factor,
                original_max,
            } if max_pos + 1 > *original_max => {
                let seq = (max_pos + 1) as f64;
                let d = self.dim as f64;
                let base = self.base
                    * ((factor * seq / *original_max as f64) - (factor - 1.0)).powf(d / (d - 2.0));
                to_f32(default_inv_freq(base, self.dim))
            }
            RopeScaling::Longrope { original_max, .. } if max_pos + 1 > *original_max => self
                .long_inv_freq
                .clone()
                .unwrap_or_else(|| self.inv_freq.clone()),
            _ => self.inv_freq.clone(),
        }
    }

    /// cos and sin for `position_ids` `[batch, seq]` (u32 or i64): each `[batch, seq, dim]`, f32.
    pub fn cos_sin(&self, position_ids: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let pos = position_ids.to_dtype(DType::F32)?;
        let max_pos = pos.max_all()?.to_scalar::<f32>()?.max(0.0) as usize;
        let inv = self.inv_freq_for(max_pos);
        let n = inv.len();
        let inv = Tensor::from_vec(inv, (1, 1, n), position_ids.device())?;
        let freqs = pos.unsqueeze(D::Minus1)?.broadcast_mul(&inv)?;
        let emb = Tensor::cat(&[&freqs, &freqs], D::Minus1)?;
        let cos = (emb.cos()? * self.attention_scaling)?;
        let sin = (emb.sin()? * self.attention_scaling)?;
        Ok((cos, sin))
    }

    /// How far positions may go: `max_position_embeddings`, times the factor for
    /// dynamic NTK scaling (which exists to run past it).
    pub fn context(&self, max_position_embeddings: usize) -> usize {
        match &self.scaling {
            RopeScaling::Dynamic { factor, .. } => {
                (max_position_embeddings as f64 * factor) as usize
            }
            _ => max_position_embeddings,
        }
    }

    /// The rotated size.
    pub fn dim(&self) -> usize {
        self.dim
    }
}

/// The fused kernel, for f32 on CPU (`None`: take the op-by-op path). Interleaved
/// rotation covers the whole head.
fn fused_rotary(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    interleaved: bool,
) -> candle_core::Result<Option<Tensor>> {
    if !(runs_kernels(x) && runs_kernels(cos) && runs_kernels(sin))
        || x.rank() != 4
        || cos.rank() != 3
    {
        return Ok(None);
    }
    if interleaved && cos.dim(D::Minus1)? != x.dim(D::Minus1)? {
        return Ok(None);
    }
    let op = crate::kernels::fused::RotaryOp { interleaved };
    Ok(Some(x.contiguous()?.apply_op3_no_bwd(
        &cos.contiguous()?,
        &sin.contiguous()?,
        &op,
    )?))
}

/// Python's `rotate_half`: `[-x2, x1]`.
fn rotate_half(x: &Tensor) -> candle_core::Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)
}

/// Applies rotary embeddings to `x` `[batch, heads, seq, head_dim]` with `cos`/`sin`
/// `[batch, seq, rot_dim]`; with `rot_dim < head_dim` only the first `rot_dim` channels
/// rotate (partial rotary). Computed in f32, returned in `x`'s dtype.
pub fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    match fused_rotary(x, cos, sin, false)? {
        Some(y) => Ok(y),
        None => rotary_by_ops(x, cos, sin),
    }
}

/// [`apply_rotary`] op by op.
fn rotary_by_ops(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let dtype = x.dtype();
    let cd = crate::layers::compute_dtype(dtype);
    let rot = cos.dim(D::Minus1)?;
    let head_dim = x.dim(D::Minus1)?;
    let cos = cos.to_dtype(cd)?.unsqueeze(1)?;
    let sin = sin.to_dtype(cd)?.unsqueeze(1)?;
    let xf = x.to_dtype(cd)?;
    let (x_rot, x_pass) = if rot < head_dim {
        (
            xf.narrow(D::Minus1, 0, rot)?,
            Some(xf.narrow(D::Minus1, rot, head_dim - rot)?),
        )
    } else {
        (xf, None)
    };
    let rotated = (x_rot.broadcast_mul(&cos)? + rotate_half(&x_rot)?.broadcast_mul(&sin)?)?;
    let out = match x_pass {
        Some(p) => Tensor::cat(&[&rotated, &p], D::Minus1)?,
        None => rotated,
    };
    out.to_dtype(dtype)
}

/// Rotary embeddings in the interleaved layout (pairs `(x[2i], x[2i+1])`), which is what
/// llama.cpp's GGUF files expect: their q/k weights are stored permuted so that this
/// gives the same attention scores as `rotate_half` on the HF weights. `cos`/`sin` as
/// for [`apply_rotary`] (`[batch, seq, head_dim]`, halves repeated).
pub fn apply_rotary_interleaved(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
) -> candle_core::Result<Tensor> {
    match fused_rotary(x, cos, sin, true)? {
        Some(y) => Ok(y),
        None => interleaved_by_ops(x, cos, sin),
    }
}

/// [`apply_rotary_interleaved`] op by op.
fn interleaved_by_ops(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let dtype = x.dtype();
    let cd = crate::layers::compute_dtype(dtype);
    let (b, h, s, d) = x.dims4()?;
    let half = d / 2;
    let cos = cos.to_dtype(cd)?.narrow(D::Minus1, 0, half)?.unsqueeze(1)?;
    let sin = sin.to_dtype(cd)?.narrow(D::Minus1, 0, half)?.unsqueeze(1)?;
    let xf = x.to_dtype(cd)?.reshape((b, h, s, half, 2))?;
    let x0 = xf.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?;
    let x1 = xf.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?;
    let o0 = (x0.broadcast_mul(&cos)? - x1.broadcast_mul(&sin)?)?;
    let o1 = (x0.broadcast_mul(&sin)? + x1.broadcast_mul(&cos)?)?;
    Tensor::stack(&[&o0, &o1], D::Minus1)?
        .reshape((b, h, s, d))?
        .to_dtype(dtype)
}

/// Position ids as Python's `generate` computes them from a left-padded mask:
/// `cumsum(mask) - 1`, and 1 at padding.
pub fn position_ids_from_mask(mask: &[Vec<u32>], device: &Device) -> candle_core::Result<Tensor> {
    let rows: Vec<u32> = mask
        .iter()
        .flat_map(|row| {
            let mut acc: i64 = 0;
            row.iter()
                .map(|m| {
                    acc += *m as i64;
                    if *m == 0 {
                        1
                    } else {
                        (acc - 1) as u32
                    }
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let b = mask.len();
    let s = mask.first().map(Vec::len).unwrap_or(0);
    Tensor::from_vec(rows, (b, s), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused kernel equals the op-by-op path, full and partial rotation, both layouts.
    #[test]
    fn fused_rotary_equals_the_op_by_op_path() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 5, 8), &dev).unwrap();
        let pos = Tensor::new(&[[0u32, 1, 2, 3, 4], [7, 8, 9, 10, 11]], &dev).unwrap();
        let max_diff = |a: Tensor, b: Tensor| crate::test_util::max_abs_diff(&a, &b);
        for rot in [8, 4] {
            let r = RotaryEmbedding::new(rot, 10000.0, RopeScaling::Default).unwrap();
            let (cos, sin) = r.cos_sin(&pos).unwrap();
            let fused = apply_rotary(&x, &cos, &sin).unwrap();
            assert!(max_diff(fused, rotary_by_ops(&x, &cos, &sin).unwrap()) < 1e-6);
            if rot == 8 {
                let fused = apply_rotary_interleaved(&x, &cos, &sin).unwrap();
                let ops = interleaved_by_ops(&x, &cos, &sin).unwrap();
                assert!(max_diff(fused, ops) < 1e-6);
            }
        }
    }

    #[test]
    fn default_frequencies_and_rotation() {
        let r = RotaryEmbedding::new(4, 10000.0, RopeScaling::Default).unwrap();
        assert_eq!(r.inv_freq, vec![1.0, 0.01]);
        let pos = Tensor::new(&[[0u32, 1]], &Device::Cpu).unwrap();
        let (cos, sin) = r.cos_sin(&pos).unwrap();
        let c = cos.to_vec3::<f32>().unwrap();
        assert_eq!(c[0][0], vec![1.0; 4]);
        assert!((c[0][1][0] - 1f32.cos()).abs() < 1e-6);
        // Rotating [1, 0, 0, 0] by position 1: first pair turns by 1 radian.
        let x = Tensor::new(&[[[[1f32, 0.0, 0.0, 0.0]]]], &Device::Cpu).unwrap();
        let x = x.broadcast_as((1, 1, 1, 4)).unwrap();
        let y = apply_rotary(
            &x,
            &cos.narrow(1, 1, 1).unwrap(),
            &sin.narrow(1, 1, 1).unwrap(),
        )
        .unwrap();
        let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(
            (y[0] - 1f32.cos()).abs() < 1e-6 && (y[2] - 1f32.sin()).abs() < 1e-6,
            "{y:?}"
        );
    }

    #[test]
    fn interleaved_equals_rotate_half_on_permuted_channels() {
        // llama.cpp's permutation of a head: channel order [0, h, 1, h+1, ...].
        let d = 8;
        let x = Tensor::arange(0f32, 16.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 2, d))
            .unwrap();
        let r = RotaryEmbedding::new(d, 10000.0, RopeScaling::Default).unwrap();
        let (cos, sin) = r
            .cos_sin(&Tensor::new(&[[3u32, 7]], &Device::Cpu).unwrap())
            .unwrap();
        let perm: Vec<u32> = (0..d as u32 / 2)
            .flat_map(|i| [i, i + d as u32 / 2])
            .collect();
        let idx = Tensor::new(perm.as_slice(), &Device::Cpu).unwrap();
        let hf = apply_rotary(&x, &cos, &sin)
            .unwrap()
            .index_select(&idx, 3)
            .unwrap();
        let gg = apply_rotary_interleaved(&x.index_select(&idx, 3).unwrap(), &cos, &sin).unwrap();
        let diff = crate::test_util::max_abs_diff(&hf, &gg);
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn scaling_variants_parse_and_validate() {
        let ctx = crate::rope_parameters::RopeContext {
            default_theta: 10000.0,
            max_position_embeddings: 64,
            layer_types: None,
        };
        let keys: crate::rope_parameters::RopeKeys = serde_json::from_value(
            serde_json::json!({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
        )
        .unwrap();
        let r = RotaryEmbedding::from_parameters(4, &keys.uniform(&ctx).unwrap()).unwrap();
        assert_eq!(r.inv_freq, vec![0.5, 0.005]);
        assert!(RotaryEmbedding::new(3, 10000.0, RopeScaling::Default).is_err());
    }

    /// Longrope: short factors up to `original_max` positions, long ones past it, cos/sin
    /// scaled by sqrt(1 + ln(factor) / ln(original_max)).
    #[test]
    fn longrope_switches_factors_by_the_largest_position() {
        let r = RotaryEmbedding::new(
            4,
            10000.0,
            RopeScaling::Longrope {
                short_factor: vec![1.0, 2.0],
                long_factor: vec![4.0, 8.0],
                factor: 4.0,
                attention_factor: None,
                original_max: 16,
            },
        )
        .unwrap();
        assert_eq!(r.inv_freq_for(15), vec![1.0, 0.005]);
        assert_eq!(r.inv_freq_for(16), vec![0.25, 0.00125]);
        let expected = (1.0 + 4f64.ln() / 16f64.ln()).sqrt();
        assert!((r.attention_scaling() - expected).abs() < 1e-12);
    }

    /// Proportional: the rotated share's frequencies over the whole head, zeros after.
    #[test]
    fn proportional_zeroes_the_unrotated_frequencies() {
        let keys: crate::rope_parameters::RopeKeys = serde_json::from_value(serde_json::json!({
            "rope_parameters": {"rope_type": "proportional", "rope_theta": 10000.0,
                                "partial_rotary_factor": 0.5}
        }))
        .unwrap();
        let ctx = crate::rope_parameters::RopeContext {
            default_theta: 10000.0,
            max_position_embeddings: 64,
            layer_types: None,
        };
        let r = RotaryEmbedding::from_parameters(8, &keys.uniform(&ctx).unwrap()).unwrap();
        assert_eq!(r.dim(), 8);
        assert_eq!(r.inv_freq, vec![1.0, 0.1, 0.0, 0.0]);
    }

    #[test]
    fn positions_from_left_padding() {
        let p =
            position_ids_from_mask(&[vec![0, 0, 1, 1], vec![1, 1, 1, 1]], &Device::Cpu).unwrap();
        assert_eq!(
            p.to_vec2::<u32>().unwrap(),
            vec![vec![1, 1, 0, 1], vec![0, 1, 2, 3]]
        );
    }
}
