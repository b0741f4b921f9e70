//! A post-LayerNorm encoder layer (BERT's, RoBERTa's, DistilBERT's) for training as one
//! op with its own backward pass. Op by op, a layer was about a dozen candle nodes
//! (three projections, attention, output projection, dropout, residual add, LayerNorm,
//! intermediate, GELU, ...), and candle's backward pass accumulates every node's
//! gradient into a fresh zeroed buffer and runs the dropout and residual nodes on one
//! thread. Here candle sees one node whose only argument is the layer's input; the
//! parameters' gradients are computed in the same backward pass and handed to the
//! model's [`TrainMode`] side store, which `PreTrainedModel::backward` merges into the
//! gradient store (as gradient checkpointing does for its recomputed layers).
//!
//! The layer (Python's `BertLayer`, transformers 4.46,
//! src/transformers/models/bert/modeling_bert.py):
//! `qkv = x Wqkvᵀ + b`, `c = attention(q, k, v)` (probabilities dropped out),
//! `s₁ = drop(c Woᵀ + bo) + x`, `a = LN₁(s₁)`, `u = a Wiᵀ + bi`, `g = gelu(u)`,
//! `s₂ = drop(g Wfᵀ + bf) + a`, `y = LN₂(s₂)`. Backward, from `∂y`:
//! `∂s₂ = LN₂'(∂y)`; `∂(g Wfᵀ) = ∂s₂ ∘ D₂`, giving `∂Wf`, `∂bf`, `∂g`;
//! `∂u = ∂g ∘ gelu'(u)`, giving `∂Wi`, `∂bi`; `∂a = ∂s₂ + ∂u Wi`; `∂s₁ = LN₁'(∂a)`;
//! `∂(c Woᵀ) = ∂s₁ ∘ D₁`, giving `∂Wo`, `∂bo`, `∂c`; the attention's backward gives
//! `∂qkv`, then `∂Wqkv`, `∂bqkv` and `∂x = ∂s₁ + ∂qkv Wqkv`.
//!
//! The dropout masks are drawn when the op is built, in the op-by-op layer's order
//! (probabilities, attention output, output), so both paths draw the same masks.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use super::activation::{gelu, gelu_grad};
use super::fused::layer_norm_forward;
use super::gemv::{matmul_blocks, matmul_blocks_residual};
use super::train::{column_sums, layer_norm_backward, EncoderAttentionTrainOp, Steps};
use super::{contiguous, f32_data, gemm_on_pool, read_f32, Isa, Mat, OutPtr};
use crate::layers::{Activation, Dropout, LayerNorm, TrainMode};
use crate::linear::QLinear;

/// A post-LayerNorm encoder layer's parts, borrowed from the model that holds them.
/// `attention_dropout` follows the attention's output projection (BERT's
/// `attention.output.dropout`; pass an inactive one where the model has none, as
/// DistilBERT), `output_dropout` the feed-forward output.
#[derive(Debug, Clone, Copy)]
pub struct PostLnEncoderLayer<'a> {
    pub query: &'a QLinear,
    pub key: &'a QLinear,
    pub value: &'a QLinear,
    pub attention_output: &'a QLinear,
    pub attention_norm: &'a LayerNorm,
    pub intermediate: &'a QLinear,
    pub activation: &'a Activation,
    pub output: &'a QLinear,
    pub output_norm: &'a LayerNorm,
    pub heads: usize,
    pub probs_dropout: &'a Dropout,
    pub attention_dropout: &'a Dropout,
    pub output_dropout: &'a Dropout,
    /// The model's training state (where the parameters' gradients go).
    pub mode: Option<&'a Arc<TrainMode>>,
}

/// Indices of the layer's parameters in [`LayerOp::params`].
const WQ: usize = 0;
const BQ: usize = 1;
const WK: usize = 2;
const BK: usize = 3;
const WV: usize = 4;
const BV: usize = 5;
const WO: usize = 6;
const BO: usize = 7;
const N1W: usize = 8;
const N1B: usize = 9;
const WI: usize = 10;
const BI: usize = 11;
const WF: usize = 12;
const BF: usize = 13;
const N2W: usize = 14;
const N2B: usize = 15;
const PARAMS: usize = 16;

impl PostLnEncoderLayer<'_> {
    /// The layer on `x [batch, seq, hidden]` for training, as one op with its backward
    /// pass; `mask` is additive, broadcastable to `[batch, 1, seq, seq]`. `None` where
    /// the op does not apply, and the caller runs the layer op by op: `x` tracks no
    /// gradient (inference), the model was not loaded for training, a tensor is not f32
    /// on the CPU, a linear layer is not a dense one with a bias (LoRA, quantized) or
    /// the layers mix f32 and bf16 training, or the activation is not the exact GELU.
    pub fn train_forward(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Option<Tensor>> {
        let Some(mode) = self.mode else {
            return Ok(None);
        };
        if !x.track_op()
            || !super::f32_cpu(x)
            || *self.activation != Activation::Gelu
            || mask.is_some_and(|m| m.track_op())
        {
            return Ok(None);
        }
        // Contiguous as they are: their gradients are stashed under these tensors' ids.
        let usable = |t: &Tensor| super::f32_cpu(t) && t.is_contiguous();
        // Plain f32 layers, or all of them bf16-training ones (products in bf16).
        let bf16 = matches!(self.query, QLinear::Bf16Train { .. });
        let dense = |l: &QLinear| match (l, bf16) {
            (
                QLinear::Dense {
                    weight,
                    bias: Some(b),
                },
                false,
            )
            | (
                QLinear::Bf16Train {
                    weight,
                    bias: Some(b),
                },
                true,
            ) if [weight, b].into_iter().all(usable) => Some((weight.clone(), b.clone())),
            _ => None,
        };
        let norm = |n: &LayerNorm| {
            [&n.weight, &n.bias]
                .into_iter()
                .all(usable)
                .then(|| (n.weight.clone(), n.bias.clone()))
        };
        let parts = [
            dense(self.query),
            dense(self.key),
            dense(self.value),
            dense(self.attention_output),
            norm(self.attention_norm),
            dense(self.intermediate),
            dense(self.output),
            norm(self.output_norm),
        ];
        let mut params = Vec::with_capacity(PARAMS);
        for p in parts {
            let Some((w, b)) = p else {
                return Ok(None);
            };
            params.push(w);
            params.push(b);
        }
        let (b, s, hd) = x.dims3()?;
        let heads = self.heads;
        if heads == 0 || hd % heads != 0 {
            candle_core::bail!("attention: hidden size {hd} for {heads} heads");
        }
        let inter = params[WI].dim(0)?;
        let shapes: [&[usize]; PARAMS] = [
            &[hd, hd],
            &[hd],
            &[hd, hd],
            &[hd],
            &[hd, hd],
            &[hd],
            &[hd, hd],
            &[hd],
            &[hd],
            &[hd],
            &[inter, hd],
            &[inter],
            &[hd, inter],
            &[hd],
            &[hd],
            &[hd],
        ];
        for (i, (p, want)) in params.iter().zip(shapes).enumerate() {
            if p.dims() != want {
                candle_core::bail!(
                    "encoder layer: parameter {i} is {:?}, expected {want:?}",
                    p.dims()
                );
            }
        }
        let mask = match mask {
            Some(m) => m
                .to_dtype(candle_core::DType::F32)?
                .broadcast_as((b, 1, s, s))?
                .flatten_all()?
                .to_vec1::<f32>()?,
            None => vec![0f32; b * s * s],
        };
        // The op-by-op layer's draws, in its order.
        let attention = EncoderAttentionTrainOp {
            heads,
            mask,
            scale: 1.0 / ((hd / heads) as f32).sqrt(),
            dropout: self.probs_dropout.multipliers(b * heads * s * s)?,
        };
        let drop1 = self.attention_dropout.multipliers(b * s * hd)?;
        let drop2 = self.output_dropout.multipliers(b * s * hd)?;
        let op = LayerOp {
            bf16,
            params,
            eps: [self.attention_norm.eps as f32, self.output_norm.eps as f32],
            attention,
            drop: [drop1, drop2],
            saved: Mutex::new(None),
            mode: mode.clone(),
        };
        x.contiguous()?.apply_op1(op).map(Some)
    }
}

/// One `LN(drop(h Wᵀ + b) + r)` of the layer, for [`LayerOp::residual_backward`].
struct Residual<'a> {
    /// The norm's input, `[t, hidden]`.
    pre_norm: &'a [f32],
    /// `h` (`[t, k]`) and `k`.
    input: (&'a [f32], usize),
    /// 0 after the attention, 1 after the feed-forward (dropout masks, norm epsilon).
    which: usize,
    /// Indices of `W`, `b`, the norm's weight and bias.
    params: (usize, usize, usize, usize),
}

/// What the forward pass keeps for the backward pass (`t = batch · seq` rows).
struct Saved {
    /// `[Wq; Wk; Wv]`, `[3·hidden, hidden]`.
    wqkv: Vec<f32>,
    /// `[t, 3·hidden]`: q, k, v side by side.
    qkv: Vec<f32>,
    /// The attention's output, `[t, hidden]`.
    ctx: Vec<f32>,
    /// LayerNorm inputs, `[t, hidden]`.
    s1: Vec<f32>,
    s2: Vec<f32>,
    /// The first LayerNorm's output, `[t, hidden]`.
    a: Vec<f32>,
    /// The intermediate layer's output before and after GELU, `[t, inter]`.
    u: Vec<f32>,
    g: Vec<f32>,
}

struct LayerOp {
    /// The dense products in bf16 with f32 sums (bf16 mixed-precision training, as
    /// `LinearTrainOp { bf16: true }`), else f32.
    bf16: bool,
    /// The parameter tensors, in the order of the index constants above.
    params: Vec<Tensor>,
    eps: [f32; 2],
    attention: EncoderAttentionTrainOp,
    /// The dropout multipliers after the attention output and the output projections.
    drop: [Option<Vec<f32>>; 2],
    saved: Mutex<Option<Saved>>,
    mode: Arc<TrainMode>,
}

/// Runs `f` on the values of every tensor of `ts` (f32, CPU, contiguous).
fn read_all<R>(
    ts: &[Tensor],
    f: impl FnOnce(&[&[f32]]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let guards: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices = Vec::with_capacity(ts.len());
    for (storage, layout) in &guards {
        match (&**storage, layout.contiguous_offsets()) {
            (candle_core::Storage::Cpu(CpuStorage::F32(d)), Some((a, b))) => slices.push(&d[a..b]),
            _ => {
                candle_core::bail!("encoder layer: a parameter is not a contiguous f32 CPU tensor")
            }
        }
    }
    f(&slices)
}

fn msg(e: String) -> candle_core::Error {
    candle_core::Error::Msg(e)
}

/// `x ∘ m + r` elementwise (dropout, then the residual), in place of `x`.
fn drop_add(x: &mut [f32], m: &[f32], r: &[f32]) {
    for ((x, m), r) in x.iter_mut().zip(m).zip(r) {
        *x = *x * m + r;
    }
}

/// `[t, n]` values of a gemm on the pool, none read: `lhs [t, k] · rhs [k, n]`.
///
/// # Safety
/// `lhs` and `rhs` reach every element their strides address for `(t, k)` and `(k, n)`.
unsafe fn product(t: usize, n: usize, k: usize, lhs: Mat, rhs: Mat) -> Vec<f32> {
    if t == 0 || n == 0 || k == 0 {
        return vec![0f32; t * n];
    }
    let mut out = Vec::with_capacity(t * n);
    // SAFETY: `out` has room for [t, n], which the product (every dimension positive)
    // writes entirely; the operands are the caller's contract.
    unsafe {
        gemm_on_pool((t, n, k), out.as_mut_ptr(), lhs, rhs, false);
        out.set_len(t * n);
    }
    out
}

/// The rows of a `[t, width]` gradient that take part in the backward products: all of
/// them, or a subset gathered into compact buffers.
enum Rows {
    All(usize),
    Some(Vec<usize>),
}

impl Rows {
    /// The rows of `g` with a value other than zero (all of them when none is zero).
    fn nonzero(g: &[f32], width: usize) -> Self {
        if width == 0 {
            return Rows::All(0);
        }
        let t = g.len() / width;
        let used: Vec<usize> = g
            .chunks_exact(width)
            .enumerate()
            .filter(|(_, row)| row.iter().any(|v| *v != 0.0))
            .map(|(i, _)| i)
            .collect();
        if used.len() == t {
            Rows::All(t)
        } else {
            Rows::Some(used)
        }
    }

    fn len(&self) -> usize {
        match self {
            Rows::All(t) => *t,
            Rows::Some(r) => r.len(),
        }
    }

    /// These rows of `src` (`width` wide), borrowed when they are all of them.
    fn gather<'a>(&self, src: &'a [f32], width: usize) -> std::borrow::Cow<'a, [f32]> {
        match self {
            Rows::All(_) => std::borrow::Cow::Borrowed(src),
            Rows::Some(rows) => {
                let mut out = Vec::with_capacity(rows.len() * width);
                for &r in rows {
                    out.extend_from_slice(&src[r * width..(r + 1) * width]);
                }
                std::borrow::Cow::Owned(out)
            }
        }
    }

    /// `g ∘ these rows of the dropout multipliers` (`None` without dropout).
    fn masked(&self, g: &[f32], drop: Option<&[f32]>, width: usize) -> Option<Vec<f32>> {
        let m = self.gather(drop?, width);
        Some(g.iter().zip(m.iter()).map(|(a, b)| a * b).collect())
    }

    /// `[t, width]` with these rows from `compact` (in order) and zeros elsewhere.
    fn scatter(&self, compact: Vec<f32>, width: usize, t: usize) -> Vec<f32> {
        match self {
            Rows::All(_) => compact,
            Rows::Some(rows) => {
                let mut out = vec![0f32; t * width];
                for (&r, row) in rows.iter().zip(compact.chunks_exact(width)) {
                    out[r * width..(r + 1) * width].copy_from_slice(row);
                }
                out
            }
        }
    }

    /// Adds `compact`'s rows to these rows of `dst` (`width` wide).
    fn scatter_add(&self, compact: &[f32], width: usize, dst: &mut [f32]) {
        let add = |d: &mut [f32], c: &[f32]| d.iter_mut().zip(c).for_each(|(d, c)| *d += c);
        match self {
            Rows::All(_) => add(dst, compact),
            Rows::Some(rows) => {
                for (&r, row) in rows.iter().zip(compact.chunks_exact(width.max(1))) {
                    add(&mut dst[r * width..(r + 1) * width], row);
                }
            }
        }
    }
}

impl LayerOp {
    /// `x [m, k] · Wᵀ + b` for `w [n, k]`.
    fn linear(
        &self,
        (w, n, k): (&[f32], usize, usize),
        x: &[f32],
        m: usize,
        b: &[f32],
    ) -> Result<Vec<f32>, String> {
        if self.bf16 {
            let packed = super::bf16::PackedBf16::from_f32(n, k, w)?;
            return super::bf16::matmul(&packed, x, m, Some(b));
        }
        matmul_blocks(w, n, k, x, m, Some(b))
    }

    /// `drop(x Wᵀ + b) + r` (`r` of `[m, n]`).
    fn linear_residual(
        &self,
        (w, n, k): (&[f32], usize, usize),
        (x, m): (&[f32], usize),
        b: &[f32],
        r: &[f32],
        drop: Option<&[f32]>,
    ) -> Result<Vec<f32>, String> {
        if drop.is_none() && !self.bf16 {
            return matmul_blocks_residual(w, n, k, x, m, Some(b), Some(r));
        }
        let mut o = self.linear((w, n, k), x, m, b)?;
        match drop {
            Some(d) => drop_add(&mut o, d, r),
            None => o.iter_mut().zip(r).for_each(|(o, r)| *o += r),
        }
        Ok(o)
    }

    /// `g [m, n] · W` for `w [n, k]`: `[m, k]`.
    fn input_grad(
        &self,
        (g, m): (&[f32], usize),
        (w, n, k): (&[f32], usize, usize),
    ) -> Result<Vec<f32>, String> {
        if g.len() != m * n || w.len() != n * k {
            return Err(format!(
                "input gradient: operands are not [{m}, {n}] · [{n}, {k}]"
            ));
        }
        if m == 0 {
            return Ok(Vec::new());
        }
        if self.bf16 {
            let wt = super::bf16::transpose(w, n, k);
            return super::bf16::product_nt(g, m, &wt, k, n);
        }
        // SAFETY: g is [m, n] and w [n, k], checked just above.
        Ok(unsafe { product(m, k, n, Mat::rows(g, n), Mat::rows(w, k)) })
    }

    /// `gᵀ · x` for `g [m, n]` (rows `gs` apart) and `x [m, k]`: `[n, k]` (a weight
    /// gradient). The bf16 path reads the transposes: `gt` (`gᵀ`, `[n, m]`) where given,
    /// else `g`'s (with `gs == n`), and `x`'s, made once per `x`.
    fn weight_grad(
        &self,
        (g, gs, gt): (&[f32], usize, Option<&[f32]>),
        (m, n): (usize, usize),
        (x, xt): (&[f32], &std::cell::OnceCell<Vec<f32>>),
        k: usize,
    ) -> Result<Vec<f32>, String> {
        if m == 0 {
            // No row in use (a gradient that is zero everywhere).
            return Ok(vec![0f32; n * k]);
        }
        if self.bf16 {
            let owned;
            let gt = match gt {
                Some(t) => t,
                None => {
                    owned = super::bf16::transpose(g, m, n);
                    &owned
                }
            };
            let xt = xt.get_or_init(|| super::bf16::transpose(x, m, k));
            return super::bf16::product_nt(gt, n, xt, k, m);
        }
        let need = if m == 0 { 0 } else { (m - 1) * gs + n };
        if g.len() < need || x.len() < m * k {
            return Err(format!(
                "weight gradient: operands do not hold [{m}, {n}] and [{m}, {k}]"
            ));
        }
        // SAFETY: g holds m rows gs apart of n values (its transpose read through
        // `Mat::cols`) and x is [m, k], both checked just above.
        Ok(unsafe { product(n, k, m, Mat::cols(g, gs), Mat::rows(x, k)) })
    }

    /// `dst [m, k] += g [m, n] · W` for `w [n, k]`.
    fn add_input_grad(
        &self,
        dst: &mut [f32],
        (g, m): (&[f32], usize),
        (w, n, k): (&[f32], usize, usize),
    ) -> Result<(), String> {
        if dst.len() != m * k || g.len() != m * n || w.len() != n * k {
            return Err(format!(
                "input gradient: operands are not [{m}, {n}] · [{n}, {k}]"
            ));
        }
        if self.bf16 {
            let d = self.input_grad((g, m), (w, n, k))?;
            dst.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
            return Ok(());
        }
        if m > 0 && n > 0 && k > 0 {
            // SAFETY: the sizes were checked just above; dst is read and written.
            unsafe {
                gemm_on_pool(
                    (m, k, n),
                    dst.as_mut_ptr(),
                    Mat::rows(g, n),
                    Mat::rows(w, k),
                    true,
                )
            };
        }
        Ok(())
    }

    fn forward(
        &self,
        x: &[f32],
        p: &[&[f32]],
        (b, s, hd): (usize, usize, usize),
    ) -> candle_core::Result<(Vec<f32>, Saved)> {
        let t = b * s;
        let inter = p[BI].len();
        let isa = Isa::detect();
        let mut wqkv = Vec::with_capacity(3 * hd * hd);
        let mut bqkv = Vec::with_capacity(3 * hd);
        for (w, bias) in [(WQ, BQ), (WK, BK), (WV, BV)] {
            wqkv.extend_from_slice(p[w]);
            bqkv.extend_from_slice(p[bias]);
        }
        let qkv = self.linear((&wqkv, 3 * hd, hd), x, t, &bqkv).map_err(msg)?;
        let mut ctx = Vec::with_capacity(t * hd);
        let steps = Steps {
            input: 3 * hd,
            output: hd,
        };
        // SAFETY: `ctx` has room for t rows of hd, which forward_into writes entirely
        // (each head its whole block, the heads every column) before the length is set.
        unsafe {
            let (q, k, v) = (
                &qkv[..],
                &qkv[hd.min(qkv.len())..],
                &qkv[(2 * hd).min(qkv.len())..],
            );
            self.attention
                .forward_into((q, k, v), &[b, s, hd], steps, OutPtr(ctx.as_mut_ptr()))?;
            ctx.set_len(t * hd);
        }
        let s1 = self
            .linear_residual(
                (p[WO], hd, hd),
                (&ctx, t),
                p[BO],
                x,
                self.drop[0].as_deref(),
            )
            .map_err(msg)?;
        let a = layer_norm_forward(&s1, p[N1W], p[N1B], self.eps[0]).map_err(msg)?;
        let u = self.linear((p[WI], inter, hd), &a, t, p[BI]).map_err(msg)?;
        let g = gelu(&u, isa);
        let s2 = self
            .linear_residual(
                (p[WF], hd, inter),
                (&g, t),
                p[BF],
                &a,
                self.drop[1].as_deref(),
            )
            .map_err(msg)?;
        let y = layer_norm_forward(&s2, p[N2W], p[N2B], self.eps[1]).map_err(msg)?;
        Ok((
            y,
            Saved {
                wqkv,
                qkv,
                ctx,
                s1,
                s2,
                a,
                u,
                g,
            },
        ))
    }

    /// The backward pass of `LN(drop(h Wᵀ + b) + r)` on the rows in use, from the
    /// output's gradient `g` (`[n1, hd]`, gathered): `(∂s, ∂h)`, where `∂s` (the
    /// normalised sum's gradient) is also the residual's, and the gradients of `W`, `b`
    /// and the norm's weight and bias, written into `grads`.
    fn residual_backward(
        &self,
        rows: &Rows,
        g: &[f32],
        part: Residual,
        p: &[&[f32]],
        grads: &mut [Vec<f32>],
    ) -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
        let (hd, n1) = (p[N1W].len(), rows.len());
        let (iw, ib, inw, inb) = part.params;
        let (h, k) = part.input;
        let (ds, dnw, dnb) = layer_norm_backward(
            Isa::detect(),
            &rows.gather(part.pre_norm, hd),
            p[inw],
            g,
            self.eps[part.which],
        )
        .map_err(msg)?;
        grads[inw] = dnw;
        grads[inb] = dnb;
        let dropped = rows.masked(&ds, self.drop[part.which].as_deref(), hd);
        let d_o = dropped.as_deref().unwrap_or(&ds);
        grads[ib] = column_sums(d_o, n1, hd);
        // ∂W [hd, k] = ∂oᵀ h
        let h = rows.gather(h, k);
        grads[iw] = self
            .weight_grad(
                (d_o, hd, None),
                (n1, hd),
                (&h, &std::cell::OnceCell::new()),
                k,
            )
            .map_err(msg)?;
        drop(h);
        // ∂h [n1, k] = ∂o W
        let dh = self.input_grad((d_o, n1), (p[iw], hd, k)).map_err(msg)?;
        drop(dropped);
        Ok((ds, dh))
    }

    /// `∂x` from `∂y`, with the parameters' gradients in the order of `params`.
    ///
    /// Rows whose gradient is zero are left out of the products: they add nothing to
    /// any sum, and their own gradients stay zero. In training that is most rows: the
    /// last layer of a sequence classifier gets a gradient on its `[CLS]` rows alone,
    /// and padding rows (keys the mask removes: their probabilities are exactly zero)
    /// get none in any layer. The feed-forward and output-projection part runs on the
    /// rows of `∂y` that are not zero, the projections' weight gradients and `∂x` on the
    /// rows of `∂qkv` that are not zero, each gathered into a compact buffer (none when
    /// every row takes part).
    fn backward(
        &self,
        sv: &Saved,
        x: &[f32],
        gy: &[f32],
        p: &[&[f32]],
        (b, s, hd): (usize, usize, usize),
    ) -> candle_core::Result<(Vec<f32>, Vec<Vec<f32>>)> {
        let t = b * s;
        let inter = p[BI].len();
        let isa = Isa::detect();
        if x.len() != t * hd || gy.len() != t * hd || sv.u.len() != t * inter {
            candle_core::bail!("encoder layer backward: operands are not [{b}, {s}, {hd}]");
        }
        let mut grads: Vec<Vec<f32>> = vec![Vec::new(); PARAMS];

        // The feed-forward half and the output projection, on the rows of ∂y in use.
        let rows = Rows::nonzero(gy, hd);
        let n1 = rows.len();
        let (ds1, dctx1) = {
            // y = LN₂(drop(g Wfᵀ + bf) + a)
            let out = Residual {
                pre_norm: &sv.s2,
                input: (&sv.g, inter),
                which: 1,
                params: (WF, BF, N2W, N2B),
            };
            let (mut da, dg) =
                self.residual_backward(&rows, &rows.gather(gy, hd), out, p, &mut grads)?;
            let du = gelu_grad(&rows.gather(&sv.u, inter), &dg, isa);
            drop(dg);
            grads[BI] = column_sums(&du, n1, inter);
            // ∂Wi [inter, hd] = ∂uᵀ a
            let a = rows.gather(&sv.a, hd);
            grads[WI] = self
                .weight_grad(
                    (&du, inter, None),
                    (n1, inter),
                    (&a, &std::cell::OnceCell::new()),
                    hd,
                )
                .map_err(msg)?;
            drop(a);
            // ∂a += ∂u Wi
            self.add_input_grad(&mut da, (&du, n1), (p[WI], inter, hd))
                .map_err(msg)?;
            drop(du);
            // a = LN₁(drop(c Woᵀ + bo) + x)
            let attn = Residual {
                pre_norm: &sv.s1,
                input: (&sv.ctx, hd),
                which: 0,
                params: (WO, BO, N1W, N1B),
            };
            self.residual_backward(&rows, &da, attn, p, &mut grads)?
        };
        // Back to all t rows (zero where ∂y was).
        let dctx = rows.scatter(dctx1, hd, t);
        let mut dx = rows.scatter(ds1, hd, t);

        // The attention, on every row (its keys and values get gradients from the rows
        // in use).
        let mut dqkv: Vec<f32> = Vec::with_capacity(t * 3 * hd);
        let steps = Steps {
            input: 3 * hd,
            output: hd,
        };
        let q = &sv.qkv[..];
        let k = &sv.qkv[hd.min(q.len())..];
        let v = &sv.qkv[(2 * hd).min(q.len())..];
        // SAFETY: `dqkv` has room for t rows of 3·hd; backward_into writes columns
        // 0..hd (∂q), hd..2hd (∂k) and 2hd..3hd (∂v) of every row (each head its
        // columns of all rows, the heads covering 0..hd) before the length is set.
        unsafe {
            let base = OutPtr(dqkv.as_mut_ptr());
            let outs = (base, OutPtr(base.at(hd)), OutPtr(base.at(2 * hd)));
            self.attention
                .backward_into((q, k, v), &dctx, &[b, s, hd], steps, outs)?;
            dqkv.set_len(t * 3 * hd);
        }
        drop(dctx);

        // The projections, on the rows of ∂qkv in use.
        let rows = Rows::nonzero(&dqkv, 3 * hd);
        let n2 = rows.len();
        let dqkv = rows.gather(&dqkv, 3 * hd);
        let dbqkv = column_sums(&dqkv, n2, 3 * hd);
        let xr = rows.gather(x, hd);
        // ∂W of q, k, v: columns j·hd.. of ∂qkv's n2 rows (3·hd apart); the bf16 path
        // transposes ∂qkv and x once for the three.
        let dqkv_t = self.bf16.then(|| super::bf16::transpose(&dqkv, n2, 3 * hd));
        let xr_t = std::cell::OnceCell::new();
        for (j, w) in [WQ, WK, WV].into_iter().enumerate() {
            // ∂Wj [hd, hd] = ∂jᵀ x
            let dj = &dqkv[(j * hd).min(dqkv.len())..];
            let dj_t = dqkv_t
                .as_deref()
                .map(|d| &d[j * hd * n2..(j + 1) * hd * n2]);
            grads[w] = self
                .weight_grad((dj, 3 * hd, dj_t), (n2, hd), (&xr, &xr_t), hd)
                .map_err(msg)?;
        }
        // ∂x [n2, hd] = ∂qkv Wqkv
        let dxr = self
            .input_grad((&dqkv, n2), (&sv.wqkv, 3 * hd, hd))
            .map_err(msg)?;
        rows.scatter_add(&dxr, hd, &mut dx);
        for (j, bias) in [BQ, BK, BV].into_iter().enumerate() {
            grads[bias] = dbqkv[j * hd..(j + 1) * hd].to_vec();
        }
        Ok((dx, grads))
    }

    fn dims(&self, dims: &[usize]) -> candle_core::Result<(usize, usize, usize)> {
        match dims {
            &[b, s, hd] => Ok((b, s, hd)),
            _ => candle_core::bail!("encoder layer takes [batch, seq, hidden], got {dims:?}"),
        }
    }
}

impl CustomOp1 for LayerOp {
    fn name(&self) -> &'static str {
        "rustformers-encoder-layer-train"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let what = "encoder layer";
        let x = contiguous(f32_data(s, what)?, l, what)?;
        let dims = self.dims(l.shape().dims())?;
        let (y, saved) = read_all(&self.params, |p| self.forward(x, p, dims))?;
        *self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg("encoder layer state poisoned".into()))? =
            Some(saved);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let dims = self.dims(arg.dims())?;
        // Taken: the activations are freed as the backward pass goes down the layers.
        let saved = self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg("encoder layer state poisoned".into()))?
            .take()
            .ok_or_else(|| {
                candle_core::Error::Msg(
                    "encoder layer: a second backward pass through the same forward pass".into(),
                )
            })?;
        let (dx, grads) = read_f32(arg, |x| {
            read_f32(grad_res, |gy| {
                read_all(&self.params, |p| self.backward(&saved, x, gy, p, dims))
            })
        })???;
        drop(saved);
        for (param, g) in self.params.iter().zip(grads) {
            let g = Tensor::from_vec(g, param.shape(), param.device())?;
            self.mode.stash_grad(param, g)?;
        }
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::encoder_self_attention;
    use candle_core::{DType, Device, Var};

    /// A layer of random parameters (hidden `h`, intermediate `f`), as Vars.
    struct Layer {
        lin: Vec<QLinear>,
        norms: [LayerNorm; 2],
        vars: Vec<Var>,
    }

    impl Layer {
        /// The fused op's view of this layer: `drops` are the probabilities', the
        /// attention output's and the output's dropout.
        fn parts<'a>(
            &'a self,
            activation: &'a Activation,
            heads: usize,
            [probs_dropout, attention_dropout, output_dropout]: [&'a Dropout; 3],
            mode: Option<&'a Arc<TrainMode>>,
        ) -> PostLnEncoderLayer<'a> {
            PostLnEncoderLayer {
                query: &self.lin[0],
                key: &self.lin[1],
                value: &self.lin[2],
                attention_output: &self.lin[3],
                attention_norm: &self.norms[0],
                intermediate: &self.lin[4],
                activation,
                output: &self.lin[5],
                output_norm: &self.norms[1],
                heads,
                probs_dropout,
                attention_dropout,
                output_dropout,
                mode,
            }
        }
    }

    fn layer(h: usize, f: usize) -> Layer {
        let dev = Device::Cpu;
        let mut vars = Vec::new();
        // Values around `shift`, `scale` apart.
        let mut var = |dims: &[usize], scale: f64, shift: f64| {
            let t = Tensor::randn(0f32, 1.0, dims, &dev)
                .unwrap()
                .affine(scale, shift)
                .unwrap();
            let v = Var::from_tensor(&t).unwrap();
            vars.push(v.clone());
            v.as_tensor().clone()
        };
        let mut lin = Vec::new();
        for (o, i) in [(h, h), (h, h), (h, h), (h, h), (f, h), (h, f)] {
            let w = var(&[o, i], 1.0 / (i as f64).sqrt(), 0.0);
            let b = var(&[o], 0.1, 0.0);
            lin.push(QLinear::new(w, Some(b)));
        }
        let mut norm = || LayerNorm {
            weight: var(&[h], 0.1, 1.0),
            bias: var(&[h], 0.1, 0.0),
            eps: 1e-12,
        };
        let norms = [norm(), norm()];
        Layer { lin, norms, vars }
    }

    /// The fused training layer equals the op-by-op layer (BERT's forward written out
    /// with the same core ops) in its output and in the gradients of its input and of
    /// every parameter, with dropout on (the same masks drawn) and off, with padded
    /// keys in the mask, for a gradient on every row, on the first rows alone and on none; with
    /// f32 products and with bf16 ones (bf16-training layers on both sides).
    #[test]
    fn fused_layer_equals_the_op_by_op_layer() {
        for bf16 in [false, true] {
            fused_layer_case(bf16);
        }
    }

    fn fused_layer_case(bf16: bool) {
        let dev = Device::Cpu;
        let (b, s, heads, d, f) = (3, 9, 4, 8, 48);
        let h = heads * d;
        let mut l = layer(h, f);
        if bf16 {
            for lin in l.lin.iter_mut() {
                if let QLinear::Dense { weight, bias } = lin.clone() {
                    *lin = QLinear::Bf16Train { weight, bias };
                }
            }
        }
        // bf16 products run the same kernels on both sides: the same tolerance.
        let tol = 1e-5;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, s, h), &dev).unwrap()).unwrap();
        let full = Tensor::randn(0f32, 1.0, (b, s, h), &dev).unwrap();
        // A gradient on each sequence's first row alone (a classifier's [CLS]): the
        // backward pass leaves out the other rows, and the padding rows altogether.
        let first = Tensor::cat(
            &[
                full.narrow(1, 0, 1).unwrap(),
                Tensor::zeros((b, s - 1, h), DType::F32, &dev).unwrap(),
            ],
            1,
        )
        .unwrap();
        let mut keep = vec![0f32; b * s];
        keep[b * s - 3..].fill(f32::MIN);
        let mask = Tensor::from_vec(keep, (b, 1, 1, s), &dev).unwrap();
        let act = Activation::Gelu;
        let zero = full.zeros_like().unwrap();
        for (p, g) in [
            (0.0, &full),
            (0.25, &full),
            (0.0, &first),
            (0.25, &first),
            (0.25, &zero),
        ] {
            let mode = Arc::new(TrainMode::default());
            let dropout = || Dropout::new(p, Some(mode.clone()));
            let (pd, ad, od) = (dropout(), dropout(), dropout());
            let parts = l.parts(&act, heads, [&pd, &ad, &od], Some(&mode));
            mode.set(true, 7);
            let fused = parts
                .train_forward(x.as_tensor(), Some(&mask))
                .unwrap()
                .unwrap();
            mode.clear_side_grads().unwrap();
            let mut got = (&fused * g).unwrap().sum_all().unwrap().backward().unwrap();
            mode.merge_side_grads(&mut got).unwrap();

            mode.set(true, 7);
            let xt = x.as_tensor();
            let [q, k, v] = [0, 1, 2].map(|i| l.lin[i].forward(xt).unwrap());
            let scale = 1.0 / (d as f64).sqrt();
            let c = encoder_self_attention(&q, &k, &v, heads, Some(&mask), scale, &pd).unwrap();
            let o = ad.forward(&l.lin[3].forward(&c).unwrap()).unwrap();
            let a = l.norms[0].forward(&(o + xt).unwrap()).unwrap();
            let u = act.forward(&l.lin[4].forward(&a).unwrap()).unwrap();
            let o2 = od.forward(&l.lin[5].forward(&u).unwrap()).unwrap();
            let want = l.norms[1].forward(&(o2 + &a).unwrap()).unwrap();
            let expected = (&want * g).unwrap().sum_all().unwrap().backward().unwrap();

            let diff = crate::test_util::max_abs_diff(&fused, &want);
            assert!(diff < tol, "bf16={bf16} p={p}: output {diff}");
            if p > 0.0 {
                // Dropout did something: the output differs from the one without.
                mode.set(false, 0);
                let plain = parts.train_forward(xt, Some(&mask)).unwrap().unwrap();
                assert!(crate::test_util::max_abs_diff(&plain, &fused) > 1e-2);
            }
            for (i, v) in std::iter::once(&x).chain(&l.vars).enumerate() {
                let (gv, wv) = (got.get(v.as_tensor()), expected.get(v.as_tensor()));
                let (Some(gv), Some(wv)) = (gv, wv) else {
                    panic!(
                        "p={p}: gradient {i} missing: {}, {}",
                        gv.is_some(),
                        wv.is_some()
                    );
                };
                let scale = crate::test_util::max_abs(wv);
                let diff = crate::test_util::max_abs_diff(gv, wv);
                assert!(
                    diff <= 10.0 * tol * (1.0 + scale),
                    "bf16={bf16} p={p}: gradient {i}: {diff} (scale {scale})"
                );
            }
        }
    }

    /// Where the op does not apply it says so (`None`), and the caller runs the layer
    /// op by op: an input outside autograd, a model not loaded for training.
    #[test]
    fn the_fused_layer_declines_what_it_does_not_cover() {
        let (h, heads) = (16, 2);
        let l = layer(h, 32);
        let mode = Arc::new(TrainMode::default());
        let none = Dropout::default();
        let act = Activation::Gelu;
        let tanh = Activation::GeluTanh;
        let x = Tensor::randn(0f32, 1.0, (2, 5, h), &Device::Cpu).unwrap();
        let tracked = Var::from_tensor(&x).unwrap();
        for (input, mode, act, applies) in [
            (&x, Some(&mode), &act, false),
            (tracked.as_tensor(), None, &act, false),
            (tracked.as_tensor(), Some(&mode), &tanh, false),
            (tracked.as_tensor(), Some(&mode), &act, true),
        ] {
            let layer = l.parts(act, heads, [&none; 3], mode);
            assert_eq!(layer.train_forward(input, None).unwrap().is_some(), applies);
        }
    }
}
