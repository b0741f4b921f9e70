//! Elementwise activations without libm calls, so that they vectorize: candle's exact
//! GELU calls libm's scalar `erff` per element (17% of an all-MiniLM-L6-v2 batch).
//!
//! `erf` is a rational function of degree 11/10 (absolute error below 4e-7 in f32, no
//! `exp`); `exp` a degree-7 series after a reduction by powers of 2 (relative error below
//! 2e-7): GELU stays within 1e-6 of the libm-based result, far inside the 1e-4 parity
//! tolerance.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape};

use super::pool::Pool;
use super::Isa;
use super::OutPtr;

/// `e^x` for `x` in `[-87, 88]` (clamped outside): `2^n · e^r` with `n = round(x / ln 2)`
/// and `r = x - n ln 2` (Cody-Waite: `ln 2` in two parts, so `r` is exact), `e^r` by its
/// Taylor series to degree 7 (`|r| <= 0.35`).
///
/// `n` is rounded by adding 1.5·2²³, which leaves it (ties to even) in the low mantissa
/// bits, so `2^n` is built with integer adds and shifts: a float-to-int cast (`as i32`
/// saturates) would not vectorize.
#[inline(always)]
pub(crate) fn exp_approx(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r / 5040.0))))));
    // t's bits are MAGIC's plus n; 2^n has exponent field n + 127.
    let scale = f32::from_bits(t.to_bits().wrapping_sub(MAGIC.to_bits()).wrapping_add(127) << 23);
    p * scale
}

/// [`exp_approx`] on 16 lanes: the same reduction and series, with fused multiply-adds
/// (`r = x - n ln 2` and the Horner steps each rounded once) and `2^n` applied by
/// `vscalefps`; within 1e-7 relative of the scalar form.
///
/// # Safety
/// The CPU has AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[inline]
pub(crate) unsafe fn exp_approx_avx512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = _mm512_min_ps(
        _mm512_max_ps(x, _mm512_set1_ps(-87.0)),
        _mm512_set1_ps(88.0),
    );
    // n = round(x / ln 2), ties to even.
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut p = _mm512_set1_ps(1.0 / 5040.0);
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(p, n)
}

/// `|x|` beyond which `erf(x)` is `±1` in f32 (`1 − erf(3.925) = 2.8e-8`).
const ERF_CLAMP: f32 = 3.925;
/// `erf(x) = x · P(x²) / Q(x²)` on `|x| ≤` [`ERF_CLAMP`]: the coefficients of `P` and
/// `Q`, lowest first, fitted for this library (scripts/fit/erf_rational.py: linearised
/// least squares reweighted towards the largest errors, Lawson's iteration). Largest error
/// 1.6e-8 in exact arithmetic, 3.6e-7 evaluated in f32 (the first coefficient is
/// `2/√π`, `erf`'s slope at 0, to the fit's f32 rounding).
const ERF_P: [f32; 6] = [
    std::f32::consts::FRAC_2_SQRT_PI,
    0.192_974_4,
    0.053_084_444,
    0.003_876_360_1,
    0.000_287_485_22,
    2.030_758_4e-6,
];
const ERF_Q: [f32; 6] = [
    1.0,
    0.504_350_7,
    0.115_168_08,
    0.015_188_434,
    0.001_189_743_3,
    3.802_992_8e-5,
];

/// `erf(x)` by the rational form above (no `exp`, one division), clamped to `[−1, 1]`.
#[inline(always)]
fn erf_approx(x: f32) -> f32 {
    let x = x.clamp(-ERF_CLAMP, ERF_CLAMP);
    let u = x * x;
    let p = ERF_P.iter().rev().fold(0.0, |acc, c| acc * u + c);
    let q = ERF_Q.iter().rev().fold(0.0, |acc, c| acc * u + c);
    (x * p / q).clamp(-1.0, 1.0)
}

/// Exact-form GELU: `x/2 · (1 + erf(x/√2))`.
#[inline(always)]
fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_approx(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[inline(always)]
fn gelu_slice_body(xs: &[f32], out: &mut [f32]) {
    for (o, x) in out.iter_mut().zip(xs) {
        *o = gelu_erf(*x);
    }
}

/// [`gelu_erf`] on 16 lanes: the same rational `erf`, with fused multiply-adds and
/// `1 / Q` from `vrcp14ps` plus one Newton step (a division is most of the time
/// otherwise); within 2e-7 of the scalar form.
///
/// # Safety
/// The CPU has AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[inline]
unsafe fn gelu_erf_avx512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let one = _mm512_set1_ps(1.0);
    let z = _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
    let z = _mm512_min_ps(
        _mm512_max_ps(z, _mm512_set1_ps(-ERF_CLAMP)),
        _mm512_set1_ps(ERF_CLAMP),
    );
    let u = _mm512_mul_ps(z, z);
    let mut p = _mm512_set1_ps(ERF_P[5]);
    let mut q = _mm512_set1_ps(ERF_Q[5]);
    for i in (0..5).rev() {
        p = _mm512_fmadd_ps(p, u, _mm512_set1_ps(ERF_P[i]));
        q = _mm512_fmadd_ps(q, u, _mm512_set1_ps(ERF_Q[i]));
    }
    let r0 = _mm512_rcp14_ps(q);
    // One Newton step: 1/q ≈ r0 (2 − q r0).
    let inv = _mm512_mul_ps(r0, _mm512_fnmadd_ps(q, r0, _mm512_set1_ps(2.0)));
    let erf = _mm512_mul_ps(_mm512_mul_ps(z, p), inv);
    let erf = _mm512_min_ps(_mm512_max_ps(erf, _mm512_set1_ps(-1.0)), one);
    _mm512_mul_ps(
        _mm512_mul_ps(_mm512_set1_ps(0.5), x),
        _mm512_add_ps(one, erf),
    )
}

/// `out = gelu(xs)` (`out` as long as `xs`, or the same slice when `xs` is null).
///
/// # Safety
/// The CPU has AVX-512 F; `src` and `dst` hold `n` values (they may be the same).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[inline]
unsafe fn gelu_ptr_avx512(src: *const f32, dst: *mut f32, n: usize) {
    use std::arch::x86_64::*;
    let mut i = 0;
    while i + 16 <= n {
        _mm512_storeu_ps(dst.add(i), gelu_erf_avx512(_mm512_loadu_ps(src.add(i))));
        i += 16;
    }
    if i < n {
        let mask: __mmask16 = (1u16 << (n - i)) - 1;
        let v = gelu_erf_avx512(_mm512_maskz_loadu_ps(mask, src.add(i)));
        _mm512_mask_storeu_ps(dst.add(i), mask, v);
    }
}

/// # Safety
/// The CPU has AVX-512 F.
#[cfg(target_arch = "x86_64")]
unsafe fn gelu_slice_avx512(xs: &[f32], out: &mut [f32]) {
    gelu_ptr_avx512(xs.as_ptr(), out.as_mut_ptr(), xs.len().min(out.len()))
}

/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_slice_avx2(xs: &[f32], out: &mut [f32]) {
    gelu_slice_body(xs, out)
}

fn gelu_slice(isa: Isa, xs: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `isa` was detected on this CPU.
        match isa {
            Isa::Avx512Vnni => return unsafe { gelu_slice_avx512(xs, out) },
            Isa::Avx2 => return unsafe { gelu_slice_avx2(xs, out) },
            Isa::Scalar => {}
        }
    }
    gelu_slice_body(xs, out)
}

/// GELU (erf form) in place over `rows` rows of `cols` values, rows `stride` values
/// apart from `ptr`: an epilogue for products whose output block is still in cache.
///
/// # Safety
/// Each of the rows is valid for reads and writes of `cols` values that no one else
/// makes meanwhile.
pub(crate) unsafe fn gelu_rows_in_place(
    ptr: *mut f32,
    stride: usize,
    rows: usize,
    cols: usize,
    isa: Isa,
) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni {
        // SAFETY: AVX-512 was detected (`isa`); the rows as this function's contract.
        return unsafe { gelu_rows_avx512(ptr, stride, rows, cols) };
    }
    let mut tmp = [0f32; 64];
    for r in 0..rows {
        // SAFETY: the row holds `cols` values, this call's alone (the caller's contract).
        let row = unsafe { std::slice::from_raw_parts_mut(ptr.add(r * stride), cols) };
        for part in row.chunks_mut(tmp.len()) {
            let src = &mut tmp[..part.len()];
            src.copy_from_slice(part);
            gelu_slice(isa, src, part);
        }
    }
}

/// [`gelu_rows_in_place`] on AVX-512: one function for all the rows, so that the
/// constants are loaded once per block, not once per row (an epilogue's rows are 32
/// values: the constants' loads had been most of a row's work).
///
/// # Safety
/// The CPU has AVX-512 F; the rows as [`gelu_rows_in_place`]'s.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn gelu_rows_avx512(ptr: *mut f32, stride: usize, rows: usize, cols: usize) {
    for r in 0..rows {
        let row = ptr.add(r * stride);
        gelu_ptr_avx512(row, row, cols);
    }
}

/// Elements per parallel chunk.
const CHUNK: usize = 1 << 14;

/// GELU (erf form) of every value of `xs`, with `isa`.
pub fn gelu(xs: &[f32], isa: Isa) -> Vec<f32> {
    let mut out = vec![0f32; xs.len()];
    let chunks = xs.len().div_ceil(CHUNK);
    if chunks <= 1 {
        gelu_slice(isa, xs, &mut out);
        return out;
    }
    let ptr = OutPtr(out.as_mut_ptr());
    Pool::global().run(chunks, &|c| {
        let lo = c * CHUNK;
        let hi = (lo + CHUNK).min(xs.len());
        // SAFETY: chunk `c` owns `out[lo..hi]`; chunks are disjoint and `out` outlives
        // the loop.
        let dst = unsafe { std::slice::from_raw_parts_mut(ptr.at(lo), hi - lo) };
        gelu_slice(isa, &xs[lo..hi], dst);
    });
    out
}

/// `silu(g) · u = g / (1 + e^-g) · u`, elementwise.
#[inline(always)]
fn silu_mul_body(g: &[f32], u: &[f32], out: &mut [f32]) {
    for ((o, g), u) in out.iter_mut().zip(g).zip(u) {
        *o = g / (1.0 + exp_approx(-g)) * u;
    }
}

/// `$slice(isa, a, b, out)`: `$body` compiled for AVX-512 and for AVX2 (so that it
/// vectorizes for each), picked by `isa`, plain elsewhere.
macro_rules! elementwise2 {
    ($slice:ident, $body:ident) => {
        fn $slice(isa: Isa, a: &[f32], b: &[f32], out: &mut [f32]) {
            /// # Safety
            /// The CPU has AVX-512 F.
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx2,fma")]
            unsafe fn avx512(a: &[f32], b: &[f32], out: &mut [f32]) {
                $body(a, b, out)
            }
            /// # Safety
            /// The CPU has AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2(a: &[f32], b: &[f32], out: &mut [f32]) {
                $body(a, b, out)
            }
            #[cfg(target_arch = "x86_64")]
            {
                // SAFETY: `isa` was detected on this CPU.
                match isa {
                    Isa::Avx512Vnni => return unsafe { avx512(a, b, out) },
                    Isa::Avx2 => return unsafe { avx2(a, b, out) },
                    Isa::Scalar => {}
                }
            }
            let _ = isa;
            $body(a, b, out)
        }
    };
}

/// `slice(isa, a, b, out)` over the first `min(a.len(), b.len())` values, in chunks on
/// the pool.
fn elementwise2_on_pool(
    a: &[f32],
    b: &[f32],
    isa: Isa,
    slice: fn(Isa, &[f32], &[f32], &mut [f32]),
) -> Vec<f32> {
    let n = a.len().min(b.len());
    let mut out = vec![0f32; n];
    let chunks = n.div_ceil(CHUNK);
    if chunks <= 1 {
        slice(isa, &a[..n], &b[..n], &mut out);
        return out;
    }
    let ptr = OutPtr(out.as_mut_ptr());
    Pool::global().run(chunks, &|c| {
        let lo = c * CHUNK;
        let hi = (lo + CHUNK).min(n);
        // SAFETY: chunk `c` owns `out[lo..hi]`; chunks are disjoint and `out` outlives
        // the loop.
        let dst = unsafe { std::slice::from_raw_parts_mut(ptr.at(lo), hi - lo) };
        slice(isa, &a[lo..hi], &b[lo..hi], dst);
    });
    out
}

elementwise2!(silu_mul_slice, silu_mul_body);

/// `silu(g) · u` for slices of equal length, with `isa`.
pub fn silu_mul(g: &[f32], u: &[f32], isa: Isa) -> Vec<f32> {
    elementwise2_on_pool(g, u, isa, silu_mul_slice)
}

/// The candle op `silu(g) · u` (gated MLPs), f32 of the same shape.
#[derive(Debug, Clone, Copy)]
pub struct SiluMul;

impl candle_core::CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "rustformers-silu-mul"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(g), CpuStorage::F32(u)) = (gs, us) else {
            candle_core::bail!("silu-mul takes f32 inputs");
        };
        let (Some((ga, gb)), Some((ua, ub))) = (gl.contiguous_offsets(), ul.contiguous_offsets())
        else {
            candle_core::bail!("silu-mul takes contiguous inputs");
        };
        if gl.shape() != ul.shape() {
            candle_core::bail!("silu-mul: shapes {:?} and {:?}", gl.shape(), ul.shape());
        }
        Ok((
            CpuStorage::F32(silu_mul(&g[ga..gb], &u[ua..ub], Isa::detect())),
            gl.shape().clone(),
        ))
    }
}

/// The candle op: exact-form GELU of an f32 tensor (other dtypes: candle's own).
#[derive(Debug, Clone, Copy)]
pub struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "rustformers-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = s else {
            candle_core::bail!("gelu kernel takes f32 input, got {:?}", s.dtype());
        };
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("gelu kernel takes a contiguous input");
        };
        Ok((
            CpuStorage::F32(gelu(&data[start..end], Isa::detect())),
            l.shape().clone(),
        ))
    }
}

/// GELU's derivative times the incoming gradient: `g · (Φ(x) + x φ(x))`, with
/// `Φ(x) = (1 + erf(x/√2)) / 2` and `φ(x) = e^(-x²/2) / √(2π)`.
#[inline(always)]
fn gelu_grad_body(xs: &[f32], gs: &[f32], out: &mut [f32]) {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    for ((o, x), g) in out.iter_mut().zip(xs).zip(gs) {
        let cdf = 0.5 * (1.0 + erf_approx(x * std::f32::consts::FRAC_1_SQRT_2));
        let pdf = INV_SQRT_2PI * exp_approx(-0.5 * x * x);
        *o = g * (cdf + x * pdf);
    }
}

elementwise2!(gelu_grad_slice, gelu_grad_body);

/// The gradient of GELU (erf form) at `xs` times `gs` (same length), with `isa`, on the
/// pool.
pub fn gelu_grad(xs: &[f32], gs: &[f32], isa: Isa) -> Vec<f32> {
    elementwise2_on_pool(xs, gs, isa, gelu_grad_slice)
}

/// GELU (erf form) with its gradient, for training: the forward pass is [`GeluErf`]'s
/// kernel, the backward pass [`GeluErfGrad`] (candle's `gelu_erf` calls libm's scalar
/// `erff` per element both ways).
#[derive(Debug, Clone, Copy)]
pub struct GeluErfTrain;

impl CustomOp1 for GeluErfTrain {
    fn name(&self) -> &'static str {
        "rustformers-gelu-erf-train"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        GeluErf.cpu_fwd(s, l)
    }

    fn bwd(
        &self,
        arg: &candle_core::Tensor,
        _res: &candle_core::Tensor,
        grad_res: &candle_core::Tensor,
    ) -> candle_core::Result<Option<candle_core::Tensor>> {
        let grad = arg
            .contiguous()?
            .apply_op2_no_bwd(&grad_res.contiguous()?, &GeluErfGrad)?;
        Ok(Some(grad))
    }
}

/// `(x, g)` → `g · gelu'(x)` (f32, contiguous, same shape).
#[derive(Debug, Clone, Copy)]
pub struct GeluErfGrad;

impl candle_core::CustomOp2 for GeluErfGrad {
    fn name(&self) -> &'static str {
        "rustformers-gelu-erf-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = super::contiguous(super::f32_data(xs, "gelu gradient")?, xl, "gelu gradient")?;
        let g = super::contiguous(super::f32_data(gs, "gelu gradient")?, gl, "gelu gradient")?;
        if xl.shape() != gl.shape() {
            candle_core::bail!(
                "gelu gradient: input {:?} and gradient {:?} differ",
                xl.shape().dims(),
                gl.shape().dims()
            );
        }
        Ok((
            CpuStorage::F32(gelu_grad(x, g, Isa::detect())),
            xl.shape().clone(),
        ))
    }
}

/// Exact-form GELU: the vectorized kernel for f32 on CPU (with its gradient when `x`
/// takes part in a backward pass), candle's `gelu_erf` otherwise.
pub fn gelu_erf_tensor(x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
    if super::runs_kernels(x) {
        x.contiguous()?.apply_op1_no_bwd(&GeluErf)
    } else if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?.apply_op1(GeluErfTrain)
    } else {
        x.gelu_erf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GELU in f64: erf by its Taylor series below 3, erfc by its asymptotic series
    /// above (both accurate to ~1e-12 there).
    fn reference_gelu(x: f64) -> f64 {
        let z = x.abs() / std::f64::consts::SQRT_2;
        let erf_abs = if z < 3.0 {
            let mut term = z;
            let mut sum = z;
            for n in 1..200 {
                term *= -z * z / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            let mut term = 1.0f64;
            let mut sum = 1.0;
            for n in 1..60 {
                let next = term * -((2 * n - 1) as f64) / (2.0 * z * z);
                if next.abs() >= term.abs() {
                    break;
                }
                term = next;
                sum += term;
            }
            1.0 - (-z * z).exp() / (z * std::f64::consts::PI.sqrt()) * sum
        };
        0.5 * x * (1.0 + erf_abs.copysign(x))
    }

    #[test]
    fn exp_matches_std() {
        for i in -8700..8800 {
            let x = i as f32 * 0.01;
            let (a, b) = (exp_approx(x), x.exp());
            assert!(((a - b) / b).abs() < 3e-7, "exp({x}): {a} vs {b}");
            // The magic-number rounding picks the same n as round-ties-even.
            let n = (x * std::f32::consts::LOG2_E).round_ties_even();
            let t = x * std::f32::consts::LOG2_E + 12_582_912.0;
            assert_eq!(t - 12_582_912.0, n, "{x}");
        }
        // The 16-lane form (fused multiply-adds, vscalefps), where it runs.
        #[cfg(target_arch = "x86_64")]
        if Isa::all_available().contains(&Isa::Avx512Vnni) {
            use std::arch::x86_64::*;
            for i in (-8720..8820).step_by(16) {
                let xs: Vec<f32> = (i..i + 16).map(|j| j as f32 * 0.01).collect();
                let mut got = [0f32; 16];
                // SAFETY: AVX-512 runs here (checked above); 16 values each way.
                unsafe {
                    let v = exp_approx_avx512(_mm512_loadu_ps(xs.as_ptr()));
                    _mm512_storeu_ps(got.as_mut_ptr(), v);
                }
                for (x, a) in xs.iter().zip(got) {
                    let b = x.clamp(-87.0, 88.0).exp();
                    assert!(((a - b) / b).abs() < 3e-7, "avx512 exp({x}): {a} vs {b}");
                }
            }
        }
    }

    /// The training op's gradient against candle's `gelu_erf` backward (libm erf), and
    /// the gradient kernel against the exact derivative, on every instruction set.
    #[test]
    fn gelu_gradient_matches_the_exact_derivative() {
        use candle_core::{Device, Tensor, Var};
        let xs: Vec<f32> = (-6_000..6_000).map(|i| i as f32 * 1e-3).collect();
        let gs: Vec<f32> = xs.iter().map(|x| (x * 3.1).sin()).collect();
        for isa in Isa::all_available() {
            let got = gelu_grad(&xs, &gs, isa);
            for ((x, g), y) in xs.iter().zip(&gs).zip(&got) {
                let x64 = *x as f64;
                // d/dx [x Φ(x)] = Φ(x) + x φ(x), Φ from the f64 reference GELU.
                let cdf = if x64 == 0.0 {
                    0.5
                } else {
                    reference_gelu(x64) / x64
                };
                let pdf = (-0.5 * x64 * x64).exp() / (2.0 * std::f64::consts::PI).sqrt();
                let want = *g as f64 * (cdf + x64 * pdf);
                assert!(
                    (*y as f64 - want).abs() < 2e-6,
                    "{isa:?} gelu'({x}) · {g} = {y}, want {want}"
                );
            }
        }
        // Through autograd: the same gradients as candle's op, and the same values.
        let dev = Device::Cpu;
        let x = Var::from_vec(xs.clone(), (40, 300), &dev).unwrap();
        let w = Tensor::from_vec(gs.clone(), (40, 300), &dev).unwrap();
        let ours = gelu_erf_tensor(x.as_tensor()).unwrap();
        let theirs = x.as_tensor().gelu_erf().unwrap();
        let diff = (&ours - &theirs).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-6);
        let g_ours = (ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g_theirs = (theirs * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let a = g_ours.get(x.as_tensor()).unwrap();
        let b = g_theirs.get(x.as_tensor()).unwrap();
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 2e-6);
    }

    #[test]
    fn gelu_matches_the_exact_function_on_every_instruction_set() {
        let xs: Vec<f32> = (-12_000..12_000).map(|i| i as f32 * 1e-3).collect();
        for isa in Isa::all_available() {
            let ys = gelu(&xs, isa);
            for (x, y) in xs.iter().zip(&ys) {
                let want = reference_gelu(*x as f64);
                assert!(
                    (*y as f64 - want).abs() < 1e-6 * (1.0 + x.abs() as f64),
                    "{isa:?} gelu({x}) = {y}, want {want}"
                );
            }
        }
        // Extremes stay finite and saturate.
        let ys = gelu(&[-1e30, -100.0, 100.0, 1e30, 0.0], Isa::detect());
        assert_eq!(ys, vec![-0.0, -0.0, 100.0, 1e30, 0.0]);
    }

    #[test]
    fn silu_mul_matches_its_definition_on_every_instruction_set() {
        let g: Vec<f32> = (-40_000..40_000).map(|i| i as f32 * 2.5e-3).collect();
        let u: Vec<f32> = g.iter().map(|v| (v * 0.7).cos()).collect();
        for isa in Isa::all_available() {
            let y = silu_mul(&g, &u, isa);
            for ((g, u), y) in g.iter().zip(&u).zip(&y) {
                let (g64, u64) = (*g as f64, *u as f64);
                let want = g64 / (1.0 + (-g64).exp()) * u64;
                assert!(
                    (*y as f64 - want).abs() < 1e-6 * (1.0 + want.abs()),
                    "{isa:?} silu({g})*{u} = {y}, want {want}"
                );
            }
        }
    }

    #[test]
    fn op_keeps_shape_and_matches_candle() {
        let dev = candle_core::Device::Cpu;
        let x = candle_core::Tensor::arange(-300f32, 300f32, &dev)
            .unwrap()
            .affine(0.02, 0.0)
            .unwrap()
            .reshape((20, 30))
            .unwrap();
        let ours = gelu_erf_tensor(&x).unwrap();
        assert_eq!(ours.dims(), &[20, 30]);
        let theirs = x.gelu_erf().unwrap();
        let diff = crate::test_util::max_abs_diff(&ours, &theirs);
        assert!(diff < 1e-6, "{diff}");
    }
}
