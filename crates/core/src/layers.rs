//! Layers shared by model families: activations by their config name, attention masks.

use candle_core::{DType, Tensor, D};

use crate::error::{Error, Result};
use crate::kernels::runs_kernels;

/// An activation function named as in config.json's `hidden_act` / `activation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: the exact erf form (PyTorch's default).
    Gelu,
    /// `gelu_new`, `gelu_fast`, `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    Relu,
    /// `silu` / `swish`.
    Silu,
    /// `quick_gelu`: x * sigmoid(1.702 x).
    QuickGelu,
    Tanh,
}

impl Activation {
    /// Looks up an activation by the name Python's `ACT2FN` uses.
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "gelu" | "gelu_python" => Self::Gelu,
            "gelu_new" | "gelu_fast" | "gelu_pytorch_tanh" => Self::GeluTanh,
            "relu" => Self::Relu,
            "silu" | "swish" => Self::Silu,
            "quick_gelu" => Self::QuickGelu,
            "tanh" => Self::Tanh,
            other => {
                return Err(Error::Unsupported(format!(
                    "unknown activation `{other}`; known: gelu, gelu_new, gelu_fast, \
                     gelu_pytorch_tanh, relu, silu, swish, quick_gelu, tanh"
                )))
            }
        })
    }

    /// `act(gate) · up`, the gated MLP's product: one fused pass for SiLU in f32 on
    /// CPU, two ops otherwise.
    pub fn forward_mul(&self, gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
        if *self == Self::Silu
            && runs_kernels(gate)
            && runs_kernels(up)
            && gate.shape() == up.shape()
        {
            return gate
                .contiguous()?
                .apply_op2_no_bwd(&up.contiguous()?, &crate::kernels::activation::SiluMul);
        }
        self.forward(gate)? * up
    }

    /// Applies the activation.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Gelu => crate::kernels::activation::gelu_erf_tensor(x),
            Self::GeluTanh => x.gelu(),
            Self::Relu => x.relu(),
            Self::Silu => x.silu(),
            Self::QuickGelu => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
            Self::Tanh => x.tanh(),
        }
    }
}

/// An embedding table whose lookup fails with a clear error (instead of reading out of
/// bounds) when an id is not below the number of rows: a tokenizer bigger than its
/// model, or token types a model does not have.
#[derive(Debug, Clone)]
pub struct Embedding {
    table: Table,
    rows: usize,
    name: String,
}

/// Where the rows come from: a dense tensor, or a quantized GGUF table whose looked-up
/// rows are dequantized on the fly (no f32 copy of the whole vocabulary).
#[derive(Debug, Clone)]
enum Table {
    Dense(candle_nn::Embedding),
    Quantized(std::sync::Arc<crate::kernels::qmatmul::PackedQ>),
}

impl Embedding {
    /// Wraps an existing `[rows, dim]` table.
    pub fn new(weight: Tensor, name: &str) -> candle_core::Result<Self> {
        let (rows, dim) = weight.dims2()?;
        Ok(Self {
            table: Table::Dense(candle_nn::Embedding::new(weight, dim)),
            rows,
            name: name.to_string(),
        })
    }

    /// A quantized table (CPU).
    pub fn quantized(table: std::sync::Arc<crate::kernels::qmatmul::PackedQ>, name: &str) -> Self {
        Self {
            rows: table.rows(),
            table: Table::Quantized(table),
            name: name.to_string(),
        }
    }

    /// The `[rows, dim]` table (dequantized to f32 when stored quantized).
    pub fn embeddings(&self) -> candle_core::Result<Tensor> {
        match &self.table {
            Table::Dense(t) => Ok(t.embeddings().clone()),
            Table::Quantized(q) => Tensor::from_vec(
                q.dequantize(),
                (q.rows(), q.cols()),
                &candle_core::Device::Cpu,
            ),
        }
    }

    /// Looks ids up, checking their range first.
    pub fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        if ids.elem_count() > 0 {
            let max = ids
                .flatten_all()?
                .max(0)?
                .to_dtype(DType::U32)?
                .to_scalar::<u32>()? as usize;
            if max >= self.rows {
                candle_core::bail!(
                    "id {max} is out of range for `{}`, which has {} rows",
                    self.name,
                    self.rows
                );
            }
        }
        match &self.table {
            Table::Dense(t) => candle_nn::Module::forward(t, ids),
            Table::Quantized(q) => {
                let flat = ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
                let dim = q.cols();
                let mut out = vec![0f32; flat.len() * dim];
                for (id, row) in flat.iter().zip(out.chunks_exact_mut(dim)) {
                    q.dequantize_row(*id as usize, row);
                }
                let mut shape = ids.dims().to_vec();
                shape.push(dim);
                Tensor::from_vec(out, shape, ids.device())
            }
        }
    }
}

/// Loads an embedding table of `rows` × `dim` from `vb` (key `weight`).
pub fn embedding(
    rows: usize,
    dim: usize,
    vb: candle_nn::VarBuilder,
) -> candle_core::Result<Embedding> {
    let name = vb.prefix();
    let table = Table::Dense(candle_nn::embedding(rows, dim, vb)?);
    Ok(Embedding { table, rows, name })
}

/// Turns a `[batch, seq]` 0/1 attention mask into the additive `[batch, 1, 1, seq]` mask
/// encoders add to attention scores: 0 where attended, the dtype's minimum elsewhere.
pub fn extended_attention_mask(mask: &Tensor, dtype: DType) -> candle_core::Result<Tensor> {
    let (b, s) = mask.dims2()?;
    let min = match dtype {
        DType::F16 => -65504.0,
        DType::BF16 => -3.389_531_4e38,
        DType::F64 => f64::MIN,
        _ => f32::MIN as f64,
    };
    let m = mask.to_dtype(DType::F32)?.reshape((b, 1, 1, s))?;
    let inverted = m.affine(-1.0, 1.0)?;
    (inverted * min)?.to_dtype(dtype)
}

/// The causal masks of a model whose layers differ in attention window: one mask per
/// distinct window (`None`: global), built once per forward and shared by the layers.
#[derive(Debug, Clone)]
pub struct WindowMasks(Vec<(Option<usize>, Tensor)>);

impl WindowMasks {
    /// [`causal_mask`] for each distinct entry of `windows`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        attention_mask: Option<&Tensor>,
        batch: usize,
        q_len: usize,
        past: usize,
        windows: &[Option<usize>],
        dtype: DType,
        device: &candle_core::Device,
    ) -> candle_core::Result<Self> {
        let mut masks: Vec<(Option<usize>, Tensor)> = Vec::new();
        for w in windows {
            if !masks.iter().any(|(k, _)| k == w) {
                let m = causal_mask(attention_mask, batch, q_len, past, *w, dtype, device)?;
                masks.push((*w, m));
            }
        }
        Ok(Self(masks))
    }

    /// The mask of layers with `window`.
    pub fn get(&self, window: Option<usize>) -> candle_core::Result<&Tensor> {
        match self.0.iter().find(|(k, _)| *k == window) {
            Some((_, m)) => Ok(m),
            None => candle_core::bail!("internal error: no attention mask for window {window:?}"),
        }
    }
}

/// The additive attention mask of a decoder step: `[batch, 1, q_len, past + q_len]`,
/// 0 where query `i` (absolute position `past + i`) may attend key `j` — `j <= past + i`,
/// the key is not padding (`attention_mask[b][j] == 1`) and, with a sliding window,
/// `past + i - j < window` — and the dtype's minimum elsewhere, as Python builds it.
pub fn causal_mask(
    attention_mask: Option<&Tensor>,
    batch: usize,
    q_len: usize,
    past: usize,
    sliding_window: Option<usize>,
    dtype: DType,
    device: &candle_core::Device,
) -> candle_core::Result<Tensor> {
    let total = past + q_len;
    let pad: Option<Vec<Vec<u32>>> = match attention_mask {
        Some(m) => {
            let (b, t) = m.dims2()?;
            if b != batch || t != total {
                candle_core::bail!(
                    "attention_mask is [{b}, {t}] but the input needs [{batch}, {total}] (cached + new positions)"
                );
            }
            Some(m.to_dtype(DType::U32)?.to_vec2::<u32>()?)
        }
        None => None,
    };
    let min = match dtype {
        DType::F16 => -65504.0f32,
        DType::BF16 => -3.389_531_4e38,
        _ => f32::MIN,
    };
    let mut data = Vec::with_capacity(batch * q_len * total);
    for b in 0..batch {
        for i in 0..q_len {
            let q = past + i;
            for j in 0..total {
                let causal = j <= q;
                let in_window = sliding_window.is_none_or(|w| q - j.min(q) < w);
                let not_pad = pad.as_ref().is_none_or(|p| p[b][j] != 0);
                data.push(if causal && in_window && not_pad {
                    0.0
                } else {
                    min
                });
            }
        }
    }
    Tensor::from_vec(data, (batch, 1, q_len, total), device)?.to_dtype(dtype)
}

/// `[batch, kv_heads, seq, dim]` → `[batch, kv_heads * n_rep, seq, dim]`, each key/value
/// head repeated `n_rep` times in place (Python's `repeat_kv`).
pub fn repeat_kv(x: &Tensor, n_rep: usize) -> candle_core::Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, h, s, d) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, h, n_rep, s, d))?
        .reshape((b, h * n_rep, s, d))
}

/// Decoder self-attention over the cached keys and values, with grouped-query heads:
/// `q [b, heads, s, d]`, `k`/`v` `[b, kv_heads, t, d]` (views of the cache are fine),
/// `mask` additive `[b, 1, s, t]`. Scores are `q·kᵀ · scale`, soft-capped as
/// `cap · tanh(x / cap)` when `softcap` is set (Gemma 2), then masked; softmax in f32.
/// Returns `[b, s, heads · d]`. f32 on CPU with up to 16 queries (decoding) takes the
/// fused row kernel; prompts go op by op.
pub fn cached_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
    softcap: Option<f64>,
) -> candle_core::Result<Tensor> {
    cached_attention_with(q, k, v, mask, scale, softcap, &Dropout::default())
}

/// [`cached_attention`] with dropout on the attention probabilities (Python's
/// `attention_dropout`, applied in training only).
pub fn cached_attention_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
    softcap: Option<f64>,
    probs_dropout: &Dropout,
) -> candle_core::Result<Tensor> {
    let (_, h, s, _) = q.dims4()?;
    let kv_heads = k.dim(1)?;
    if kv_heads == 0 || h % kv_heads != 0 {
        candle_core::bail!("{h} attention heads cannot share {kv_heads} key/value heads");
    }
    if s <= FUSED_ATTENTION_MAX_QUERIES
        && !probs_dropout.is_active()
        && runs_kernels(q)
        && runs_kernels(k)
        && runs_kernels(v)
    {
        return fused_attention(q, k, v, Some(mask), scale, softcap);
    }
    attention_by_ops(q, k, v, mask, scale, softcap, probs_dropout)
}

/// Attention through the fused CPU kernel (f32), whatever the query count: `mask`
/// additive and broadcastable to `[b, 1, s, t]` (none: nothing masked); returns
/// `[b, s, heads · d]`.
fn fused_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
    softcap: Option<f64>,
) -> candle_core::Result<Tensor> {
    let (b, _, s, _) = q.dims4()?;
    let t = k.dim(2)?;
    let mask = match mask {
        Some(m) => m
            .to_dtype(DType::F32)?
            .broadcast_as((b, 1, s, t))?
            .flatten_all()?
            .to_vec1::<f32>()?,
        None => vec![0f32; b * s * t],
    };
    let op = crate::kernels::fused::AttentionOp {
        mask,
        scale: scale as f32,
        softcap: softcap.map(|c| c as f32),
    };
    q.contiguous()?.apply_op3_no_bwd(k, v, &op)
}

/// Query positions up to which [`cached_attention`] runs fused (the row kernel, for
/// decoding). Prompts go through candle's batched matmuls: on SmolLM2 the fused per-head
/// gemm path ran a 512-token prompt at half the speed, and for 17-128 tokens it moved the
/// Q4_1 model's logits enough (through the 8-bit activation rounding of the next layer)
/// to flip a 0.34-margin token of the llama.cpp-follow test.
const FUSED_ATTENTION_MAX_QUERIES: usize = 16;

/// [`cached_attention`] op by op (repeat the key/value heads, batched matmuls).
fn attention_by_ops(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
    softcap: Option<f64>,
    probs_dropout: &Dropout,
) -> candle_core::Result<Tensor> {
    let (b, h, s, d) = q.dims4()?;
    let n_rep = h / k.dim(1)?;
    let k = repeat_kv(k, n_rep)?.contiguous()?;
    let v = repeat_kv(v, n_rep)?.contiguous()?;
    let raw = q.matmul(&k.t()?)?;
    let t = k.dim(2)?;
    if softcap.is_none()
        && runs_kernels(&raw)
        && runs_kernels(mask)
        && matches!(mask.dims4(), Ok((mb, 1, ms, mt)) if (mb == b || mb == 1) && ms == s && mt == t)
    {
        // Scale, mask and softmax in one pass, the same to the bit (see the op).
        let op = crate::kernels::fused::MaskedSoftmaxOp {
            scale: scale as f32,
        };
        let probs = raw.apply_op2_no_bwd(&mask.contiguous()?, &op)?;
        let probs = probs_dropout.forward(&probs)?;
        return probs.matmul(&v)?.transpose(1, 2)?.reshape((b, s, h * d));
    }
    let mut scores = (raw * scale)?;
    if let Some(cap) = softcap {
        scores = ((scores / cap)?.tanh()? * cap)?;
    }
    let scores = scores.broadcast_add(mask)?;
    let probs = softmax_last(&scores.to_dtype(compute_dtype(q.dtype()))?)?.to_dtype(q.dtype())?;
    let probs = probs_dropout.forward(&probs)?;
    probs.matmul(&v)?.transpose(1, 2)?.reshape((b, s, h * d))
}

/// Encoder self-attention returning `[batch, seq, heads · dim]` (the layout the output
/// projection takes): `q, k, v` `[batch, heads, seq, dim]`, `mask` additive, broadcastable
/// to `[batch, 1, seq_q, seq_k]`. f32 on CPU takes the fused kernel; the rest
/// [`attention`] and a transpose.
pub fn encoder_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> candle_core::Result<Tensor> {
    encoder_attention_with(q, k, v, mask, scale, &Dropout::default())
}

/// [`encoder_attention`] with dropout on the attention probabilities (training).
pub fn encoder_attention_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
    probs_dropout: &Dropout,
) -> candle_core::Result<Tensor> {
    let (b, h, s, d) = q.dims4()?;
    if runs_kernels(q) && runs_kernels(k) && runs_kernels(v) && mask.is_none_or(runs_kernels) {
        return fused_attention(q, k, v, mask, scale, None);
    }
    let scores = (q.matmul(&k.t()?)? * scale)?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    let probs = probs_dropout.forward(&softmax_last(&scores.contiguous()?)?)?;
    probs.matmul(v)?.transpose(1, 2)?.reshape((b, s, h * d))
}

/// Encoder self-attention from the projections `q, k, v` `[batch, seq, heads · dim]`
/// (not yet split into heads), returning `[batch, seq, heads · dim]`; `mask` additive,
/// broadcastable to `[batch, 1, seq, seq]`. For f32 on the CPU one op computes it from
/// the projections' columns (no copies to split and merge the heads), with its backward
/// pass when the inputs track gradients, and in training with the dropout masks drawn
/// as the op-by-op path draws them; otherwise the heads are split and
/// [`encoder_attention_with`] runs.
pub fn encoder_self_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    mask: Option<&Tensor>,
    scale: f64,
    probs_dropout: &Dropout,
) -> candle_core::Result<Tensor> {
    let (b, s, hd) = q.dims3()?;
    if heads == 0 || hd % heads != 0 {
        candle_core::bail!("attention: hidden size {hd} for {heads} heads");
    }
    let f32_cpu = [q, k, v].into_iter().all(crate::kernels::f32_cpu);
    if f32_cpu && mask.is_none_or(|m| !m.track_op()) {
        let mask = match mask {
            Some(m) => m
                .to_dtype(DType::F32)?
                .broadcast_as((b, 1, s, s))?
                .flatten_all()?
                .to_vec1::<f32>()?,
            None => vec![0f32; b * s * s],
        };
        let op = crate::kernels::train::EncoderAttentionTrainOp {
            heads,
            mask,
            scale: scale as f32,
            // The same draws, in the same order, as dropout on [b, heads, s, s] probs.
            dropout: probs_dropout.multipliers(b * heads * s * s)?,
        };
        return q
            .contiguous()?
            .apply_op3(&k.contiguous()?, &v.contiguous()?, op);
    }
    let split = |x: &Tensor| {
        x.reshape((b, s, heads, hd / heads))?
            .transpose(1, 2)?
            .contiguous()
    };
    encoder_attention_with(
        &split(q)?,
        &split(k)?,
        &split(v)?,
        mask,
        scale,
        probs_dropout,
    )
}

/// Scaled dot-product attention for encoders: `q, k, v` are `[batch, heads, seq, dim]`,
/// `mask` an additive mask broadcastable to `[batch, heads, seq_q, seq_k]`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let scores = (q.matmul(&k.t()?)? * scale)?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    let probs = softmax_last(&scores.contiguous()?)?;
    probs.matmul(v)
}

/// The dtype norms, softmax and rotary run in: f32 for f32 and half precision, f64 for
/// f64 (the finite-difference gradient tests run in f64).
pub fn compute_dtype(d: DType) -> DType {
    if d == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// Whether a model is training (dropout on) and the generator its dropout masks come
/// from. One per model, shared by its dropout layers; the Trainer turns it on for
/// training steps (seeding it per micro-batch, so runs and resumed runs draw the same
/// masks) and off for evaluation.
///
/// It also collects the parameter gradients that fused training ops compute inside
/// their own backward pass, where candle sees only their input
/// ([`crate::kernels::encoder_layer`]): [`TrainMode::clear_side_grads`] before a backward
/// pass, [`TrainMode::merge_side_grads`] after it.
#[derive(Debug)]
pub struct TrainMode {
    on: std::sync::atomic::AtomicBool,
    rng: std::sync::Mutex<crate::rng::Rng>,
    /// `(parameter, gradient)` pairs from the current backward pass.
    side: std::sync::Mutex<Vec<(Tensor, Tensor)>>,
}

impl Default for TrainMode {
    fn default() -> Self {
        Self {
            on: std::sync::atomic::AtomicBool::new(false),
            rng: std::sync::Mutex::new(crate::rng::Rng::new(0)),
            side: std::sync::Mutex::new(Vec::new()),
        }
    }
}

impl TrainMode {
    /// Training (`on`, masks drawn from `seed`) or evaluation.
    pub fn set(&self, on: bool, seed: u64) {
        self.on.store(on, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut r) = self.rng.lock() {
            *r = crate::rng::Rng::new(seed);
        }
    }

    pub fn is_on(&self) -> bool {
        self.on.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Adds `grad` to the side gradient of `param` (a fused op's backward pass).
    pub(crate) fn stash_grad(&self, param: &Tensor, grad: Tensor) -> candle_core::Result<()> {
        let mut side = self.side_grads()?;
        match side.iter_mut().find(|(p, _)| p.id() == param.id()) {
            Some((_, g)) => *g = (&*g + grad)?,
            None => side.push((param.clone(), grad)),
        }
        Ok(())
    }

    fn side_grads(&self) -> candle_core::Result<std::sync::MutexGuard<'_, Vec<(Tensor, Tensor)>>> {
        self.side
            .lock()
            .map_err(|_| candle_core::Error::Msg("side gradients poisoned".into()))
    }

    /// Forgets the side gradients (call before a backward pass).
    pub fn clear_side_grads(&self) -> candle_core::Result<()> {
        self.side_grads()?.clear();
        Ok(())
    }

    /// Adds the side gradients of the backward pass just run to `store`, and forgets
    /// them.
    pub fn merge_side_grads(
        &self,
        store: &mut candle_core::backprop::GradStore,
    ) -> candle_core::Result<()> {
        for (p, g) in self.side_grads()?.drain(..) {
            let sum = match store.get(&p) {
                Some(outer) => (outer + g)?,
                None => g,
            };
            store.insert(&p, sum);
        }
        Ok(())
    }

    /// The mask generator's state (gradient checkpointing replays it).
    pub(crate) fn snapshot(&self) -> Option<crate::rng::Rng> {
        self.rng.lock().ok().map(|r| r.clone())
    }

    /// Runs `f` with the mask generator at `state`, then puts back the state it had.
    pub(crate) fn replay<T>(&self, state: crate::rng::Rng, f: impl FnOnce() -> T) -> T {
        let saved = self
            .rng
            .lock()
            .ok()
            .map(|mut r| std::mem::replace(&mut *r, state));
        let out = f();
        if let (Some(saved), Ok(mut r)) = (saved, self.rng.lock()) {
            *r = saved;
        }
        out
    }
}

/// `nn.Dropout(p)`: in training, each value is zeroed with probability `p` and the rest
/// scaled by `1 / (1 - p)`; the identity otherwise (and always without a [`TrainMode`]).
#[derive(Debug, Clone, Default)]
pub struct Dropout {
    p: f64,
    mode: Option<std::sync::Arc<TrainMode>>,
}

impl Dropout {
    pub fn new(p: f64, mode: Option<std::sync::Arc<TrainMode>>) -> Self {
        Self { p, mode }
    }

    /// True when `forward` changes its input (training, `p > 0`).
    pub fn is_active(&self) -> bool {
        self.active_mode().is_some()
    }

    /// The train mode, while it is on and `p > 0`.
    fn active_mode(&self) -> Option<&TrainMode> {
        self.mode.as_deref().filter(|m| m.is_on() && self.p > 0.0)
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let Some(mode) = self.active_mode() else {
            return Ok(x.clone());
        };
        if self.p >= 1.0 {
            return x.zeros_like();
        }
        let mask = self.draw(mode, x.elem_count(), |m| m)?;
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        x * mask
    }

    /// The multipliers `forward` would apply to `n` values (0 or `1/(1 − p)`, drawn from
    /// the generator in the same order), in f32; `None` when dropout is not active.
    pub fn multipliers(&self, n: usize) -> candle_core::Result<Option<Vec<f32>>> {
        let Some(mode) = self.active_mode() else {
            return Ok(None);
        };
        if self.p >= 1.0 {
            return Ok(Some(vec![0.0; n]));
        }
        self.draw(mode, n, |m| m as f32).map(Some)
    }

    /// `n` draws from `mode`'s generator: 0 with probability `p`, else `1/(1 − p)`, each
    /// through `f`. The generator is a counter (SplitMix64), so the draws are made on the
    /// kernel pool in blocks, each from its own position: the same values, in the same
    /// places, as drawing them one by one.
    fn draw<T: Copy + Send + Sync + Default>(
        &self,
        mode: &TrainMode,
        n: usize,
        f: impl Fn(f64) -> T + Sync,
    ) -> candle_core::Result<Vec<T>> {
        let (zero, keep) = (f(0.0), f(1.0 / (1.0 - self.p)));
        let start = {
            let mut rng = mode
                .rng
                .lock()
                .map_err(|_| candle_core::Error::Msg("dropout generator poisoned".into()))?;
            let start = rng.clone();
            rng.skip(n as u64);
            start
        };
        let p = self.p;
        let mut out = vec![T::default(); n];
        const BLOCK: usize = 1 << 14;
        let fill = |i0: usize, dst: &mut [T]| start.bernoulli_fill(i0 as u64, p, zero, keep, dst);
        if n <= BLOCK {
            fill(0, &mut out);
        } else {
            let blocks: Vec<std::sync::Mutex<&mut [T]>> =
                out.chunks_mut(BLOCK).map(std::sync::Mutex::new).collect();
            crate::kernels::pool::Pool::global().run(blocks.len(), &|b| {
                // Each block's lock is taken once, by its own task (never poisoned: a
                // fill does not panic; were it, the values are rewritten whole anyway).
                let mut dst = blocks[b].lock().unwrap_or_else(|e| e.into_inner());
                fill(b * BLOCK, &mut dst);
            });
        }
        Ok(out)
    }
}

/// Softmax over the last dimension: candle's fused kernel, or (for tensors that track
/// gradients, which that kernel would drop) the differentiable op-by-op form.
pub fn softmax_last(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.track_op() {
        candle_nn::ops::softmax(x, candle_core::D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

/// Layer normalisation over the last dimension with Python's semantics, computed in f32
/// for half-precision inputs.
pub fn layer_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> candle_core::Result<Tensor> {
    let op = crate::kernels::fused::LayerNormOp { eps: eps as f32 };
    if runs_kernels(x) && runs_kernels(weight) && runs_kernels(bias) {
        return x
            .contiguous()?
            .apply_op3_no_bwd(&weight.contiguous()?, &bias.contiguous()?, &op);
    }
    if [x, weight, bias].into_iter().all(crate::kernels::f32_cpu) {
        // Training: the same kernel, with its backward pass.
        return x
            .contiguous()?
            .apply_op3(&weight.contiguous()?, &bias.contiguous()?, op);
    }
    layer_norm_by_ops(x, weight, bias, eps)
}

/// [`layer_norm`] op by op (half-precision inputs, other devices).
fn layer_norm_by_ops(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> candle_core::Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(compute_dtype(dtype))?;
    let mean = xf.mean_keepdim(D::Minus1)?;
    let centered = xf.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed
        .to_dtype(dtype)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)
}

/// A LayerNorm module with checkpoint names `weight` and `bias`.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    /// Loads `weight` and `bias` of size `dim`.
    pub fn load(vb: candle_nn::VarBuilder, dim: usize, eps: f64) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            bias: vb.get(dim, "bias")?,
            eps,
        })
    }

    /// Normalises `x` over its last dimension.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn activations_by_name() {
        let x = Tensor::new(&[-1.0f32, 0.0, 1.0], &Device::Cpu).unwrap();
        let g = Activation::from_name("gelu").unwrap().forward(&x).unwrap();
        let v = g.to_vec1::<f32>().unwrap();
        assert!((v[2] - 0.841_344_7).abs() < 1e-5, "{v:?}");
        assert!((v[0] + 0.158_655_3).abs() < 1e-5, "{v:?}");
        assert!(Activation::from_name("nope").is_err());
    }

    /// The fused decoding kernel equals the op-by-op path: grouped heads, a strided
    /// cache view, left padding in the mask, soft-capping.
    #[test]
    fn fused_attention_equals_the_op_by_op_path() {
        let dev = Device::Cpu;
        // 3 queries: the row kernel; 20 and 33: the gemm-per-head path (rows of one
        // 16-lane piece plus a tail, and of two).
        for (s, t) in [(3, 7), (20, 24), (33, 40)] {
            let (b, h, kvh, cap, d) = (2, 6, 2, 48, 8);
            let q = Tensor::randn(0f32, 1.0, (b, h, s, d), &dev).unwrap();
            // Views of a bigger cache along the sequence, as KvCache returns them.
            let kc = Tensor::randn(0f32, 1.0, (b, kvh, cap, d), &dev).unwrap();
            let vc = Tensor::randn(0f32, 1.0, (b, kvh, cap, d), &dev).unwrap();
            let (k, v) = (kc.narrow(2, 0, t).unwrap(), vc.narrow(2, 0, t).unwrap());
            let mut pad = vec![1u32; 2 * t];
            pad[t..t + 2].fill(0); // second row left-padded
            let pad = Tensor::from_vec(pad, (2, t), &dev).unwrap();
            let mask = causal_mask(Some(&pad), b, s, t - s, None, DType::F32, &dev).unwrap();
            for softcap in [None, Some(2.0)] {
                let fused = fused_attention(&q, &k, &v, Some(&mask), 0.3, softcap).unwrap();
                let ops =
                    attention_by_ops(&q, &k, &v, &mask, 0.3, softcap, &Dropout::default()).unwrap();
                assert_eq!(fused.dims(), &[b, s, h * d]);
                let diff = crate::test_util::max_abs_diff(&fused, &ops);
                assert!(diff < 1e-5, "s={s} {softcap:?}: {diff}");
            }
        }
        let (b, h, s, t, d) = (2, 6, 3, 7, 8);
        let q = Tensor::randn(0f32, 1.0, (b, h, s, d), &dev).unwrap();
        let mask = causal_mask(None, b, s, t - s, None, DType::F32, &dev).unwrap();
        let bad_k = Tensor::randn(0f32, 1.0, (b, 4, t, d), &dev).unwrap();
        assert!(cached_attention(&q, &bad_k, &bad_k, &mask, 0.3, None).is_err());
    }

    #[test]
    fn fused_layer_norm_equals_the_op_by_op_path() {
        let dev = Device::Cpu;
        for (rows, dim) in [(3, 16), (200, 384), (5, 37)] {
            let x = (Tensor::randn(0f32, 3.0, (rows, dim), &dev).unwrap() + 1.5).unwrap();
            let w = Tensor::randn(0f32, 1.0, dim, &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, dim, &dev).unwrap();
            let fused = layer_norm(&x, &w, &b, 1e-12).unwrap();
            let ops = layer_norm_by_ops(&x, &w, &b, 1e-12).unwrap();
            let diff = crate::test_util::max_abs_diff(&fused, &ops);
            assert!(diff < 1e-5, "[{rows}, {dim}]: {diff}");
        }
        let x = Tensor::zeros((2, 8), DType::F32, &dev).unwrap();
        let w = Tensor::ones(4, DType::F32, &dev).unwrap();
        assert!(layer_norm(&x, &w, &w, 1e-5).is_err());
    }

    #[test]
    fn fused_encoder_attention_equals_the_op_by_op_path() {
        let dev = Device::Cpu;
        let (b, h, s, d) = (2, 3, 21, 24);
        let q = Tensor::randn(0f32, 1.0, (b, h, s, d), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (b, h, s, d), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (b, h, s, d), &dev).unwrap();
        let mut pad = vec![1u32; b * s];
        pad[s + 15..].fill(0); // second row right-padded
        let pad = Tensor::from_vec(pad, (b, s), &dev).unwrap();
        let mask = extended_attention_mask(&pad, DType::F32).unwrap();
        for m in [Some(&mask), None] {
            let fused = encoder_attention(&q, &k, &v, m, 0.2).unwrap();
            let ops = attention(&q, &k, &v, m, 0.2)
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .reshape((b, s, h * d))
                .unwrap();
            let diff = crate::test_util::max_abs_diff(&fused, &ops);
            assert!(diff < 1e-5, "{diff}");
        }
    }

    /// In training, the fused encoder attention draws the same dropout masks as the
    /// op-by-op path (same generator, same order) and gives its outputs and gradients.
    #[test]
    fn training_attention_with_dropout_equals_the_op_by_op_path() {
        use candle_core::Var;
        let dev = Device::Cpu;
        let (b, s, h, d) = (2, 19, 3, 8);
        let var = || Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, s, h * d), &dev).unwrap());
        let (q, k, v) = (var().unwrap(), var().unwrap(), var().unwrap());
        let g = Tensor::randn(0f32, 1.0, (b, s, h * d), &dev).unwrap();
        let mut pad = vec![1u32; b * s];
        pad[2 * s - 5..].fill(0);
        let mask =
            extended_attention_mask(&Tensor::from_vec(pad, (b, s), &dev).unwrap(), DType::F32)
                .unwrap();
        let dropout = || {
            let mode = std::sync::Arc::new(TrainMode::default());
            mode.set(true, 7);
            Dropout::new(0.3, Some(mode))
        };
        let scale = 1.0 / (d as f64).sqrt();
        let (qt, kt, vt) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
        let fused = encoder_self_attention(qt, kt, vt, h, Some(&mask), scale, &dropout()).unwrap();
        let split = |x: &Tensor| {
            x.reshape((b, s, h, d))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let ops = encoder_attention_with(
            &split(qt),
            &split(kt),
            &split(vt),
            Some(&mask),
            scale,
            &dropout(),
        )
        .unwrap();
        assert!(crate::test_util::max_abs_diff(&fused, &ops) < 1e-5);
        // Dropout did something: without it the output differs.
        let plain =
            encoder_self_attention(qt, kt, vt, h, Some(&mask), scale, &Dropout::default()).unwrap();
        assert!(crate::test_util::max_abs_diff(&fused, &plain) > 1e-2);
        let gf = (&fused * &g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let go = (&ops * &g).unwrap().sum_all().unwrap().backward().unwrap();
        for (what, x) in [("q", &q), ("k", &k), ("v", &v)] {
            let diff = crate::test_util::max_abs_diff(
                gf.get(x.as_tensor()).unwrap(),
                go.get(x.as_tensor()).unwrap(),
            );
            assert!(diff < 1e-4, "d{what}: {diff}");
        }
    }

    /// Dropout's masks, drawn in parallel blocks, are the generator's draws one by one
    /// (`uniform() < p` drops), and leave the generator where those draws would.
    #[test]
    fn dropout_draws_equal_the_sequential_draws() {
        let mode = std::sync::Arc::new(TrainMode::default());
        let (p, seed, n) = (0.3, 11, 100_003);
        mode.set(true, seed);
        let drop = Dropout::new(p, Some(mode.clone()));
        let got = drop.multipliers(n).unwrap().unwrap();
        let next = drop.multipliers(5).unwrap().unwrap();
        let mut rng = crate::rng::Rng::new(seed);
        let keep = (1.0 / (1.0 - p)) as f32;
        let want: Vec<f32> = (0..n + 5)
            .map(|_| if rng.uniform() < p { 0.0 } else { keep })
            .collect();
        assert_eq!(got, want[..n]);
        assert_eq!(next, want[n..]);
        let dropped = got.iter().filter(|m| **m == 0.0).count() as f64 / n as f64;
        assert!((dropped - p).abs() < 0.01, "{dropped}");
    }

    #[test]
    fn layer_norm_matches_definition() {
        let x = Tensor::new(&[[1.0f32, 2.0, 3.0, 4.0]], &Device::Cpu).unwrap();
        let w = Tensor::ones(4, DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
        let y = layer_norm(&x, &w, &b, 0.0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let sd = (1.25f32).sqrt();
        assert!((y[0][0] + 1.5 / sd).abs() < 1e-5);
        assert!((y[0][3] - 1.5 / sd).abs() < 1e-5);
    }

    #[test]
    fn embedding_rejects_out_of_range_ids() {
        let e = Embedding::new(
            Tensor::ones((3, 2), DType::F32, &Device::Cpu).unwrap(),
            "emb",
        )
        .unwrap();
        let ok = Tensor::new(&[[0u32, 2]], &Device::Cpu).unwrap();
        assert_eq!(e.forward(&ok).unwrap().dims(), &[1, 2, 2]);
        let bad = Tensor::new(&[[0u32, 3]], &Device::Cpu).unwrap();
        let err = e.forward(&bad).unwrap_err().to_string();
        assert!(err.contains("id 3 is out of range for `emb`"), "{err}");
    }

    #[test]
    fn mask_is_additive() {
        let m = Tensor::new(&[[1u32, 0]], &Device::Cpu).unwrap();
        let e = extended_attention_mask(&m, DType::F32).unwrap();
        let v = e.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v[0], 0.0);
        assert_eq!(v[1], f32::MIN);
    }
}
