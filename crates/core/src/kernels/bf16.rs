//! `y = x Wᵀ` with `W` stored in bf16 and `x`, `y` in f32: the CPU path for models loaded
//! with `dtype = bf16` (candle has no CPU bf16 matmul). The activations are rounded to
//! bf16 and the products accumulate in f32, as oneDNN's bf16 matmul does for PyTorch; the
//! output stays f32 (PyTorch rounds it to bf16).
//!
//! With AVX512-BF16, `vdpbf16ps` multiplies 32 bf16 pairs per instruction; 4 activation
//! rows × 4 weight rows share each load. Elsewhere a plain loop gives the same sums up to
//! float rounding.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use half::bf16;

use super::{linear_op_fwd, tiled_product, Tile};

/// A weight `[rows, cols]` in bf16, row-major.
#[derive(Debug, Clone)]
pub struct PackedBf16 {
    rows: usize,
    cols: usize,
    data: Vec<bf16>,
}

impl PackedBf16 {
    /// Rounds an f32 weight (`rows * cols` values) to bf16 (nearest, ties to even).
    pub fn from_f32(rows: usize, cols: usize, w: &[f32]) -> Result<Self, String> {
        if w.len() != rows * cols {
            return Err(format!(
                "bf16 weight [{rows}, {cols}] from {} values",
                w.len()
            ));
        }
        Ok(Self {
            rows,
            cols,
            data: w.iter().map(|v| bf16::from_f32(*v)).collect(),
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The weight back as f32.
    pub fn to_f32(&self) -> Vec<f32> {
        self.data.iter().map(|v| v.to_f32()).collect()
    }
}

/// Whether this CPU runs `vdpbf16ps` (and `RUSTFORMERS_ISA` does not cap it).
pub fn has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::Isa::detect() == super::Isa::Avx512Vnni && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Plain path: outputs `(m0 + r, n0 + c)` for `r < mr`, `c < nr`.
#[allow(clippy::too_many_arguments)]
fn tile_scalar(
    w: &PackedBf16,
    x: &[bf16],
    m0: usize,
    mr: usize,
    n0: usize,
    nr: usize,
    out: &mut Tile,
) {
    let k = w.cols;
    for (r, row) in out.iter_mut().enumerate().take(mr) {
        let xr = &x[(m0 + r) * k..(m0 + r + 1) * k];
        for (c, o) in row.iter_mut().enumerate().take(nr) {
            let wr = &w.data[(n0 + c) * k..(n0 + c + 1) * k];
            *o = xr
                .iter()
                .zip(wr)
                .map(|(a, b)| a.to_f32() * b.to_f32())
                .sum();
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{PackedBf16, Tile};
    use half::bf16;

    /// Outputs `(m0 + r, n0 + c)` for `r < R`, `c < C`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/BF16; rows `m0..m0 + R` of `x` and `n0..n0 + C` of `w`
    /// exist, both with `w.cols` values.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn tile<const R: usize, const C: usize>(
        w: &PackedBf16,
        x: &[bf16],
        m0: usize,
        n0: usize,
        out: &mut Tile,
    ) {
        let k = w.cols;
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let xp = x.as_ptr().add(m0 * k) as *const i16;
        let wp = w.data.as_ptr().add(n0 * k) as *const i16;
        let mut kk = 0;
        while kk < k {
            let left = k - kk;
            let mask: __mmask32 = if left >= 32 {
                u32::MAX
            } else {
                (1u32 << left) - 1
            };
            let mut wv = [_mm512_setzero_si512(); C];
            for (c, v) in wv.iter_mut().enumerate() {
                *v = _mm512_maskz_loadu_epi16(mask, wp.add(c * k + kk));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let xv: __m512bh =
                    std::mem::transmute(_mm512_maskz_loadu_epi16(mask, xp.add(r * k + kk)));
                for (c, a) in row.iter_mut().enumerate() {
                    *a = _mm512_dpbf16_ps(*a, xv, std::mem::transmute::<__m512i, __m512bh>(wv[c]));
                }
            }
            kk += 32;
        }
        for r in 0..R {
            for c in 0..C {
                out[r][c] = _mm512_reduce_add_ps(acc[r][c]);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn tile(
    simd: bool,
    w: &PackedBf16,
    x: &[bf16],
    m0: usize,
    mr: usize,
    n0: usize,
    nr: usize,
    out: &mut Tile,
) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is true only when `has_avx512_bf16()`; the row ranges are in
        // bounds (see `matmul`).
        unsafe {
            match (mr, nr) {
                (4, 4) => return x86::tile::<4, 4>(w, x, m0, n0, out),
                (4, 1) => return x86::tile::<4, 1>(w, x, m0, n0, out),
                (1, 4) => return x86::tile::<1, 4>(w, x, m0, n0, out),
                (1, 1) => return x86::tile::<1, 1>(w, x, m0, n0, out),
                _ => {}
            }
        }
    }
    let _ = simd;
    tile_scalar(w, x, m0, mr, n0, nr, out)
}

/// `x [m, w.cols] · Wᵀ` → `[m, w.rows]`; `simd` selects the AVX512-BF16 path (only where
/// [`has_avx512_bf16`] holds).
pub fn matmul(w: &PackedBf16, x: &[f32], m: usize, simd: bool) -> Result<Vec<f32>, String> {
    let (n, k) = (w.rows, w.cols);
    if x.len() != m * k {
        return Err(format!(
            "bf16 matmul: input has {} values, expected {m} rows of {k}",
            x.len()
        ));
    }
    let simd = simd && has_avx512_bf16();
    let xb: Vec<bf16> = x.iter().map(|v| bf16::from_f32(*v)).collect();
    Ok(tiled_product(
        m,
        n,
        m * n * k,
        1 << 18,
        None,
        |i, mr, j, nr, out| tile(simd, w, &xb, i, mr, j, nr, out),
    ))
}

/// The candle op: `x [..., cols]` (f32) → `[..., rows]` (f32).
#[derive(Debug, Clone)]
pub struct Bf16MatMulOp {
    pub weight: std::sync::Arc<PackedBf16>,
}

impl CustomOp1 for Bf16MatMulOp {
    fn name(&self) -> &'static str {
        "rustformers-bf16-matmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let w = &self.weight;
        linear_op_fwd("bf16 matmul", s, l, w.rows, w.cols, |x, m| {
            matmul(w, x, m, true)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both paths, every tile shape (m and n not multiples of 4, k not a multiple of 32),
    /// against the f64 product of the bf16-rounded operands.
    #[test]
    fn paths_equal_the_product_of_rounded_operands() {
        for (m, n, k) in [(1, 9, 40), (6, 13, 96), (9, 4, 33), (5, 300, 1024)] {
            let w: Vec<f32> = (0..n * k).map(|i| ((i as f32) * 0.37).sin()).collect();
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i as f32) * 0.11).cos() * 3.0)
                .collect();
            let p = PackedBf16::from_f32(n, k, &w).unwrap();
            let wr = p.to_f32();
            let xr: Vec<f32> = x.iter().map(|v| bf16::from_f32(*v).to_f32()).collect();
            for simd in [false, true] {
                let y = matmul(&p, &x, m, simd).unwrap();
                for i in 0..m {
                    for j in 0..n {
                        let want: f64 = (0..k)
                            .map(|t| xr[i * k + t] as f64 * wr[j * k + t] as f64)
                            .sum();
                        let got = y[i * n + j] as f64;
                        assert!(
                            (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                            "simd={simd} m={m} n={n} k={k} ({i},{j}): {got} vs {want}"
                        );
                    }
                }
            }
        }
        assert!(PackedBf16::from_f32(2, 3, &[0.0; 5]).is_err());
        let p = PackedBf16::from_f32(2, 3, &[0.0; 6]).unwrap();
        assert!(matmul(&p, &[0.0; 4], 1, true).is_err());
    }
}
