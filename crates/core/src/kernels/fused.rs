//! Fused CPU ops for the decoder layer: RMS norm, rotary embedding and attention over a
//! KV cache. Each replaces a chain of candle ops (one allocation and one pass over the
//! data per op: about 70 ops per layer per decoded token) with one pass. They take f32
//! inputs on CPU; the callers in `linear`, `rotary` and `layers` fall back to the candle
//! chains for anything else, and the tests compare the two.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape};
use std::mem::MaybeUninit;

use super::pool::Pool;
use super::{contiguous, f32_data, gemm_into, Mat, OutPtr};

/// `weight_eff · x / sqrt(mean(x²) + eps)` over the last dimension, where `weight_eff`
/// is `weight + offset` (Gemma's `1 + w`).
#[derive(Debug, Clone, Copy)]
pub struct RmsNormOp {
    pub eps: f32,
    pub offset: f32,
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "rustformers-rms-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous(f32_data(xs, "rms norm")?, xl, "rms norm")?;
        let w = contiguous(f32_data(ws, "rms norm")?, wl, "rms norm")?;
        let dim = w.len();
        if dim == 0 || xl.shape().dims().last() != Some(&dim) {
            candle_core::bail!(
                "rms norm: weight of {dim} for input {:?}",
                xl.shape().dims()
            );
        }
        let mut out = vec![0f32; x.len()];
        for (row, o) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
            let ss: f32 = row.iter().map(|v| v * v).sum();
            let inv = 1.0 / (ss / dim as f32 + self.eps).sqrt();
            for ((o, v), w) in o.iter_mut().zip(row).zip(w) {
                *o = v * inv * (w + self.offset);
            }
        }
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }
}

/// Layer normalisation over the last dimension: `(x - mean) / sqrt(var + eps) · w + b`
/// (biased variance, as PyTorch), two passes over each row in f32.
#[derive(Debug, Clone, Copy)]
pub struct LayerNormOp {
    pub eps: f32,
}

#[inline(always)]
fn layer_norm_rows(x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [MaybeUninit<f32>]) {
    let dim = w.len();
    for (row, o) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        // Lane-wise partial sums so that the reductions vectorize.
        let mut lanes = [0f32; 16];
        for c in row.chunks(16) {
            for (l, v) in lanes.iter_mut().zip(c) {
                *l += v;
            }
        }
        let mean = lanes.iter().sum::<f32>() / dim as f32;
        let mut lanes = [0f32; 16];
        for c in row.chunks(16) {
            for (l, v) in lanes.iter_mut().zip(c) {
                let d = v - mean;
                *l += d * d;
            }
        }
        let var = lanes.iter().sum::<f32>() / dim as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for (((o, v), w), b) in o.iter_mut().zip(row).zip(w).zip(b) {
            o.write((v - mean) * inv * w + b);
        }
    }
}

/// # Safety
/// The CPU has AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn layer_norm_rows_avx512(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    eps: f32,
    out: &mut [MaybeUninit<f32>],
) {
    layer_norm_rows(x, w, b, eps, out)
}

/// LayerNorm of the whole rows of `x` (rows of `w.len()`) with weight `w` and bias `b`
/// (of `w.len()` too), row blocks on the pool.
pub(crate) fn layer_norm_forward(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    eps: f32,
) -> Result<Vec<f32>, String> {
    let dim = w.len();
    if dim == 0 || b.len() != dim {
        return Err(format!("layer norm: weight {dim}, bias {}", b.len()));
    }
    let rows = x.len() / dim;
    // Not zeroed first (a serial pass while the pool waits): every row is written.
    let mut out: Vec<f32> = Vec::with_capacity(rows * dim);
    let isa = super::Isa::detect();
    let run = |r0: usize, r1: usize, dst: &mut [MaybeUninit<f32>]| {
        let src = &x[r0 * dim..r1 * dim];
        #[cfg(target_arch = "x86_64")]
        if isa == super::Isa::Avx512Vnni {
            // SAFETY: AVX-512 was detected on this CPU.
            return unsafe { layer_norm_rows_avx512(src, w, b, eps, dst) };
        }
        let _ = isa;
        layer_norm_rows(src, w, b, eps, dst)
    };
    const ROWS: usize = 64;
    let tasks = rows.div_ceil(ROWS);
    if tasks <= 1 {
        run(0, rows, &mut out.spare_capacity_mut()[..rows * dim]);
    } else {
        let ptr = OutPtr(out.as_mut_ptr());
        Pool::global().run(tasks, &|t| {
            let (r0, r1) = (t * ROWS, ((t + 1) * ROWS).min(rows));
            // SAFETY: task t alone writes rows r0..r1 of `out`'s capacity, which
            // outlives the loop.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(
                    ptr.at(r0 * dim).cast::<MaybeUninit<f32>>(),
                    (r1 - r0) * dim,
                )
            };
            run(r0, r1, dst);
        });
    }
    // SAFETY: the rows 0..rows, rows·dim values, were written above.
    unsafe { out.set_len(rows * dim) };
    Ok(out)
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "rustformers-layer-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous(f32_data(xs, "layer norm")?, xl, "layer norm")?;
        let w = contiguous(f32_data(ws, "layer norm")?, wl, "layer norm")?;
        let b = contiguous(f32_data(bs, "layer norm")?, bl, "layer norm")?;
        let dim = w.len();
        if dim == 0 || b.len() != dim || xl.shape().dims().last() != Some(&dim) {
            candle_core::bail!(
                "layer norm: weight {dim}, bias {} for input {:?}",
                b.len(),
                xl.shape().dims()
            );
        }
        let out = layer_norm_forward(x, w, b, self.eps).map_err(candle_core::Error::Msg)?;
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    /// Training's backward pass (`super::train`): `∂x`, `∂w`, `∂b` in one pass.
    fn bwd(
        &self,
        x: &candle_core::Tensor,
        w: &candle_core::Tensor,
        _b: &candle_core::Tensor,
        _res: &candle_core::Tensor,
        g: &candle_core::Tensor,
    ) -> candle_core::Result<(
        Option<candle_core::Tensor>,
        Option<candle_core::Tensor>,
        Option<candle_core::Tensor>,
    )> {
        let (dx, dw, db) = super::train::layer_norm_bwd_tensors(x, w, g, self.eps)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// Rotary embedding of `x [batch, heads, seq, head_dim]` with `cos`/`sin`
/// `[batch, seq, rot]` (halves repeated, as `RotaryEmbedding::cos_sin` gives them):
/// rotate-half pairs `(i, i + rot/2)`, or interleaved pairs `(2i, 2i + 1)`. Channels past
/// `rot` pass through.
#[derive(Debug, Clone, Copy)]
pub struct RotaryOp {
    pub interleaved: bool,
}

impl CustomOp3 for RotaryOp {
    fn name(&self) -> &'static str {
        "rustformers-rotary"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        cs: &CpuStorage,
        cl: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous(f32_data(xs, "rotary")?, xl, "rotary")?;
        let cos = contiguous(f32_data(cs, "rotary")?, cl, "rotary")?;
        let sin = contiguous(f32_data(ss, "rotary")?, sl, "rotary")?;
        let (b, h, s, d) = xl.shape().dims4()?;
        let (cb, cs_, rot) = cl.shape().dims3()?;
        if cb != b || cs_ != s || rot > d || rot % 2 != 0 || sl.shape() != cl.shape() {
            candle_core::bail!(
                "rotary: x {:?} with cos {:?} / sin {:?}",
                xl.shape().dims(),
                cl.shape().dims(),
                sl.shape().dims()
            );
        }
        let half = rot / 2;
        let mut out = x.to_vec();
        for bi in 0..b {
            for hi in 0..h {
                for si in 0..s {
                    let base = ((bi * h + hi) * s + si) * d;
                    let cbase = (bi * s + si) * rot;
                    let src = &x[base..base + d];
                    let dst = &mut out[base..base + d];
                    for i in 0..half {
                        // cos/sin repeat their first half, so channel i and i + half
                        // share a frequency.
                        let (c, sn) = (cos[cbase + i], sin[cbase + i]);
                        let (a, bb) = if self.interleaved {
                            (2 * i, 2 * i + 1)
                        } else {
                            (i, i + half)
                        };
                        let (x0, x1) = (src[a], src[bb]);
                        dst[a] = x0 * c - x1 * sn;
                        dst[bb] = x1 * c + x0 * sn;
                    }
                }
            }
        }
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }
}

/// Attention for a few query positions over a (possibly strided) KV cache, with grouped
/// query heads: `q [b, heads, s, d]`, `k`/`v` `[b, kv_heads, t, d]` (any strides), an
/// additive `mask` `[b, 1, s, t]` (row-major, f32). Returns `[b, s, heads · d]` — the
/// layout the output projection takes, so no transpose follows. Scores are
/// `q·k · scale`, soft-capped as `cap · tanh(x / cap)` when `softcap` is set (Gemma 2),
/// plus the mask; the softmax runs in f32.
#[derive(Debug, Clone)]
pub struct AttentionOp {
    pub mask: Vec<f32>,
    pub scale: f32,
    pub softcap: Option<f32>,
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "rustformers-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let q = contiguous(f32_data(qs, "attention")?, ql, "attention")?;
        let k = f32_data(ks, "attention")?;
        let v = f32_data(vs, "attention")?;
        let (b, h, s, d) = ql.shape().dims4()?;
        let (kb, kvh, t, kd) = kl.shape().dims4()?;
        if kb != b || kd != d || kvh == 0 || h % kvh != 0 || vl.shape() != kl.shape() {
            candle_core::bail!(
                "attention: q {:?}, k {:?}, v {:?}",
                ql.shape().dims(),
                kl.shape().dims(),
                vl.shape().dims()
            );
        }
        if self.mask.len() != b * s * t {
            candle_core::bail!(
                "attention: mask of {} values for [{b}, 1, {s}, {t}]",
                self.mask.len()
            );
        }
        let (ko, kst) = (kl.start_offset(), kl.stride());
        let (vo, vst) = (vl.start_offset(), vl.stride());
        if kst[3] != 1 || vst[3] != 1 {
            candle_core::bail!("attention: keys and values need contiguous head vectors");
        }
        // The last element each of k and v reaches must be in bounds.
        let reach = |o: usize, st: &[usize]| {
            o + (b - 1) * st[0] + (kvh - 1) * st[1] + t.saturating_sub(1) * st[2] + d
        };
        if t == 0 || reach(ko, kst) > k.len() || reach(vo, vst) > v.len() {
            candle_core::bail!("attention: key/value layout out of bounds");
        }
        let n_rep = h / kvh;
        let isa = super::Isa::detect();
        let mut out = vec![0f32; b * s * h * d];
        let ptr = OutPtr(out.as_mut_ptr());
        let task = |bh: usize| {
            let (bi, hi) = (bh / h, bh % h);
            let g = hi / n_rep;
            let kb = ko + bi * kst[0] + g * kst[1];
            let vb = vo + bi * vst[0] + g * vst[1];
            if s > ROW_KERNEL_MAX_QUERIES {
                // Many queries (a prompt, an encoder batch): both products through gemm.
                let head = HeadGemm {
                    q: &q[(bi * h + hi) * s * d..][..s * d],
                    q_step: d,
                    s,
                    k: &k[kb..],
                    k_step: kst[2],
                    v: &v[vb..],
                    v_step: vst[2],
                    mask: &self.mask[bi * s * t..][..s * t],
                    scale: self.scale,
                    softcap: self.softcap,
                    t,
                    d,
                };
                // SAFETY: out[bi, si, hi, ..] for every si belongs to this task; the
                // pointer and row stride h·d stay inside `out` (see `attend_head_gemm`).
                unsafe { attend_head_gemm(&head, ptr.at((bi * s * h + hi) * d), h * d) };
                return;
            }
            let mut scores = vec![0f32; t];
            for si in 0..s {
                let qrow = &q[((bi * h + hi) * s + si) * d..][..d];
                let mrow = &self.mask[(bi * s + si) * t..][..t];
                // SAFETY: task (bi, hi) alone writes out[bi, si, hi, ..] for every si.
                let o = unsafe {
                    std::slice::from_raw_parts_mut(ptr.at(((bi * s + si) * h + hi) * d), d)
                };
                let row = AttendRow {
                    k: &k[kb..],
                    k_step: kst[2],
                    v: &v[vb..],
                    v_step: vst[2],
                    scale: self.scale,
                    softcap: self.softcap,
                };
                #[cfg(target_arch = "x86_64")]
                if isa == super::Isa::Avx512Vnni {
                    // SAFETY: AVX-512 was detected on this CPU.
                    unsafe { attend_row_avx512(&row, qrow, mrow, &mut scores, o) };
                    continue;
                }
                attend_row(&row, qrow, mrow, &mut scores, o);
            }
        };
        let tasks = b * h;
        if tasks > 1 && s * t * d * tasks >= 1 << 16 {
            Pool::global().run(tasks, &task);
        } else {
            (0..tasks).for_each(task);
        }
        Ok((CpuStorage::F32(out), Shape::from((b, s, h * d))))
    }
}

/// Query rows above which a head's attention runs through gemm instead of row by row.
const ROW_KERNEL_MAX_QUERIES: usize = 16;

/// One head's operands for the gemm path (keys and values from the head's first
/// position, rows `k_step` / `v_step` apart).
pub(super) struct HeadGemm<'a> {
    /// `s` query rows `q_step` apart.
    pub(super) q: &'a [f32],
    pub(super) q_step: usize,
    pub(super) s: usize,
    pub(super) k: &'a [f32],
    pub(super) k_step: usize,
    pub(super) v: &'a [f32],
    pub(super) v_step: usize,
    pub(super) mask: &'a [f32],
    pub(super) scale: f32,
    pub(super) softcap: Option<f32>,
    pub(super) t: usize,
    pub(super) d: usize,
}

/// The attention probabilities `softmax(q kᵀ · scale (+cap) + mask)` of one head,
/// `[s, t]` row-major.
pub(super) fn head_probs(a: &HeadGemm) -> Vec<f32> {
    let (s, t, d) = (a.s, a.t, a.d);
    let mut scores = vec![0f32; s * t];
    // SAFETY: `scores` is [s, t]; q holds s rows q_step apart and k t rows k_step apart,
    // each of d values (checked by the callers). scores[i, j] = Σ q[i, x] k[j, x].
    unsafe {
        gemm_into(
            (s, t, d),
            scores.as_mut_ptr(),
            t,
            Mat::rows(a.q, a.q_step),
            Mat::cols(a.k, a.k_step),
            false,
        )
    };
    #[cfg(target_arch = "x86_64")]
    if super::Isa::detect() == super::Isa::Avx512Vnni {
        // SAFETY: AVX-512 was detected on this CPU.
        unsafe { softmax_rows_avx512(&mut scores, a) };
    } else {
        softmax_rows(&mut scores, a);
    }
    #[cfg(not(target_arch = "x86_64"))]
    softmax_rows(&mut scores, a);
    scores
}

/// `softmax(q kᵀ · scale (+cap) + mask) v` for one head, written to `dst` rows
/// `dst_rs` apart: gemm, then the row-wise softmax, then gemm.
///
/// # Safety
/// `dst + i·dst_rs + [0, d)` is writable for every query row `i`, and nothing else
/// writes there meanwhile; `k` and `v` hold `t` rows at their steps (checked by the op).
pub(super) unsafe fn attend_head_gemm(a: &HeadGemm, dst: *mut f32, dst_rs: usize) {
    #[cfg(target_arch = "x86_64")]
    if a.softcap.is_none() && super::Isa::detect() == super::Isa::Avx512Vnni {
        // SAFETY: AVX-512 was detected; the operands and `dst` as this function's.
        let done = unsafe {
            match (a.t.div_ceil(16), a.d) {
                (1, 32) => attend_small_avx512::<1, 2>(a, dst, dst_rs),
                (2, 32) => attend_small_avx512::<2, 2>(a, dst, dst_rs),
                (3, 32) => attend_small_avx512::<3, 2>(a, dst, dst_rs),
                (4, 32) => attend_small_avx512::<4, 2>(a, dst, dst_rs),
                (1, 64) => attend_small_avx512::<1, 4>(a, dst, dst_rs),
                (2, 64) => attend_small_avx512::<2, 4>(a, dst, dst_rs),
                (3, 64) => attend_small_avx512::<3, 4>(a, dst, dst_rs),
                (4, 64) => attend_small_avx512::<4, 4>(a, dst, dst_rs),
                _ => false,
            }
        };
        if done {
            return;
        }
    }
    attend_head_by_gemm(a, dst, dst_rs)
}

/// [`attend_head_gemm`] through gemm calls (any size).
///
/// # Safety
/// As [`attend_head_gemm`].
unsafe fn attend_head_by_gemm(a: &HeadGemm, dst: *mut f32, dst_rs: usize) {
    let scores = head_probs(a);
    let (s, t, d) = (a.s, a.t, a.d);
    // out[i, x] = Σ p[i, j] v[j, x]
    gemm_into(
        (s, d, t),
        dst,
        dst_rs,
        Mat::rows(&scores, t),
        Mat::rows(a.v, a.v_step),
        false,
    );
}

/// Query rows computed together by [`attend_small_avx512`].
#[cfg(target_arch = "x86_64")]
const SMALL_ROWS: usize = 4;

/// One short head (`t <= 16·NV` keys, `d = 16·DV`) in registers, without gemm calls
/// (whose set-up costs more than a head of a short sentence): kᵀ into a block in L1,
/// then per group of [`SMALL_ROWS`] query rows the scores, the masked softmax (as
/// [`softmax_rows_avx512`]: `score·scale + mask`, terms below the cutoff zero) and
/// `p v`. Returns false (nothing written) where the head does not fit.
///
/// # Safety
/// The CPU has AVX-512 F; the operands and `dst` as [`attend_head_gemm`]'s.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
// Lane and row indices address several register arrays at once.
#[allow(clippy::needless_range_loop)]
unsafe fn attend_small_avx512<const NV: usize, const DV: usize>(
    a: &HeadGemm,
    dst: *mut f32,
    dst_rs: usize,
) -> bool {
    use std::arch::x86_64::*;
    let (s, t, d) = (a.s, a.t, DV * 16);
    let tp = NV * 16;
    let holds = |m: &[f32], rows: usize, step: usize| m.len() >= (rows - 1) * step + d;
    if t == 0 || t > tp || a.d != d || s == 0 || a.mask.len() < s * t {
        return false;
    }
    if !holds(a.q, s, a.q_step) || !holds(a.k, t, a.k_step) || !holds(a.v, t, a.v_step) {
        return false;
    }
    // kt[x·tp + j] = k[j, x], keys past t zero: 16 keys × 16 dimensions at a time
    // through registers (element-wise stores were a fifth of the kernel, and zeroing
    // the whole block first another memset per head). Every value read below, x < d
    // and j < tp, is written here.
    let mut kt_buf = std::mem::MaybeUninit::<[f32; 64 * 64]>::uninit();
    let kt_ptr = kt_buf.as_mut_ptr().cast::<f32>();
    for jg in 0..NV {
        for h in 0..DV {
            let rows: [__m512; 16] = std::array::from_fn(|r| {
                let j = 16 * jg + r;
                if j < t {
                    // SAFETY: key j < t has d values at j·k_step (checked above).
                    _mm512_loadu_ps(a.k.as_ptr().add(j * a.k_step + 16 * h))
                } else {
                    _mm512_setzero_ps()
                }
            });
            let cols = transpose_16x16(rows);
            for (c, v) in cols.iter().enumerate() {
                // SAFETY: (16h + c)·tp + 16jg + 16 ≤ d·tp ≤ 64·64.
                _mm512_storeu_ps(kt_ptr.add((16 * h + c) * tp + 16 * jg), *v);
            }
        }
    }
    // SAFETY: the reads below stay at x < d, j < tp, all written above.
    let kt = std::slice::from_raw_parts(kt_ptr, d * tp);
    let scale = _mm512_set1_ps(a.scale);
    let mut p = [[0f32; 64]; SMALL_ROWS];
    let mut i = 0;
    while i < s {
        // Rows past the last repeat it (computed, not written).
        let rows: [usize; SMALL_ROWS] = std::array::from_fn(|r| (i + r).min(s - 1));
        let mut sc = [[_mm512_setzero_ps(); NV]; SMALL_ROWS];
        for x in 0..d {
            let kv: [__m512; NV] =
                std::array::from_fn(|v| _mm512_loadu_ps(kt[x * tp + 16 * v..].as_ptr()));
            for (r, row) in rows.iter().enumerate() {
                // SAFETY: q holds s rows q_step apart of d values (checked above).
                let qb = _mm512_set1_ps(*a.q.get_unchecked(row * a.q_step + x));
                for v in 0..NV {
                    sc[r][v] = _mm512_fmadd_ps(qb, kv[v], sc[r][v]);
                }
            }
        }
        for (r, row) in rows.iter().enumerate() {
            let mrow = a.mask[row * t..].as_ptr();
            let mut maxv = _mm512_set1_ps(f32::NEG_INFINITY);
            for v in 0..NV {
                let lanes = tail_mask(t.saturating_sub(16 * v));
                let m = _mm512_maskz_loadu_ps(lanes, mrow.add(16 * v));
                sc[r][v] = _mm512_fmadd_ps(sc[r][v], scale, m);
                maxv = _mm512_mask_max_ps(maxv, lanes, maxv, sc[r][v]);
            }
            let max = _mm512_set1_ps(_mm512_reduce_max_ps(maxv));
            let mut sum = _mm512_setzero_ps();
            for v in 0..NV {
                let lanes = tail_mask(t.saturating_sub(16 * v));
                let e =
                    _mm512_maskz_mov_ps(lanes, softmax_exp_avx512(_mm512_sub_ps(sc[r][v], max)));
                sc[r][v] = e;
                sum = _mm512_add_ps(sum, e);
            }
            let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum));
            for v in 0..NV {
                _mm512_storeu_ps(p[r][16 * v..].as_mut_ptr(), _mm512_mul_ps(sc[r][v], inv));
            }
        }
        // out[r, x] = Σ_j p[r, j] v[j, x]
        let mut acc = [[_mm512_setzero_ps(); DV]; SMALL_ROWS];
        for j in 0..t {
            let vrow = a.v[j * a.v_step..][..d].as_ptr();
            let vv: [__m512; DV] = std::array::from_fn(|c| _mm512_loadu_ps(vrow.add(16 * c)));
            for r in 0..SMALL_ROWS {
                let pb = _mm512_set1_ps(p[r][j]);
                for c in 0..DV {
                    acc[r][c] = _mm512_fmadd_ps(pb, vv[c], acc[r][c]);
                }
            }
        }
        for (r, accr) in acc.iter().enumerate().take(SMALL_ROWS.min(s - i)) {
            let o = dst.add((i + r) * dst_rs);
            for (c, v) in accr.iter().enumerate() {
                _mm512_storeu_ps(o.add(16 * c), *v);
            }
        }
        i += SMALL_ROWS;
    }
    true
}

/// The transpose of 16 rows of 16 values: `out[c]` lane `r` is `rows[r]` lane `c`
/// (pairs of rows interleaved, then pairs of pairs, then 128-bit quarters twice).
///
/// # Safety
/// The CPU has AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn transpose_16x16(
    rows: [std::arch::x86_64::__m512; 16],
) -> [std::arch::x86_64::__m512; 16] {
    use std::arch::x86_64::*;
    // Within each 128-bit quarter: a[2i] = (r0 s0 r1 s1), a[2i+1] = (r2 s2 r3 s3) of
    // rows r = 2i, s = 2i + 1.
    let a: [__m512; 16] = std::array::from_fn(|i| {
        let (x, y) = (rows[i & !1], rows[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_ps(x, y)
        } else {
            _mm512_unpackhi_ps(x, y)
        }
    });
    // b[4g + c], quarter q: column 4q + c of rows 4g .. 4g + 4.
    let b: [__m512; 16] = std::array::from_fn(|i| {
        let (g, c) = (i / 4, i % 4);
        let (x, y) = (
            _mm512_castps_pd(a[4 * g + c / 2]),
            _mm512_castps_pd(a[4 * g + 2 + c / 2]),
        );
        _mm512_castpd_ps(if c % 2 == 0 {
            _mm512_unpacklo_pd(x, y)
        } else {
            _mm512_unpackhi_pd(x, y)
        })
    });
    // Gather the quarters: column 4q + c is quarter q of b[c], b[4 + c], b[8 + c],
    // b[12 + c].
    let mut out = [_mm512_setzero_ps(); 16];
    for c in 0..4 {
        let even_lo = _mm512_shuffle_f32x4::<0x88>(b[c], b[4 + c]);
        let odd_lo = _mm512_shuffle_f32x4::<0xdd>(b[c], b[4 + c]);
        let even_hi = _mm512_shuffle_f32x4::<0x88>(b[8 + c], b[12 + c]);
        let odd_hi = _mm512_shuffle_f32x4::<0xdd>(b[8 + c], b[12 + c]);
        out[c] = _mm512_shuffle_f32x4::<0x88>(even_lo, even_hi);
        out[8 + c] = _mm512_shuffle_f32x4::<0xdd>(even_lo, even_hi);
        out[4 + c] = _mm512_shuffle_f32x4::<0x88>(odd_lo, odd_hi);
        out[12 + c] = _mm512_shuffle_f32x4::<0xdd>(odd_lo, odd_hi);
    }
    out
}

/// Scaled, soft-capped, masked softmax of each row of `scores` (`t` wide), in place.
#[inline(always)]
fn softmax_rows(scores: &mut [f32], a: &HeadGemm) {
    let t = a.t;
    for (row, mrow) in scores.chunks_exact_mut(t).zip(a.mask.chunks_exact(t)) {
        for (sc, m) in row.iter_mut().zip(mrow) {
            let mut x = *sc * a.scale;
            if let Some(cap) = a.softcap {
                x = (x / cap).tanh() * cap;
            }
            *sc = x + m;
        }
        let max = row_max(row);
        let inv = 1.0 / exp_shifted_sum(row, max);
        for sc in row.iter_mut() {
            *sc *= inv;
        }
    }
}

/// The largest value of `row`, in 16 select-based lanes so that it vectorizes (a single
/// running max is a scalar dependency chain).
#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = row.chunks_exact(16);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, v| if *v > m { *v } else { m });
    for c in chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l = if *v > *l { *v } else { *l };
        }
    }
    lanes.iter().fold(tail, |m, v| if *v > m { *v } else { m })
}

/// Shifted scores below which a softmax term is taken as 0: `e^-80 ≈ 1.8e-35` is nothing
/// next to the row's largest term (1), and flushing keeps the normalised probabilities
/// of masked keys out of the subnormal range, where x86 multiplies take microcode
/// assists (a training step that multiplied them through its gradients ran 10× slower).
const SOFTMAX_CUTOFF: f32 = -80.0;

/// `e^d` for a softmax term `d = x − max ≤ 0`: 0 below [`SOFTMAX_CUTOFF`].
#[inline(always)]
fn softmax_exp(d: f32) -> f32 {
    let e = super::activation::exp_approx(d);
    if d < SOFTMAX_CUTOFF {
        0.0
    } else {
        e
    }
}

/// [`softmax_exp`] on 16 lanes.
///
/// # Safety
/// The CPU has AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn softmax_exp_avx512(d: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let keep = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(d, _mm512_set1_ps(SOFTMAX_CUTOFF));
    _mm512_maskz_mov_ps(keep, super::activation::exp_approx_avx512(d))
}

/// `row[i] = e^(row[i] - max)`, returning their sum: 16 lanes at a time, the tail
/// through a padded buffer, so that both the exponentials and the sum vectorize (a running
/// sum would keep the loop scalar).
#[inline(always)]
fn exp_shifted_sum(row: &mut [f32], max: f32) -> f32 {
    let mut lanes = [0f32; 16];
    let mut chunks = row.chunks_exact_mut(16);
    for c in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(c.iter_mut()) {
            *v = softmax_exp(*v - max);
            *l += *v;
        }
    }
    let rem = chunks.into_remainder();
    let mut buf = [0f32; 16];
    buf[..rem.len()].copy_from_slice(rem);
    for v in buf.iter_mut() {
        *v = softmax_exp(*v - max);
    }
    rem.copy_from_slice(&buf[..rem.len()]);
    for (l, v) in lanes.iter_mut().zip(&buf[..rem.len()]) {
        *l += *v;
    }
    lanes.iter().sum()
}

/// The lanes of a 16-lane piece that hold values when `left` remain in the row.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn tail_mask(left: usize) -> u16 {
    if left >= 16 {
        0xffff
    } else {
        (1u16 << left) - 1
    }
}

/// # Safety
/// The CPU has AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn softmax_rows_avx512(scores: &mut [f32], a: &HeadGemm) {
    use std::arch::x86_64::*;
    if a.softcap.is_some() || a.t == 0 {
        return softmax_rows(scores, a);
    }
    let t = a.t;
    let scale = _mm512_set1_ps(a.scale);
    // Rows are short in encoders (a sentence's tokens): whole 16-lane pieces with the
    // tail masked, rather than a scalar remainder per row.
    for (row, mrow) in scores.chunks_exact_mut(t).zip(a.mask.chunks_exact(t)) {
        let mut maxv = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut j = 0;
        while j < t {
            let lanes = tail_mask(t - j);
            let p = row.as_mut_ptr().add(j);
            let x = _mm512_fmadd_ps(
                _mm512_maskz_loadu_ps(lanes, p),
                scale,
                _mm512_maskz_loadu_ps(lanes, mrow.as_ptr().add(j)),
            );
            _mm512_mask_storeu_ps(p, lanes, x);
            maxv = _mm512_mask_max_ps(maxv, lanes, maxv, x);
            j += 16;
        }
        let max = _mm512_set1_ps(_mm512_reduce_max_ps(maxv));
        let mut sum = _mm512_setzero_ps();
        j = 0;
        while j < t {
            let lanes = tail_mask(t - j);
            let p = row.as_mut_ptr().add(j);
            let e = softmax_exp_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, p), max));
            _mm512_mask_storeu_ps(p, lanes, e);
            sum = _mm512_mask_add_ps(sum, lanes, sum, e);
            j += 16;
        }
        let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum));
        j = 0;
        while j < t {
            let lanes = tail_mask(t - j);
            let p = row.as_mut_ptr().add(j);
            _mm512_mask_storeu_ps(
                p,
                lanes,
                _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes, p), inv),
            );
            j += 16;
        }
    }
}

/// The keys and values one query row attends over (from the head's first position).
struct AttendRow<'a> {
    k: &'a [f32],
    k_step: usize,
    v: &'a [f32],
    v_step: usize,
    scale: f32,
    softcap: Option<f32>,
}

/// `Σ a·b` with 16 partial sums, so that it vectorizes.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..16 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// One query row: scores over every key (scaled, soft-capped, masked), softmax, and the
/// weighted sum of the values into `o`.
#[inline(always)]
fn attend_row(r: &AttendRow, q: &[f32], mask: &[f32], scores: &mut [f32], o: &mut [f32]) {
    let d = q.len();
    let mut max = f32::NEG_INFINITY;
    for (j, (sc, m)) in scores.iter_mut().zip(mask).enumerate() {
        let mut x = dot(q, &r.k[j * r.k_step..][..d]) * r.scale;
        if let Some(cap) = r.softcap {
            x = (x / cap).tanh() * cap;
        }
        *sc = x + m;
        max = max.max(*sc);
    }
    let inv = 1.0 / exp_shifted_sum(scores, max);
    o.fill(0.0);
    for (j, p) in scores.iter().enumerate() {
        let w = p * inv;
        for (o, x) in o.iter_mut().zip(&r.v[j * r.v_step..][..d]) {
            *o += w * x;
        }
    }
}

/// # Safety
/// The CPU has AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn attend_row_avx512(
    r: &AttendRow,
    q: &[f32],
    mask: &[f32],
    scores: &mut [f32],
    o: &mut [f32],
) {
    attend_row(r, q, mask, scores, o)
}

/// Attention probabilities from raw scores in one pass per row:
/// `softmax(scores · scale + mask)` over the last dimension, for `scores [b, h, s, t]` and
/// an additive `mask [b or 1, 1, s, t]`. The same operations in the same order as the
/// op-by-op path (`scores * scale`, `broadcast_add(mask)`, candle's `softmax_last_dim`:
/// max, `exp(v − max)`, a sequential f32 sum, division), so the result is the same to
/// the bit; the exponential is skipped where `v − max < −110`, whose `exp` is exactly 0
/// in f32 (the masked positions: libm's slow underflow path took a sixth of a prompt's
/// attention time). Rows run on the kernel pool.
#[derive(Debug, Clone, Copy)]
pub struct MaskedSoftmaxOp {
    pub scale: f32,
}

/// Below this, `exp` rounds to 0 in f32 (the smallest subnormal is `e^−103.28`).
const EXP_ZERO_BELOW: f32 = -110.0;

/// One row: `out = softmax(s · scale + m)`, as [`MaskedSoftmaxOp`] describes.
fn masked_softmax_row(s: &[f32], m: &[f32], scale: f32, out: &mut [f32]) {
    for ((o, v), mv) in out.iter_mut().zip(s).zip(m) {
        // `Tensor * f64` is candle's affine `v · scale + 0`.
        *o = (v * scale + 0.0) + mv;
    }
    let mut max = f32::NEG_INFINITY;
    for v in out.iter() {
        max = max.max(*v);
    }
    for o in out.iter_mut() {
        let d = *o - max;
        *o = if d < EXP_ZERO_BELOW { 0.0 } else { d.exp() };
    }
    let mut sum = 0f32;
    for o in out.iter() {
        sum += o;
    }
    for o in out.iter_mut() {
        *o /= sum;
    }
}

impl CustomOp2 for MaskedSoftmaxOp {
    fn name(&self) -> &'static str {
        "rustformers-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        ss: &CpuStorage,
        sl: &Layout,
        ms: &CpuStorage,
        ml: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let scores = contiguous(f32_data(ss, "masked softmax")?, sl, "masked softmax")?;
        let mask = contiguous(f32_data(ms, "masked softmax")?, ml, "masked softmax")?;
        let (b, h, s, t) = sl.shape().dims4()?;
        let (mb, one, ms_, mt) = ml.shape().dims4()?;
        if !(mb == b || mb == 1) || one != 1 || ms_ != s || mt != t {
            candle_core::bail!(
                "masked softmax: mask {:?} for scores {:?}",
                ml.shape().dims(),
                sl.shape().dims()
            );
        }
        let rows = b * h * s;
        let mut out = vec![0f32; rows * t];
        if t == 0 {
            return Ok((CpuStorage::F32(out), sl.shape().clone()));
        }
        // Row r is (batch r / (h·s), query r % s); its mask row (batch or 0, query).
        let mask_row = |r: usize| {
            let (bi, si) = (r / (h * s), r % s);
            let bm = if mb == 1 { 0 } else { bi };
            &mask[(bm * s + si) * t..(bm * s + si + 1) * t]
        };
        const ROWS: usize = 32;
        let tasks = rows.div_ceil(ROWS);
        let ptr = OutPtr(out.as_mut_ptr());
        let run = |t0: usize| {
            for r in t0 * ROWS..((t0 + 1) * ROWS).min(rows) {
                // SAFETY: row r of `out` belongs to this task alone; `out` outlives the
                // pool run.
                let o = unsafe { std::slice::from_raw_parts_mut(ptr.at(r * t), t) };
                masked_softmax_row(&scores[r * t..(r + 1) * t], mask_row(r), self.scale, o);
            }
        };
        if tasks <= 1 {
            run(0);
        } else {
            Pool::global().run(tasks, &run);
        }
        Ok((CpuStorage::F32(out), sl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `q` (`s` rows), `k` and `v` (`t` rows), rows of `step` values.
    fn head_operands(s: usize, t: usize, step: usize) -> [Vec<f32>; 3] {
        let val = |i: usize, f: f32| ((i as f32) * f).sin() * 2.0;
        [(s, 0.37), (t, 0.11), (t, 0.23)]
            .map(|(rows, f)| (0..rows * step).map(|i| val(i, f)).collect())
    }

    /// One head of `d` columns over those operands (scale 0.17, no soft cap).
    fn test_head<'a>(
        (q, k, v): (&'a [f32], &'a [f32], &'a [f32]),
        mask: &'a [f32],
        step: usize,
        (s, t, d): (usize, usize, usize),
    ) -> HeadGemm<'a> {
        HeadGemm {
            q,
            q_step: step,
            s,
            k,
            k_step: step,
            v,
            v_step: step,
            mask,
            scale: 0.17,
            softcap: None,
            t,
            d,
        }
    }

    /// Timing of one short head (not a test: `cargo test --release -p rustformers-core
    /// short_head_speed -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn short_head_speed() {
        for (s, t, d) in [(23, 23, 32), (35, 35, 32), (64, 64, 32)] {
            let step = 12 * d;
            let [q, k, v] = head_operands(s, t, step);
            let mask = vec![0f32; s * t];
            let mut out = vec![0f32; s * step];
            let head = test_head((&q, &k, &v), &mask, step, (s, t, d));
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t0 = std::time::Instant::now();
                for _ in 0..4000 {
                    // SAFETY: the operands hold s / t rows of `step`, `out` s rows.
                    unsafe { attend_head_gemm(&head, out.as_mut_ptr(), step) };
                }
                best = best.min(t0.elapsed().as_secs_f64() / 4000.0);
            }
            println!("s={s} t={t} d={d}: {:.3} us", best * 1e6);
        }
    }

    #[test]
    fn register_transpose_moves_every_value() {
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::Isa::detect() == crate::kernels::Isa::Avx512Vnni {
            use std::arch::x86_64::*;
            let m: Vec<f32> = (0..256).map(|i| i as f32).collect();
            let mut got = [0f32; 256];
            // SAFETY: AVX-512 runs here; 16 rows of 16 values each way.
            unsafe {
                let rows = std::array::from_fn(|r| _mm512_loadu_ps(m.as_ptr().add(16 * r)));
                for (c, v) in transpose_16x16(rows).iter().enumerate() {
                    _mm512_storeu_ps(got.as_mut_ptr().add(16 * c), *v);
                }
            }
            for r in 0..16 {
                for c in 0..16 {
                    assert_eq!(got[16 * c + r], m[16 * r + c], "({r}, {c})");
                }
            }
        }
    }

    /// The register kernel for short heads gives what the gemm path gives: query and
    /// key counts around the 16-lane and 4-row edges, both head sizes, rows wider than
    /// the head (a head's columns in a wider row), and masks with padded keys.
    #[test]
    fn short_heads_equal_the_gemm_path() {
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::Isa::detect() == crate::kernels::Isa::Avx512Vnni {
            let mut ran = 0;
            for d in [32, 64] {
                for (s, t) in [
                    (1, 1),
                    (3, 5),
                    (4, 16),
                    (5, 17),
                    (23, 23),
                    (9, 33),
                    (64, 64),
                ] {
                    let step = 3 * d;
                    let [q, k, v] = head_operands(s, t, step);
                    // The last two keys are padding (as an attention mask makes them).
                    let mask: Vec<f32> = (0..s * t)
                        .map(|i| {
                            if t > 2 && i % t >= t - 2 {
                                f32::MIN
                            } else {
                                0.0
                            }
                        })
                        .collect();
                    let head = test_head((&q, &k, &v), &mask, step, (s, t, d));
                    let (mut fast, mut slow) = (vec![7f32; s * step], vec![7f32; s * step]);
                    // SAFETY: AVX-512 runs here; the operands hold s / t rows of `step`
                    // and the outputs s rows of `step`.
                    unsafe {
                        attend_head_gemm(&head, fast.as_mut_ptr(), step);
                        attend_head_by_gemm(&head, slow.as_mut_ptr(), step);
                    }
                    let diff = fast
                        .iter()
                        .zip(&slow)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max);
                    assert!(diff < 1e-5, "d={d} s={s} t={t}: {diff}");
                    // Only the head's columns were written.
                    assert!(fast.chunks(step).all(|r| r[d..].iter().all(|x| *x == 7.0)));
                    ran += 1;
                }
            }
            assert_eq!(ran, 14);
        }
    }

    /// The fused scale-mask-softmax equals candle's op-by-op path to the bit, for masks
    /// of `f32::MIN` and of `−∞`, per batch and broadcast over the batch; a mask of the
    /// wrong shape is an error.
    #[test]
    fn masked_softmax_equals_the_op_by_op_path_exactly() {
        use candle_core::{Device, Tensor};
        let dev = Device::Cpu;
        let (b, h, s, t) = (2, 3, 5, 70);
        let scores = Tensor::randn(0f32, 3.0, (b, h, s, t), &dev).unwrap();
        for fill in [f32::MIN, f32::NEG_INFINITY] {
            for mb in [b, 1] {
                // Causal over the last s keys, plus a padded first key in batch 1.
                let mask: Vec<f32> = (0..mb * s * t)
                    .map(|i| {
                        let (bi, si, ti) = (i / (s * t), (i / t) % s, i % t);
                        if ti > t - s + si || (bi == 1 && ti == 0) {
                            fill
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let mask = Tensor::from_vec(mask, (mb, 1, s, t), &dev).unwrap();
                // Scaled scores spread over ±40: unmasked `v − max` down to about −80.
                let scale = 4.0f64;
                let fused = scores
                    .apply_op2_no_bwd(
                        &mask,
                        &MaskedSoftmaxOp {
                            scale: scale as f32,
                        },
                    )
                    .unwrap();
                let by_ops = candle_nn::ops::softmax_last_dim(
                    &(&scores * scale).unwrap().broadcast_add(&mask).unwrap(),
                )
                .unwrap();
                let a = fused.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let e = by_ops.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert!(
                    a.iter().zip(&e).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "fill {fill}, mask batch {mb}"
                );
                assert!(a.contains(&0.0) && a.iter().all(|v| v.is_finite()));
            }
        }
        let bad = Tensor::zeros((1, 1, s, t + 1), candle_core::DType::F32, &dev).unwrap();
        assert!(scores
            .apply_op2_no_bwd(&bad, &MaskedSoftmaxOp { scale: 1.0 })
            .is_err());
    }
}
