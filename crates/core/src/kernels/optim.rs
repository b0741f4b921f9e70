//! Optimizer kernels: one AdamW update pass over a parameter in place, and the sum of
//! squares and scaling that global gradient-norm clipping needs. Each runs on the pool
//! in one pass over memory, where the op-by-op forms made a dozen single-threaded
//! passes and as many fresh buffers per parameter (the update of MiniLM's 22.7 M
//! parameters was a fifth of a training step).
//!
//! The update follows `torch.optim.AdamW` (the single-tensor CPU path):
//! `p ← p·(1 − lr·wd)`, `m ← m + (1 − β₁)(g − m)` (torch's `lerp_`),
//! `v ← β₂·v + (1 − β₂)·g²`, `p ← p − lr/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)`.

use std::cell::RefCell;

use candle_core::{CpuStorage, DType, Layout, Tensor};

use super::pool::Pool;
use super::{Isa, OutPtr};

/// The coefficients of one AdamW step.
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    /// `1 − lr·weight_decay` for a decayed parameter, else 1.
    pub decay: f32,
    /// `1 − β₁` (taken in f64: `1 − 0.999` in f32 is off by 1e-5 relative).
    pub one_minus_beta1: f32,
    pub beta2: f32,
    /// `1 − β₂`.
    pub one_minus_beta2: f32,
    /// `lr / (1 − β₁ᵗ)`.
    pub step_size: f32,
    /// `√(1 − β₂ᵗ)`.
    pub bias_correction2_sqrt: f32,
    pub eps: f32,
    /// The gradient is multiplied by this first (gradient clipping's coefficient,
    /// folded into the update pass; 1 otherwise).
    pub grad_scale: f32,
}

impl AdamWStep {
    /// The coefficients of step `t` (from 1) at learning rate `lr`.
    pub fn new(lr: f64, beta1: f64, beta2: f64, eps: f64, weight_decay: f64, t: i32) -> Self {
        Self {
            decay: (1.0 - lr * weight_decay) as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            step_size: (lr / (1.0 - beta1.powi(t))) as f32,
            bias_correction2_sqrt: (1.0 - beta2.powi(t)).sqrt() as f32,
            eps: eps as f32,
            grad_scale: 1.0,
        }
    }
}

/// Elements one pool task updates.
const CHUNK: usize = 1 << 15;

#[inline(always)]
fn adamw_slice(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: &AdamWStep) {
    let (w1, w2) = (s.one_minus_beta1, s.one_minus_beta2);
    for (((p, g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let g = *g * s.grad_scale;
        let mm = *m + w1 * (g - *m);
        let vv = s.beta2 * *v + w2 * g * g;
        *m = mm;
        *v = vv;
        let denom = vv.sqrt() / s.bias_correction2_sqrt + s.eps;
        *p = *p * s.decay - s.step_size * (mm / denom);
    }
}

/// # Safety
/// The CPU has AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn adamw_slice_avx512(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    s: &AdamWStep,
) {
    adamw_slice(p, g, m, v, s)
}

/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn adamw_slice_avx2(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: &AdamWStep) {
    adamw_slice(p, g, m, v, s)
}

fn adamw_slice_isa(
    isa: Isa,
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    s: &AdamWStep,
) {
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: the instruction set was detected on this CPU.
        Isa::Avx512Vnni => return unsafe { adamw_slice_avx512(p, g, m, v, s) },
        // SAFETY: as above.
        Isa::Avx2 => return unsafe { adamw_slice_avx2(p, g, m, v, s) },
        Isa::Scalar => {}
    }
    let _ = isa;
    adamw_slice(p, g, m, v, s)
}

/// One AdamW update of `p` in place from its gradient `g` and moments `m`, `v` (all the
/// same length), on the pool with the instruction set `isa`.
pub fn adamw_update_with(
    isa: Isa,
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    s: &AdamWStep,
) -> Result<(), String> {
    let n = p.len();
    if g.len() != n || m.len() != n || v.len() != n {
        return Err(format!(
            "AdamW: parameter {n}, gradient {}, moments {} and {}",
            g.len(),
            m.len(),
            v.len()
        ));
    }
    let tasks = n.div_ceil(CHUNK);
    if tasks <= 1 {
        adamw_slice_isa(isa, p, g, m, v, s);
        return Ok(());
    }
    let (pp, mp, vp) = (
        OutPtr(p.as_mut_ptr()),
        OutPtr(m.as_mut_ptr()),
        OutPtr(v.as_mut_ptr()),
    );
    Pool::global().run(tasks, &|t| {
        let (a, b) = (t * CHUNK, ((t + 1) * CHUNK).min(n));
        // SAFETY: task t alone touches elements a..b of p, m and v, which outlive the
        // loop.
        let (p, m, v) = unsafe {
            (
                std::slice::from_raw_parts_mut(pp.at(a), b - a),
                std::slice::from_raw_parts_mut(mp.at(a), b - a),
                std::slice::from_raw_parts_mut(vp.at(a), b - a),
            )
        };
        adamw_slice_isa(isa, p, &g[a..b], m, v, s);
    });
    Ok(())
}

/// The in-place op behind [`adamw_update_tensor`]: the parameter is the mutated storage,
/// the gradient the second operand, the moments live in the optimizer.
struct AdamWOp<'a> {
    moments: RefCell<(&'a mut [f32], &'a mut [f32])>,
    step: AdamWStep,
}

impl candle_core::InplaceOp2 for AdamWOp<'_> {
    fn name(&self) -> &'static str {
        "rustformers-adamw"
    }

    fn cpu_fwd(
        &self,
        ps: &mut CpuStorage,
        pl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<()> {
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (ps, gs) else {
            candle_core::bail!("AdamW kernel takes f32 parameters and gradients");
        };
        let (Some((pa, pb)), Some((ga, gb))) = (pl.contiguous_offsets(), gl.contiguous_offsets())
        else {
            candle_core::bail!("AdamW kernel takes contiguous parameters and gradients");
        };
        let mut moments = self.moments.borrow_mut();
        let (m, v) = &mut *moments;
        adamw_update_with(Isa::detect(), &mut p[pa..pb], &g[ga..gb], m, v, &self.step)
            .map_err(candle_core::Error::Msg)
    }
}

/// One AdamW update of the parameter tensor `param` in place (its storage, so every
/// tensor sharing it, as tied weights do, sees the new values). Returns `false`, with
/// nothing changed, where the kernel does not apply: a parameter or gradient that is not
/// a contiguous f32 tensor on the CPU.
pub fn adamw_update_tensor(
    param: &Tensor,
    grad: &Tensor,
    m: &mut [f32],
    v: &mut [f32],
    step: &AdamWStep,
) -> candle_core::Result<bool> {
    let fits = |t: &Tensor| super::f32_cpu(t) && t.is_contiguous();
    if !fits(param) || !fits(grad) || param.elem_count() != grad.elem_count() {
        return Ok(false);
    }
    let op = AdamWOp {
        moments: RefCell::new((m, v)),
        step: *step,
    };
    param.inplace_op2(grad, &op)?;
    Ok(true)
}

#[inline(always)]
fn sum_squares_slice(x: &[f32]) -> f64 {
    // Lane-wise f32 partial sums over one chunk (so that they vectorize), then f64.
    let mut lanes = [0f32; 16];
    let mut it = x.chunks_exact(16);
    for c in &mut it {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v * v;
        }
    }
    let tail: f64 = it
        .remainder()
        .iter()
        .map(|v| (*v as f64) * (*v as f64))
        .sum();
    lanes.iter().map(|l| *l as f64).sum::<f64>() + tail
}

/// # Safety
/// The CPU has AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn sum_squares_avx512(x: &[f32]) -> f64 {
    sum_squares_slice(x)
}

/// Elements summed in f32 lanes before they are added up in f64.
const SUM_CHUNK: usize = 1 << 12;

/// `Σ x²` over a slice, on the pool: f32 lanes within chunks of 4096, f64 across them.
pub fn sum_squares(x: &[f32]) -> f64 {
    let isa = Isa::detect();
    let part = |c: &[f32]| -> f64 {
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx512Vnni {
            // SAFETY: AVX-512 was detected on this CPU.
            return unsafe { sum_squares_avx512(c) };
        }
        let _ = isa;
        sum_squares_slice(c)
    };
    let chunks = x.len().div_ceil(SUM_CHUNK);
    let per_task = 8;
    let tasks = chunks.div_ceil(per_task);
    if tasks <= 1 {
        return x.chunks(SUM_CHUNK).map(part).sum();
    }
    let mut sums = vec![0f64; tasks];
    let out = super::OutF64(sums.as_mut_ptr());
    Pool::global().run(tasks, &|t| {
        let a = t * per_task * SUM_CHUNK;
        let b = ((t + 1) * per_task * SUM_CHUNK).min(x.len());
        let s: f64 = x[a..b].chunks(SUM_CHUNK).map(part).sum();
        // SAFETY: task t alone writes sums[t], which outlives the loop.
        unsafe { *out.at(t) = s };
    });
    sums.iter().sum()
}

/// The f32 values of a contiguous f32 CPU tensor, passed to `f`; `None` for other
/// tensors.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    if !t.device().is_cpu() || t.dtype() != DType::F32 || !t.is_contiguous() {
        return None;
    }
    super::read_f32(t, f).ok()
}

/// `Σ t²` of a contiguous f32 CPU tensor by [`sum_squares`]; `None` for other tensors.
pub fn sum_squares_tensor(t: &Tensor) -> Option<f64> {
    with_f32(t, sum_squares)
}

/// `t · s` as a new tensor, computed on the pool; `None` where `t` is not a contiguous
/// f32 CPU tensor.
pub fn scale_tensor(t: &Tensor, s: f32) -> candle_core::Result<Option<Tensor>> {
    let Some(out) = with_f32(t, |x| {
        let mut out = vec![0f32; x.len()];
        let ptr = OutPtr(out.as_mut_ptr());
        let tasks = x.len().div_ceil(CHUNK);
        let run = |t: usize| {
            let (a, b) = (t * CHUNK, ((t + 1) * CHUNK).min(x.len()));
            // SAFETY: task t alone writes out[a..b], which outlives the loop.
            let dst = unsafe { std::slice::from_raw_parts_mut(ptr.at(a), b - a) };
            for (d, v) in dst.iter_mut().zip(&x[a..b]) {
                *d = v * s;
            }
        };
        if tasks <= 1 {
            (0..tasks).for_each(run);
        } else {
            Pool::global().run(tasks, &run);
        }
        out
    }) else {
        return Ok(None);
    };
    Ok(Some(Tensor::from_vec(out, t.shape(), t.device())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The update equals torch's rule computed in f64, on every instruction set, for a
    /// length spanning several pool tasks and a tail.
    #[test]
    fn adamw_update_matches_the_rule_in_f64() {
        let n = 3 * CHUNK + 77;
        let val = |i: usize, k: f32| ((i as f32 * 0.37 + k).sin()) * 0.5;
        let g: Vec<f32> = (0..n).map(|i| val(i, 1.0)).collect();
        for isa in Isa::all_available() {
            let mut p: Vec<f32> = (0..n).map(|i| val(i, 2.0)).collect();
            let mut m: Vec<f32> = (0..n).map(|i| val(i, 3.0) * 0.1).collect();
            let mut v: Vec<f32> = (0..n).map(|i| val(i, 4.0).abs() * 0.01).collect();
            let (p0, m0, v0) = (p.clone(), m.clone(), v.clone());
            let (lr, b1, b2, eps, wd, t) = (1e-3, 0.9, 0.999, 1e-8, 0.01, 3);
            let s = AdamWStep::new(lr, b1, b2, eps, wd, t);
            adamw_update_with(isa, &mut p, &g, &mut m, &mut v, &s).unwrap();
            for i in 0..n {
                let gi = g[i] as f64;
                let mm = m0[i] as f64 * b1 + (1.0 - b1) * gi;
                let vv = v0[i] as f64 * b2 + (1.0 - b2) * gi * gi;
                let denom = vv.sqrt() / (1.0 - b2.powi(t)).sqrt() + eps;
                let want = p0[i] as f64 * (1.0 - lr * wd) - lr / (1.0 - b1.powi(t)) * mm / denom;
                assert!((m[i] as f64 - mm).abs() < 1e-7, "{isa:?} m[{i}]");
                assert!((v[i] as f64 - vv).abs() < 1e-8, "{isa:?} v[{i}]");
                assert!(
                    (p[i] as f64 - want).abs() < 2e-6,
                    "{isa:?} p[{i}]: {} vs {want}",
                    p[i]
                );
            }
        }
        let mut short = vec![0f32; 3];
        let s = AdamWStep::new(1e-3, 0.9, 0.999, 1e-8, 0.0, 1);
        let err = adamw_update_with(
            Isa::Scalar,
            &mut short,
            &g,
            &mut [0.0; 3],
            &mut [0.0; 3],
            &s,
        )
        .unwrap_err();
        assert!(err.contains("gradient"), "{err}");
    }

    /// The tensor form updates the parameter's storage in place and declines what it
    /// does not take.
    #[test]
    fn adamw_tensor_updates_in_place_and_declines_other_dtypes() {
        use candle_core::{Device, Var};
        let dev = Device::Cpu;
        let w = Var::new(&[1f32, -2.0, 3.0], &dev).unwrap();
        let alias = w.as_tensor().clone();
        let g = Tensor::new(&[0.5f32, 0.5, -1.0], &dev).unwrap();
        let (mut m, mut v) = (vec![0f32; 3], vec![0f32; 3]);
        let s = AdamWStep::new(0.1, 0.9, 0.999, 1e-8, 0.0, 1);
        assert!(adamw_update_tensor(w.as_tensor(), &g, &mut m, &mut v, &s).unwrap());
        // First step: m̂/√v̂ = sign(g), so each weight moves by lr against its gradient.
        let got = alias.to_vec1::<f32>().unwrap();
        for (x, want) in got.iter().zip([0.9f32, -2.1, 3.1]) {
            assert!((x - want).abs() < 1e-5, "{got:?}");
        }
        let g64 = g.to_dtype(DType::F64).unwrap();
        assert!(!adamw_update_tensor(w.as_tensor(), &g64, &mut m, &mut v, &s).unwrap());
        let strided = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &dev)
            .unwrap()
            .t()
            .unwrap();
        let g4 = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &dev).unwrap();
        assert!(!adamw_update_tensor(&strided, &g4, &mut [0.0; 4], &mut [0.0; 4], &s).unwrap());
    }

    #[test]
    fn sum_squares_and_scale_match_plain_loops() {
        use candle_core::Device;
        for n in [0usize, 5, 16, 4097, 9 * SUM_CHUNK * 8 + 13] {
            let x: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.11).cos() * 3.0).collect();
            let want: f64 = x.iter().map(|v| (*v as f64).powi(2)).sum();
            let got = sum_squares(&x);
            assert!(
                (got - want).abs() <= 1e-6 * want.max(1.0),
                "n={n}: {got} vs {want}"
            );
            let t = Tensor::from_vec(x.clone(), n, &Device::Cpu).unwrap();
            assert_eq!(sum_squares_tensor(&t), Some(got));
            let scaled = scale_tensor(&t, 0.25)
                .unwrap()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert!(scaled.iter().zip(&x).all(|(s, v)| *s == v * 0.25));
        }
        let t = Tensor::new(&[1f64, 2.0], &Device::Cpu).unwrap();
        assert_eq!(sum_squares_tensor(&t), None);
        assert!(scale_tensor(&t, 2.0).unwrap().is_none());
    }
}
