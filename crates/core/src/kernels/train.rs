//! Training ops: fused CPU kernels with a backward pass, for f32 tensors that track
//! gradients. candle's autograd runs a layer op by op, and each op costs a fresh buffer
//! and a single-threaded pass forward, and more of both backward (every gradient is
//! accumulated as `zeros + grad`); a LayerNorm was about 30 such passes. Here a
//! LayerNorm, and an encoder's whole self-attention, are one op each way.
//!
//! The backward formulas:
//! - LayerNorm, `y = x̂·w + b` with `x̂ = (x − μ)·r`, `r = 1/√(σ² + ε)` over a row of `n`:
//!   `∂b = Σ_rows g`, `∂w = Σ_rows g·x̂`, `∂x = r·(g·w − mean(g·w) − x̂·mean(g·w·x̂))`.
//! - Attention per head, `P = softmax(q kᵀ·c + mask)`, `o = P v`: `∂v = Pᵀ ∂o`,
//!   `∂P = ∂o vᵀ`, `∂S = P ∘ (∂P − rowsum(∂P ∘ P))·c`, `∂q = ∂S k`, `∂k = ∂Sᵀ q`. The
//!   probabilities are recomputed in the backward pass instead of kept.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::fused::{attend_head_gemm, head_probs, HeadGemm};
use super::pool::Pool;
use super::{contiguous, f32_data, gemm_into, gemm_on_pool, read_f32, Isa, Mat, OutPtr};

/// Rows of a LayerNorm one pool task takes.
const LN_ROWS: usize = 32;

/// Mean and `1/√(var + eps)` of one row, in 16 lanes so that the sums vectorize.
#[inline(always)]
fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mut lanes = [0f32; 16];
    for c in row.chunks(16) {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
    }
    let mean = lanes.iter().sum::<f32>() / n;
    let mut lanes = [0f32; 16];
    for c in row.chunks(16) {
        for (l, v) in lanes.iter_mut().zip(c) {
            let d = v - mean;
            *l += d * d;
        }
    }
    let var = lanes.iter().sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// LayerNorm's backward pass over whole rows: `dx` for these rows, and their
/// contributions added into `dw`, `db`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn layer_norm_bwd_rows(
    x: &[f32],
    w: &[f32],
    g: &[f32],
    eps: f32,
    dx: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
) {
    let n = w.len();
    for ((row, grow), dxrow) in x
        .chunks_exact(n)
        .zip(g.chunks_exact(n))
        .zip(dx.chunks_exact_mut(n))
    {
        let (mean, r) = row_stats(row, eps);
        let (mut sa, mut sc) = ([0f32; 16], [0f32; 16]);
        for ((((xc, gc), wc), dwc), dbc) in row
            .chunks(16)
            .zip(grow.chunks(16))
            .zip(w.chunks(16))
            .zip(dw.chunks_mut(16))
            .zip(db.chunks_mut(16))
        {
            for i in 0..xc.len() {
                let xh = (xc[i] - mean) * r;
                let gw = gc[i] * wc[i];
                sa[i] += gw;
                sc[i] += gw * xh;
                dwc[i] += gc[i] * xh;
                dbc[i] += gc[i];
            }
        }
        let a = sa.iter().sum::<f32>() / n as f32;
        let c = sc.iter().sum::<f32>() / n as f32;
        for (((d, xv), gv), wv) in dxrow.iter_mut().zip(row).zip(grow).zip(w) {
            let xh = (xv - mean) * r;
            *d = r * (gv * wv - a - xh * c);
        }
    }
}

/// # Safety
/// The CPU has AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn layer_norm_bwd_rows_avx512(
    x: &[f32],
    w: &[f32],
    g: &[f32],
    eps: f32,
    dx: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
) {
    layer_norm_bwd_rows(x, w, g, eps, dx, dw, db)
}

/// Three gradients (`∂x`, `∂w`, `∂b` of a LayerNorm or a dense layer).
pub type Grads3 = (Vec<f32>, Vec<f32>, Vec<f32>);

/// LayerNorm's backward pass on slices: `x` and `g` are `[rows, n]` with `n = w.len()`.
pub fn layer_norm_backward(
    isa: Isa,
    x: &[f32],
    w: &[f32],
    g: &[f32],
    eps: f32,
) -> Result<Grads3, String> {
    let n = w.len();
    if n == 0 || !x.len().is_multiple_of(n) || g.len() != x.len() {
        return Err(format!(
            "layer norm backward: input of {}, gradient of {}, weight of {n}",
            x.len(),
            g.len()
        ));
    }
    let rows = x.len() / n;
    let mut dx = vec![0f32; x.len()];
    let tasks = rows.div_ceil(LN_ROWS).max(1);
    // Each task sums its rows' ∂w and ∂b apart; the parts are added up after.
    let mut parts = vec![0f32; tasks * 2 * n];
    let run = |t: usize, dx: &mut [f32], part: &mut [f32]| {
        let (r0, r1) = (t * LN_ROWS, ((t + 1) * LN_ROWS).min(rows));
        let (xs, gs) = (&x[r0 * n..r1 * n], &g[r0 * n..r1 * n]);
        let (dw, db) = part.split_at_mut(n);
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx512Vnni {
            // SAFETY: AVX-512 was detected on this CPU.
            return unsafe { layer_norm_bwd_rows_avx512(xs, w, gs, eps, dx, dw, db) };
        }
        let _ = isa;
        layer_norm_bwd_rows(xs, w, gs, eps, dx, dw, db)
    };
    if tasks == 1 {
        run(0, &mut dx, &mut parts);
    } else {
        let (dxp, pp) = (OutPtr(dx.as_mut_ptr()), OutPtr(parts.as_mut_ptr()));
        Pool::global().run(tasks, &|t| {
            let (r0, r1) = (t * LN_ROWS, ((t + 1) * LN_ROWS).min(rows));
            // SAFETY: task t alone writes rows r0..r1 of dx and part t of `parts`; both
            // outlive the loop.
            let (d, p) = unsafe {
                (
                    std::slice::from_raw_parts_mut(dxp.at(r0 * n), (r1 - r0) * n),
                    std::slice::from_raw_parts_mut(pp.at(t * 2 * n), 2 * n),
                )
            };
            run(t, d, p);
        });
    }
    let (mut dw, mut db) = (vec![0f32; n], vec![0f32; n]);
    for part in parts.chunks_exact(2 * n) {
        for (a, b) in dw.iter_mut().zip(&part[..n]) {
            *a += b;
        }
        for (a, b) in db.iter_mut().zip(&part[n..]) {
            *a += b;
        }
    }
    Ok((dx, dw, db))
}

/// The backward pass of [`super::fused::LayerNormOp`] on tensors.
pub(crate) fn layer_norm_bwd_tensors(
    x: &Tensor,
    w: &Tensor,
    g: &Tensor,
    eps: f32,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let res = read_f32(x, |xv| {
        read_f32(w, |wv| {
            read_f32(g, |gv| layer_norm_backward(Isa::detect(), xv, wv, gv, eps))
        })
    })???;
    let (dx, dw, db) = res.map_err(candle_core::Error::Msg)?;
    let dev = x.device();
    Ok((
        Tensor::from_vec(dx, x.shape(), dev)?,
        Tensor::from_vec(dw, w.shape(), dev)?,
        Tensor::from_vec(db, w.shape(), dev)?,
    ))
}

/// Encoder self-attention for training: `q`, `k`, `v` are the projections
/// `[batch, seq, heads · dim]` (no split into heads: each head reads its columns), the
/// result is `[batch, seq, heads · dim]`, ready for the output projection. `mask` is
/// additive, `[batch, seq, seq]`. `dropout`, where given, multiplies the probabilities
/// (`[batch, heads, seq, seq]`: 0 or `1/(1 − p)`, drawn by the caller as
/// `Dropout::forward` would draw them). Differentiable in `q`, `k` and `v`.
#[derive(Debug, Clone)]
pub struct EncoderAttentionTrainOp {
    pub heads: usize,
    pub mask: Vec<f32>,
    pub scale: f32,
    pub dropout: Option<Vec<f32>>,
}

/// Row strides of the training attention's operands: `q`, `k`, `v` (and their
/// gradients) have rows `input` apart, the output (and its gradient) rows `output` apart.
/// The op on its own tensors has both at `heads · dim`; a fused layer reads `q`, `k`, `v`
/// from one `[rows, 3 · hidden]` projection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Steps {
    pub(crate) input: usize,
    pub(crate) output: usize,
}

impl EncoderAttentionTrainOp {
    /// `(batch, seq, heads · dim, dim)` of operands of shape `dims`, checked.
    fn geometry(&self, dims: &[usize]) -> candle_core::Result<(usize, usize, usize, usize)> {
        let &[b, s, hd] = dims else {
            candle_core::bail!("training attention takes [batch, seq, hidden], got {dims:?}");
        };
        if self.heads == 0 || hd % self.heads != 0 || self.mask.len() != b * s * s {
            candle_core::bail!(
                "training attention: hidden {hd} for {} heads, mask of {} for {dims:?}",
                self.heads,
                self.mask.len()
            );
        }
        if let Some(d) = &self.dropout {
            if d.len() != b * self.heads * s * s {
                candle_core::bail!(
                    "training attention: dropout mask of {} for {dims:?} and {} heads",
                    d.len(),
                    self.heads
                );
            }
        }
        Ok((b, s, hd, hd / self.heads))
    }

    /// Head `hi` of batch row `bi`: its operands, read from column `hi·d` of each row
    /// (rows `step` apart).
    fn head<'a>(
        &'a self,
        (q, k, v): (&'a [f32], &'a [f32], &'a [f32]),
        (bi, hi): (usize, usize),
        (s, d, step): (usize, usize, usize),
    ) -> HeadGemm<'a> {
        let off = bi * s * step + hi * d;
        HeadGemm {
            q: &q[off..],
            q_step: step,
            s,
            k: &k[off..],
            k_step: step,
            v: &v[off..],
            v_step: step,
            mask: &self.mask[bi * s * s..][..s * s],
            scale: self.scale,
            softcap: None,
            t: s,
            d,
        }
    }

    /// The dropout multipliers of head `bh` (`[s, s]`), if any.
    fn dropout_of(&self, bh: usize, s: usize) -> Option<&[f32]> {
        self.dropout.as_ref().map(|d| &d[bh * s * s..][..s * s])
    }

    /// Checks that `q`, `k`, `v` (rows `steps.input` apart) reach every value of
    /// `[b, s, hd]`.
    fn check_operands(
        (q, k, v): (&[f32], &[f32], &[f32]),
        (b, s, hd): (usize, usize, usize),
        step: usize,
    ) -> candle_core::Result<()> {
        let need = if b * s == 0 {
            0
        } else {
            (b * s - 1) * step + hd
        };
        if step < hd || q.len() < need || k.len() < need || v.len() < need {
            candle_core::bail!("training attention: operands do not hold [{b}, {s}, {hd}]");
        }
        Ok(())
    }

    /// The attention of `q`, `k`, `v` (`[batch, seq, heads · dim]` as `dims` says, rows
    /// `steps.input` apart) written to `out` (rows `steps.output` apart; every value of
    /// its `[batch · seq, heads · dim]` is written, none read).
    ///
    /// # Safety
    /// `out` is valid for writes of that many rows and nothing else touches them
    /// meanwhile.
    pub(crate) unsafe fn forward_into(
        &self,
        (q, k, v): (&[f32], &[f32], &[f32]),
        dims: &[usize],
        steps: Steps,
        out: OutPtr,
    ) -> candle_core::Result<()> {
        let (b, s, hd, d) = self.geometry(dims)?;
        Self::check_operands((q, k, v), (b, s, hd), steps.input)?;
        if b * s * hd == 0 {
            return Ok(());
        }
        let heads = self.heads;
        // Heads grouped per task so that a task's heads are those of one sequence (its
        // rows stay in that core's caches) where there are enough sequences to share.
        let per_task = if b >= 4 * Pool::global().threads() {
            heads
        } else {
            1
        };
        let attend = |bh: usize| {
            let (bi, hi) = (bh / heads, bh % heads);
            let head = self.head((q, k, v), (bi, hi), (s, d, steps.input));
            let dst = out.at(bi * s * steps.output + hi * d);
            let Some(m) = self.dropout_of(bh, s) else {
                // SAFETY: task (bi, hi) alone writes its head's columns of `out` (rows
                // steps.output apart), which the caller keeps alive.
                return unsafe { attend_head_gemm(&head, dst, steps.output) };
            };
            let mut p = head_probs(&head);
            for (a, b) in p.iter_mut().zip(m) {
                *a *= b;
            }
            // out[i, x] = Σ_j (P∘D)[i, j] v[j, x]
            // SAFETY: as above; v holds s rows steps.input apart from the head's column.
            unsafe {
                let v = Mat::rows(head.v, steps.input);
                gemm_into((s, d, s), dst, steps.output, Mat::rows(&p, s), v, false)
            };
        };
        Pool::global().run((b * heads).div_ceil(per_task), &|t| {
            (t * per_task..((t + 1) * per_task).min(b * heads)).for_each(attend)
        });
        Ok(())
    }

    /// The gradients of `q`, `k`, `v` from the output's gradient `g` (rows
    /// `steps.output` apart), written to `dq`, `dk`, `dv` (rows `steps.input` apart:
    /// each head's columns written, not read).
    ///
    /// # Safety
    /// `dq`, `dk`, `dv` are valid for writes of `[batch · seq]` rows `steps.input` apart
    /// and the columns `0..heads · dim` of those rows, disjoint from each other, and
    /// nothing else touches them meanwhile.
    pub(crate) unsafe fn backward_into(
        &self,
        (q, k, v): (&[f32], &[f32], &[f32]),
        g: &[f32],
        dims: &[usize],
        steps: Steps,
        (dqp, dkp, dvp): (OutPtr, OutPtr, OutPtr),
    ) -> candle_core::Result<()> {
        let (b, s, hd, d) = self.geometry(dims)?;
        Self::check_operands((q, k, v), (b, s, hd), steps.input)?;
        let need = if b * s == 0 {
            0
        } else {
            (b * s - 1) * steps.output + hd
        };
        if steps.output < hd || g.len() < need {
            candle_core::bail!("training attention backward: gradient does not hold {dims:?}");
        }
        if b * s * hd == 0 {
            return Ok(());
        }
        let heads = self.heads;
        let scale = self.scale;
        let task = |bh: usize| {
            let (bi, hi) = (bh / heads, bh % heads);
            let head = self.head((q, k, v), (bi, hi), (s, d, steps.input));
            let p = head_probs(&head);
            let drop = self.dropout_of(bh, s);
            // The probabilities the values were weighted by (after dropout).
            let pd: Option<Vec<f32>> = drop.map(|m| p.iter().zip(m).map(|(a, b)| a * b).collect());
            let pv = pd.as_deref().unwrap_or(&p);
            let off = bi * s * steps.input + hi * d;
            let go = &g[bi * s * steps.output + hi * d..];
            let mut dp = vec![0f32; s * s];
            // SAFETY: every operand holds the rows its strides reach (checked above);
            // task (bi, hi) alone writes these columns of dq, dk, dv, which the caller
            // keeps alive.
            unsafe {
                // ∂v [s, d] = Pᵀ ∂o
                let go = Mat::rows(go, steps.output);
                gemm_into(
                    (s, d, s),
                    dvp.at(off),
                    steps.input,
                    Mat::cols(pv, s),
                    go,
                    false,
                );
                // ∂P [s, s] = ∂o vᵀ
                let vt = Mat::cols(head.v, steps.input);
                gemm_into((s, s, d), dp.as_mut_ptr(), s, go, vt, false);
            }
            // Through dropout: ∂P = ∂(P∘D) ∘ D.
            if let Some(m) = drop {
                for (a, b) in dp.iter_mut().zip(m) {
                    *a *= b;
                }
            }
            // ∂S = P ∘ (∂P − rowsum(∂P ∘ P)) · scale, in place of ∂P.
            for (dprow, prow) in dp.chunks_exact_mut(s).zip(p.chunks_exact(s)) {
                let mut lanes = [0f32; 16];
                for (dc, pc) in dprow.chunks(16).zip(prow.chunks(16)) {
                    for i in 0..dc.len() {
                        lanes[i] += dc[i] * pc[i];
                    }
                }
                let r: f32 = lanes.iter().sum();
                for (dv, pv) in dprow.iter_mut().zip(prow) {
                    *dv = pv * (*dv - r) * scale;
                }
            }
            // SAFETY: as above.
            unsafe {
                // ∂q [s, d] = ∂S k
                let k = Mat::rows(head.k, steps.input);
                gemm_into(
                    (s, d, s),
                    dqp.at(off),
                    steps.input,
                    Mat::rows(&dp, s),
                    k,
                    false,
                );
                // ∂k [s, d] = ∂Sᵀ q
                let q = Mat::rows(head.q, steps.input);
                gemm_into(
                    (s, d, s),
                    dkp.at(off),
                    steps.input,
                    Mat::cols(&dp, s),
                    q,
                    false,
                );
            }
        };
        Pool::global().run(b * heads, &task);
        Ok(())
    }
}

impl CustomOp3 for EncoderAttentionTrainOp {
    fn name(&self) -> &'static str {
        "rustformers-encoder-attention-train"
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
        let what = "training attention";
        let dims = ql.shape().dims();
        if kl.shape().dims() != dims || vl.shape().dims() != dims {
            candle_core::bail!(
                "{what}: q {dims:?}, k {:?}, v {:?}",
                kl.shape().dims(),
                vl.shape().dims()
            );
        }
        let (b, s, hd, _) = self.geometry(dims)?;
        let q = contiguous(f32_data(qs, what)?, ql, what)?;
        let k = contiguous(f32_data(ks, what)?, kl, what)?;
        let v = contiguous(f32_data(vs, what)?, vl, what)?;
        let n = b * s * hd;
        if q.len() != n || k.len() != n || v.len() != n {
            candle_core::bail!("{what}: operands are not {dims:?}");
        }
        // Not zeroed first: the heads write every value (below).
        let mut out: Vec<f32> = Vec::with_capacity(n);
        let steps = Steps {
            input: hd,
            output: hd,
        };
        // SAFETY: `out` has room for the b·s rows of hd; forward_into writes every value
        // (each head its whole [s, d] block, the heads covering every column) before
        // the length is set; f32 has no invalid bit patterns.
        unsafe {
            self.forward_into((q, k, v), dims, steps, OutPtr(out.as_mut_ptr()))?;
            out.set_len(n);
        }
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dims = q.dims().to_vec();
        let n = q.elem_count();
        let (mut dq, mut dk, mut dv) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        let hd = dims.last().copied().unwrap_or(0);
        let steps = Steps {
            input: hd,
            output: hd,
        };
        let outs = (
            OutPtr(dq.as_mut_ptr()),
            OutPtr(dk.as_mut_ptr()),
            OutPtr(dv.as_mut_ptr()),
        );
        read_f32(q, |qv| {
            read_f32(k, |kv| {
                read_f32(v, |vv| {
                    read_f32(g, |gv| {
                        if [kv.len(), vv.len(), gv.len()] != [n; 3] {
                            candle_core::bail!("training attention backward: operands differ");
                        }
                        // SAFETY: dq, dk, dv are three [n] buffers of [b, s, hd] rows hd
                        // apart, alive until the end of this function.
                        unsafe { self.backward_into((qv, kv, vv), gv, &dims, steps, outs) }
                    })
                })
            })
        })?????;
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, q.shape(), dev)?),
            Some(Tensor::from_vec(dv, q.shape(), dev)?),
        ))
    }
}

/// `Σ_rows g` of `g [m, n]` (a bias gradient), column blocks on the pool.
pub(crate) fn column_sums(g: &[f32], m: usize, n: usize) -> Vec<f32> {
    let mut db = vec![0f32; n];
    if n == 0 || g.len() < m * n {
        return db;
    }
    let ptr = OutPtr(db.as_mut_ptr());
    const COLS: usize = 64;
    let sums = |c: usize| {
        let (c0, c1) = (c * COLS, ((c + 1) * COLS).min(n));
        // SAFETY: db[c0..c1] is this task's alone and outlives the loop.
        let out = unsafe { std::slice::from_raw_parts_mut(ptr.at(c0), c1 - c0) };
        for row in g.chunks_exact(n).take(m) {
            for (o, v) in out.iter_mut().zip(&row[c0..c1]) {
                *o += v;
            }
        }
    };
    let tasks = n.div_ceil(COLS);
    if tasks <= 1 || m * n < 1 << 14 {
        (0..tasks).for_each(sums);
    } else {
        Pool::global().run(tasks, &sums);
    }
    db
}

/// A dense layer for training, `y = x Wᵀ + b` for `x [.., k]`, `W [n, k]`, `b [n]`,
/// differentiable in all three: `∂x = g W`, `∂W = gᵀ x`, `∂b = Σ_rows g`, each one pass
/// on the pool. (candle's form, a reshape, a transposed matmul and a broadcast add, cost
/// a single-threaded strided reduction for `∂b` and a zeroed buffer plus an add per
/// node.) With `bf16` the products are bf16 mixed precision, as PyTorch's autocast:
/// operands rounded to bf16, sums in f32 (AMX or AVX512-BF16 where they run), so the f32
/// master weights get f32 gradients of bf16 products; the bias and `∂b` stay f32.
#[derive(Debug, Clone, Copy)]
pub struct LinearTrainOp {
    pub bf16: bool,
}

/// `(m, n, k)` of a linear op's operands, checked.
pub(crate) fn linear_dims(
    x: &[usize],
    w: &[usize],
    b: &[usize],
) -> candle_core::Result<(usize, usize, usize)> {
    let (&[n, k], Some(&xk)) = (w, x.last()) else {
        candle_core::bail!("linear: input {x:?} and weight {w:?}");
    };
    if xk != k || b != [n] {
        candle_core::bail!("linear: input {x:?}, weight {w:?}, bias {b:?}");
    }
    Ok((x.iter().product::<usize>() / k.max(1), n, k))
}

impl LinearTrainOp {
    /// `x Wᵀ + b` on slices.
    fn forward(
        &self,
        x: &[f32],
        w: &[f32],
        b: &[f32],
        (m, n, k): (usize, usize, usize),
    ) -> Result<Vec<f32>, String> {
        if self.bf16 {
            let packed = super::bf16::PackedBf16::from_f32(n, k, w)?;
            return super::bf16::matmul(&packed, x, m, Some(b));
        }
        super::gemv::matmul_blocks(w, n, k, x, m, Some(b))
    }

    /// `(∂x, ∂W, ∂b)` from the output gradient `g [m, n]`.
    fn backward(
        &self,
        x: &[f32],
        w: &[f32],
        g: &[f32],
        (m, n, k): (usize, usize, usize),
    ) -> Result<Grads3, String> {
        let db = column_sums(g, m, n);
        if self.bf16 {
            use super::bf16::{product_nt, transpose};
            // ∂x [m, k] = g [m, n] · (Wᵀ [k, n])ᵀ
            let dx = product_nt(g, m, &transpose(w, n, k), k, n)?;
            // ∂W [n, k] = gᵀ [n, m] · (xᵀ [k, m])ᵀ
            let dw = product_nt(&transpose(g, m, n), n, &transpose(x, m, k), k, m)?;
            return Ok((dx, dw, db));
        }
        if m == 0 || n == 0 || k == 0 {
            return Ok((vec![0f32; m * k], vec![0f32; n * k], db));
        }
        // Not zeroed first: gemm writes every output (no accumulation).
        let (mut dx, mut dw) = (Vec::with_capacity(m * k), Vec::with_capacity(n * k));
        // SAFETY: dx [m, k] = g [m, n] · w [n, k]; dw [n, k] = gᵀ · x [m, k], gᵀ's
        // (j, i) = g[i·n + j] inside [m, n]; both outputs have room for their values,
        // and the products (every dimension positive) write all of them.
        unsafe {
            gemm_on_pool(
                (m, k, n),
                dx.as_mut_ptr(),
                Mat::rows(g, n),
                Mat::rows(w, k),
                false,
            );
            gemm_on_pool(
                (n, k, m),
                dw.as_mut_ptr(),
                Mat::cols(g, n),
                Mat::rows(x, k),
                false,
            );
            dx.set_len(m * k);
            dw.set_len(n * k);
        }
        Ok((dx, dw, db))
    }
}

impl CustomOp3 for LinearTrainOp {
    fn name(&self) -> &'static str {
        "rustformers-linear-train"
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
        let what = "training linear";
        let dims = linear_dims(xl.shape().dims(), wl.shape().dims(), bl.shape().dims())?;
        let x = contiguous(f32_data(xs, what)?, xl, what)?;
        let w = contiguous(f32_data(ws, what)?, wl, what)?;
        let b = contiguous(f32_data(bs, what)?, bl, what)?;
        let y = self
            .forward(x, w, b, dims)
            .map_err(candle_core::Error::Msg)?;
        let mut out = xl.shape().dims().to_vec();
        if let Some(last) = out.last_mut() {
            *last = dims.1;
        }
        Ok((CpuStorage::F32(y), Shape::from(out)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dims = linear_dims(x.dims(), w.dims(), b.dims())?;
        if g.elem_count() != dims.0 * dims.1 {
            candle_core::bail!("training linear: gradient {:?} for {dims:?}", g.dims());
        }
        let grads = read_f32(x, |xv| {
            read_f32(w, |wv| read_f32(g, |gv| self.backward(xv, wv, gv, dims)))
        })???;
        let (dx, dw, db) = grads.map_err(candle_core::Error::Msg)?;
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dw, w.shape(), dev)?),
            Some(Tensor::from_vec(db, b.shape(), dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var, D};

    /// LayerNorm's fused backward equals autograd through the op-by-op form, for all
    /// three operands, on every instruction set, with rows past one pool task and a
    /// width that is not a multiple of 16.
    #[test]
    fn layer_norm_backward_equals_autograd_of_the_ops() {
        let dev = Device::Cpu;
        for (rows, n) in [(3, 16), (70, 40), (100, 384)] {
            let x = Var::from_tensor(
                &(Tensor::randn(0f32, 2.0, (rows, n), &dev).unwrap() + 0.5).unwrap(),
            )
            .unwrap();
            let w = Var::from_tensor(&Tensor::randn(1f32, 0.3, n, &dev).unwrap()).unwrap();
            let b = Var::from_tensor(&Tensor::randn(0f32, 0.3, n, &dev).unwrap()).unwrap();
            let g = Tensor::randn(0f32, 1.0, (rows, n), &dev).unwrap();
            let eps = 1e-5;
            let xt = x.as_tensor();
            let mean = xt.mean_keepdim(D::Minus1).unwrap();
            let c = xt.broadcast_sub(&mean).unwrap();
            let var = c.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            let y = c
                .broadcast_div(&(var + eps).unwrap().sqrt().unwrap())
                .unwrap()
                .broadcast_mul(w.as_tensor())
                .unwrap()
                .broadcast_add(b.as_tensor())
                .unwrap();
            let grads = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let want = [
                grads.get(x.as_tensor()).unwrap(),
                grads.get(w.as_tensor()).unwrap(),
                grads.get(b.as_tensor()).unwrap(),
            ];
            let xv = xt.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let wv = w.as_tensor().to_vec1::<f32>().unwrap();
            let gv = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for isa in Isa::all_available() {
                let (dx, dw, db) = layer_norm_backward(isa, &xv, &wv, &gv, eps as f32).unwrap();
                let got = [
                    Tensor::from_vec(dx, (rows, n), &dev).unwrap(),
                    Tensor::from_vec(dw, n, &dev).unwrap(),
                    Tensor::from_vec(db, n, &dev).unwrap(),
                ];
                for (what, (a, b)) in ["dx", "dw", "db"].iter().zip(got.iter().zip(&want)) {
                    let diff = crate::test_util::max_abs_diff(a, b);
                    assert!(diff < 2e-4, "{isa:?} [{rows}, {n}] {what}: {diff}");
                }
            }
        }
        assert!(layer_norm_backward(Isa::Scalar, &[0.0; 5], &[1.0; 2], &[0.0; 5], 1e-5).is_err());
    }

    /// The training linear op and its three gradients equal autograd through candle's
    /// matmul and broadcast add, for a 3-d input and sizes spanning several column
    /// blocks.
    #[test]
    fn training_linear_equals_autograd_of_the_ops() {
        let dev = Device::Cpu;
        for (b, s, k, n) in [(2, 3, 5, 7), (4, 33, 40, 300)] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, s, k), &dev).unwrap()).unwrap();
            let w = Var::from_tensor(&Tensor::randn(0f32, 0.5, (n, k), &dev).unwrap()).unwrap();
            let bias = Var::from_tensor(&Tensor::randn(0f32, 0.5, n, &dev).unwrap()).unwrap();
            let g = Tensor::randn(0f32, 1.0, (b, s, n), &dev).unwrap();
            let want = x
                .as_tensor()
                .broadcast_matmul(&w.as_tensor().t().unwrap())
                .unwrap()
                .broadcast_add(bias.as_tensor())
                .unwrap();
            let want_grads = (&want * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let got = x
                .as_tensor()
                .apply_op3(
                    w.as_tensor(),
                    bias.as_tensor(),
                    LinearTrainOp { bf16: false },
                )
                .unwrap();
            assert_eq!(got.dims(), &[b, s, n]);
            assert!(crate::test_util::max_abs_diff(&got, &want) < 1e-4);
            let grads = (&got * &g).unwrap().sum_all().unwrap().backward().unwrap();
            for (what, v) in [("x", &x), ("w", &w), ("b", &bias)] {
                let diff = crate::test_util::max_abs_diff(
                    grads.get(v.as_tensor()).unwrap(),
                    want_grads.get(v.as_tensor()).unwrap(),
                );
                assert!(diff < 1e-3, "[{b}, {s}, {k}] -> {n}: d{what} {diff}");
            }
        }
        let x = Tensor::zeros((2, 4), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((3, 5), DType::F32, &dev).unwrap();
        let bias = Tensor::zeros(3, DType::F32, &dev).unwrap();
        assert!(x
            .apply_op3(&w, &bias, LinearTrainOp { bf16: false })
            .is_err());
    }

    /// Masked keys get probability exactly 0, not the subnormal quotient of an
    /// approximate `e^-87` (subnormal operands slowed training's products tenfold).
    #[test]
    fn masked_probabilities_are_exactly_zero() {
        let (s, t, d) = (3, 40, 4);
        let q: Vec<f32> = (0..s * d).map(|i| (i as f32 * 0.7).sin() * 4.0).collect();
        let k: Vec<f32> = (0..t * d).map(|i| (i as f32 * 0.3).cos() * 4.0).collect();
        let mut mask = vec![0f32; s * t];
        for row in mask.chunks_exact_mut(t) {
            row[30..].fill(f32::MIN);
        }
        let head = HeadGemm {
            q: &q,
            q_step: d,
            s,
            k: &k,
            k_step: d,
            v: &k,
            v_step: d,
            mask: &mask,
            scale: 1.0,
            softcap: None,
            t,
            d,
        };
        let p = head_probs(&head);
        for row in p.chunks_exact(t) {
            assert!(row[..30].iter().all(|x| x.is_normal()), "{row:?}");
            assert!(row[30..].iter().all(|x| *x == 0.0), "{row:?}");
        }
    }

    /// The training attention op's output and its gradients equal autograd through the
    /// op-by-op attention (split heads, matmuls, mask, softmax), with a padded row.
    #[test]
    fn training_attention_equals_autograd_of_the_ops() {
        let dev = Device::Cpu;
        // Enough sequences for one task per sequence (all its heads), with the
        // short-head kernel's head size.
        let many = 4 * Pool::global().threads() + 1;
        for (b, s, h, d) in [(2, 21, 3, 8), (1, 5, 2, 4), (many, 7, 3, 32)] {
            let hd = h * d;
            let var = || Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, s, hd), &dev).unwrap());
            let (q, k, v) = (var().unwrap(), var().unwrap(), var().unwrap());
            let g = Tensor::randn(0f32, 1.0, (b, s, hd), &dev).unwrap();
            // Key mask: the last 4 keys of the last batch row are padding.
            let mut keep = vec![0f32; b * s];
            keep[b * s - s.min(4)..].fill(f32::MIN);
            let key_mask = Tensor::from_vec(keep.clone(), (b, 1, 1, s), &dev).unwrap();
            let scale = 1.0 / (d as f64).sqrt();
            let split = |x: &Tensor| {
                x.reshape((b, s, h, d))
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap()
                    .contiguous()
                    .unwrap()
            };
            let (qh, kh, vh) = (
                split(q.as_tensor()),
                split(k.as_tensor()),
                split(v.as_tensor()),
            );
            let scores = (qh.matmul(&kh.t().unwrap()).unwrap() * scale)
                .unwrap()
                .broadcast_add(&key_mask)
                .unwrap();
            let probs = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
            let want = probs
                .matmul(&vh)
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .reshape((b, s, hd))
                .unwrap();
            let want_grads = (&want * &g).unwrap().sum_all().unwrap().backward().unwrap();

            let mask: Vec<f32> = (0..b * s * s)
                .map(|i| keep[(i / (s * s)) * s + i % s])
                .collect();
            let op = EncoderAttentionTrainOp {
                heads: h,
                mask,
                scale: scale as f32,
                dropout: None,
            };
            let got = q
                .as_tensor()
                .apply_op3(k.as_tensor(), v.as_tensor(), op)
                .unwrap();
            assert!(crate::test_util::max_abs_diff(&got, &want) < 1e-5);
            let grads = (&got * &g).unwrap().sum_all().unwrap().backward().unwrap();
            for (what, x) in [("q", &q), ("k", &k), ("v", &v)] {
                let diff = crate::test_util::max_abs_diff(
                    grads.get(x.as_tensor()).unwrap(),
                    want_grads.get(x.as_tensor()).unwrap(),
                );
                assert!(diff < 1e-4, "[{b}, {s}, {h}x{d}] d{what}: {diff}");
            }
        }
        let q = Var::from_tensor(&Tensor::zeros((1, 3, 4), DType::F32, &dev).unwrap()).unwrap();
        let op = EncoderAttentionTrainOp {
            heads: 3,
            mask: vec![0.0; 9],
            scale: 1.0,
            dropout: None,
        };
        let t = q.as_tensor();
        assert!(t.apply_op3(t, t, op).is_err());
    }
}
