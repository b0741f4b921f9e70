//! `y = x Wᵀ` in f32 on the kernel pool. For a few rows of `x` (decoding) candle's gemm
//! runs a one-row product on one thread with packing overhead; here the weight rows are
//! streamed once, 4 weight rows × up to 4 input rows per tile (AVX-512 FMA at run time, a
//! plain loop elsewhere). For many rows (prompts, encoder batches) the output columns are
//! split over the pool and each block runs gemm single-threaded, so that rayon's threads
//! (candle's gemm parallelism) do not compete with the pool's for the cores.

use candle_core::Tensor;

use super::Isa;
use super::{runs_kernels, tiled_product, Tile};

/// Input rows up to which [`matmul_t`] is used for an f32 linear layer.
pub const MAX_ROWS: usize = 8;

#[allow(clippy::too_many_arguments)]
fn tile_scalar(
    w: &[f32],
    k: usize,
    x: &[f32],
    m0: usize,
    mr: usize,
    n0: usize,
    nr: usize,
    out: &mut Tile,
) {
    for (r, row) in out.iter_mut().enumerate().take(mr) {
        let xr = &x[(m0 + r) * k..(m0 + r + 1) * k];
        for (c, o) in row.iter_mut().enumerate().take(nr) {
            let wr = &w[(n0 + c) * k..(n0 + c + 1) * k];
            *o = xr.iter().zip(wr).map(|(a, b)| a * b).sum();
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Tile;

    /// # Safety
    /// AVX-512 F; rows `m0..m0 + R` of `x` and `n0..n0 + C` of `w` exist (`k` values each).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile<const R: usize, const C: usize>(
        w: &[f32],
        k: usize,
        x: &[f32],
        m0: usize,
        n0: usize,
        out: &mut Tile,
    ) {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let xp = x.as_ptr().add(m0 * k);
        let wp = w.as_ptr().add(n0 * k);
        let mut kk = 0;
        while kk < k {
            let left = k - kk;
            let mask: __mmask16 = if left >= 16 {
                u16::MAX
            } else {
                (1u16 << left) - 1
            };
            let mut wv = [_mm512_setzero_ps(); C];
            for (c, v) in wv.iter_mut().enumerate() {
                *v = _mm512_maskz_loadu_ps(mask, wp.add(c * k + kk));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let xv = _mm512_maskz_loadu_ps(mask, xp.add(r * k + kk));
                for (c, a) in row.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(xv, wv[c], *a);
                }
            }
            kk += 16;
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
    w: &[f32],
    k: usize,
    x: &[f32],
    m0: usize,
    mr: usize,
    n0: usize,
    nr: usize,
    out: &mut Tile,
) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` only with AVX-512 (Isa::Avx512Vnni implies AVX-512 F); ranges
        // checked by `matmul_t`.
        unsafe {
            match (mr, nr) {
                (4, 4) => return x86::tile::<4, 4>(w, k, x, m0, n0, out),
                (4, 1) => return x86::tile::<4, 1>(w, k, x, m0, n0, out),
                (1, 4) => return x86::tile::<1, 4>(w, k, x, m0, n0, out),
                (1, 1) => return x86::tile::<1, 1>(w, k, x, m0, n0, out),
                _ => {}
            }
        }
    }
    let _ = simd;
    tile_scalar(w, k, x, m0, mr, n0, nr, out)
}

/// `x [m, k] · wᵀ` for `w [n, k]`, both row-major f32 → `[m, n]`.
pub fn matmul_slices(
    w: &[f32],
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
    isa: Isa,
) -> Result<Vec<f32>, String> {
    matmul_slices_bias(w, n, k, x, m, None, isa)
}

/// An error naming `what` unless `w` is `[n, k]`, `x` `[m, k]` and `bias` `n` values.
fn check_operands(
    what: &str,
    (w, n, k): (&[f32], usize, usize),
    (x, m): (&[f32], usize),
    bias: Option<&[f32]>,
) -> Result<(), String> {
    if w.len() != n * k || x.len() != m * k || bias.is_some_and(|b| b.len() != n) {
        return Err(format!(
            "{what}: weight of {} values for [{n}, {k}], input of {} for [{m}, {k}]",
            w.len(),
            x.len()
        ));
    }
    Ok(())
}

/// [`matmul_slices`] plus a bias of `n` values added to every row.
pub fn matmul_slices_bias(
    w: &[f32],
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
    bias: Option<&[f32]>,
    isa: Isa,
) -> Result<Vec<f32>, String> {
    check_operands("gemv", (w, n, k), (x, m), bias)?;
    let simd = isa == Isa::Avx512Vnni;
    Ok(tiled_product(
        m,
        n,
        m * n * k,
        1 << 16,
        bias,
        |i, mr, j, nr, out| tile(simd, w, k, x, i, mr, j, nr, out),
    ))
}

/// `x [m, k] · wᵀ` for `w [n, k]` with gemm per block of output columns, blocks spread
/// over the pool.
pub fn matmul_blocks(
    w: &[f32],
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
    bias: Option<&[f32]>,
) -> Result<Vec<f32>, String> {
    matmul_blocks_residual(w, n, k, x, m, bias, None)
}

/// [`matmul_blocks`] plus `residual` (`[m, n]`): the residual and the bias go into the
/// output first, and gemm adds the product to them (no pass of its own for the add).
pub fn matmul_blocks_residual(
    w: &[f32],
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
) -> Result<Vec<f32>, String> {
    check_operands("matmul", (w, n, k), (x, m), bias)?;
    if residual.is_some_and(|r| r.len() != m * n) {
        return Err(format!("matmul: a residual of {m} rows of {n} expected"));
    }
    let mut out = match (residual, bias) {
        (Some(r), Some(b)) => {
            let mut out = r.to_vec();
            for row in out.chunks_exact_mut(n) {
                for (o, b) in row.iter_mut().zip(b) {
                    *o += b;
                }
            }
            out
        }
        (Some(r), None) => r.to_vec(),
        (None, Some(b)) => b.repeat(m),
        (None, None) => vec![0f32; m * n],
    };
    let accumulate = bias.is_some() || residual.is_some();
    // SAFETY: out is [m, n]; x is [m, k] (checked above); (kk, j) = w[j·k + kk] is
    // inside [n, k].
    unsafe {
        super::gemm_on_pool(
            (m, n, k),
            out.as_mut_ptr(),
            super::Mat::rows(x, k),
            super::Mat::cols(w, k),
            accumulate,
        )
    };
    Ok(out)
}

/// `x [..., k] · wᵀ` for an f32 CPU weight `w [n, k]`: the row kernel up to
/// [`MAX_ROWS`] input rows, gemm blocks on the pool beyond; `None` when the operands do
/// not fit (the caller uses candle's matmul).
pub fn matmul_t(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
) -> candle_core::Result<Option<Tensor>> {
    matmul_t_residual(x, w, bias, None)
}

/// [`matmul_t`] plus `residual`, a tensor of the output's shape (added by the kernels,
/// without a pass of its own on the gemm path); `None` where the operands do not fit.
pub fn matmul_t_residual(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
) -> candle_core::Result<Option<Tensor>> {
    if !runs_kernels(x) || !runs_kernels(w) || w.rank() != 2 || !w.is_contiguous() {
        return Ok(None);
    }
    if residual.is_some_and(|r| !runs_kernels(r)) {
        return Ok(None);
    }
    if bias.is_some_and(|b| !runs_kernels(b) || b.elem_count() != w.dims()[0]) {
        return Ok(None);
    }
    let bias = bias
        .map(|b| b.flatten_all()?.to_vec1::<f32>())
        .transpose()?;
    let (n, k) = w.dims2()?;
    let dims = x.dims();
    if dims.last() != Some(&k) {
        return Ok(None);
    }
    let m = x.elem_count() / k.max(1);
    if m == 0 {
        return Ok(None);
    }
    let mut out_dims = dims.to_vec();
    if let Some(last) = out_dims.last_mut() {
        *last = n;
    }
    if residual.is_some_and(|r| r.dims() != out_dims.as_slice()) {
        return Ok(None);
    }
    let product = |xs: &[f32], ws: &[f32], res: Option<&[f32]>| {
        if m <= MAX_ROWS {
            let mut y = matmul_slices_bias(ws, n, k, xs, m, bias.as_deref(), Isa::detect())?;
            for (o, v) in y.iter_mut().zip(res.unwrap_or_default()) {
                *o += v;
            }
            Ok(y)
        } else {
            matmul_blocks_residual(ws, n, k, xs, m, bias.as_deref(), res)
        }
    };
    // The operands' values, without a copy where they are contiguous (all are f32 on
    // the CPU: checked above).
    let y = super::read_f32(x, |xs| {
        super::read_f32(w, |ws| match residual {
            Some(r) => super::read_f32(r, |rs| product(xs, ws, Some(rs))),
            None => Ok(product(xs, ws, None)),
        })
    })???
    .map_err(candle_core::Error::Msg)?;
    Ok(Some(Tensor::from_vec(y, out_dims, x.device())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_equals_the_f64_product() {
        for (m, n, k) in [(1, 9, 40), (6, 13, 96), (8, 300, 576), (3, 4, 15)] {
            let w: Vec<f32> = (0..n * k).map(|i| ((i as f32) * 0.37).sin()).collect();
            let x: Vec<f32> = (0..m * k).map(|i| ((i as f32) * 0.11).cos()).collect();
            for isa in Isa::all_available() {
                let y = matmul_slices(&w, n, k, &x, m, isa).unwrap();
                for i in 0..m {
                    for j in 0..n {
                        let want: f64 = (0..k)
                            .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                            .sum();
                        let got = y[i * n + j] as f64;
                        assert!((got - want).abs() < 1e-4, "{isa:?} ({i},{j}) {got} {want}");
                    }
                }
            }
        }
        assert!(matmul_slices(&[0.0; 5], 2, 3, &[0.0; 3], 1, Isa::Scalar).is_err());
    }

    #[test]
    fn tensor_entry_point_matches_candle_and_declines_what_it_cannot_run() {
        let dev = candle_core::Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (70, 48), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (1, 3, 48), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1.0, 70, &dev).unwrap();
        let ours = matmul_t(&x, &w, Some(&bias)).unwrap().unwrap();
        let theirs = x
            .broadcast_matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&bias)
            .unwrap();
        let diff = crate::test_util::max_abs_diff(&ours, &theirs);
        assert!(diff < 1e-4, "{diff}");
        assert!(matmul_t(&x, &w.t().unwrap(), None).unwrap().is_none());
        // Many rows: gemm blocks on the pool (column counts not multiples of the block).
        for n in [70, 300] {
            let w = Tensor::randn(0f32, 1.0, (n, 48), &dev).unwrap();
            let many = Tensor::randn(0f32, 1.0, (2, 45, 48), &dev).unwrap();
            let bias = Tensor::randn(0f32, 1.0, n, &dev).unwrap();
            let ours = matmul_t(&many, &w, Some(&bias)).unwrap().unwrap();
            assert_eq!(ours.dims(), &[2, 45, n]);
            let theirs = many
                .broadcast_matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&bias)
                .unwrap();
            let diff = crate::test_util::max_abs_diff(&ours, &theirs);
            assert!(diff < 1e-4, "{diff}");
        }
    }
}
