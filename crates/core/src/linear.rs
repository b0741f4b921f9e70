//! A Linear layer that is dense (any float dtype) or quantized (GGUF block formats: Q4_0,
//! Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K and Q6_K through rustformers' kernels on CPU, the
//! others through candle's quantized matmul). Models hold `QLinear` and do not know which.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Module, Tensor};

use crate::kernels::bf16::{Bf16MatMulOp, PackedBf16};
use crate::kernels::qmatmul::{PackedQ, QFormat, QMatMulOp};
use crate::kernels::sgemm::{F32MatMulOp, PackedF32};
use candle_nn::VarBuilder;

/// `y = x Wᵀ (+ b)` with a dense or quantized `W` `[out, in]`.
#[derive(Debug, Clone)]
pub enum QLinear {
    Dense {
        weight: Tensor,
        bias: Option<Tensor>,
    },
    Quantized {
        weight: QMatMul,
        bias: Option<Tensor>,
        out: usize,
    },
    /// A block format rustformers' CPU kernels run.
    Packed {
        op: QMatMulOp,
        bias: Option<Tensor>,
        out: usize,
    },
    /// An f32 weight on CPU packed for rustformers' AVX-512 kernel (inference). The bias,
    /// if any, is added by the op.
    F32 { op: F32MatMulOp, out: usize },
    /// A bf16 weight on CPU (f32 activations), for models loaded with `dtype = bf16`.
    /// The bias, if any, is added by the op.
    Bf16 { op: Bf16MatMulOp, out: usize },
    /// A trainable dense layer whose products run in bf16 with f32 sums, forward and
    /// backward (mixed-precision training); the weight stays the f32 master copy.
    Bf16Train {
        weight: Tensor,
        bias: Option<Tensor>,
    },
    /// A layer with a LoRA adapter: `base(x) + (dropout(x) Aᵀ) Bᵀ · scale` (PEFT's
    /// `lora_dropout`, in training only).
    Lora {
        base: Box<QLinear>,
        a: Tensor,
        b: Tensor,
        scale: f64,
        dropout: crate::layers::Dropout,
    },
}

impl QLinear {
    /// A dense layer from a `[out, in]` weight and an optional bias.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self::Dense { weight, bias }
    }

    /// A dense layer from `weight` (and `bias`) under `vb`.
    pub fn load(
        vb: VarBuilder,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
    ) -> candle_core::Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Ok(Self::Dense { weight, bias })
    }

    /// A quantized layer: repacked for rustformers' kernels when on CPU in a format
    /// they run, through candle's quantized matmul otherwise.
    pub fn quantized(weight: Arc<QTensor>, bias: Option<Tensor>) -> candle_core::Result<Self> {
        Self::from_qweight(QWeight::new(weight)?, bias)
    }

    /// A quantized layer from a stored weight.
    pub fn from_qweight(weight: QWeight, bias: Option<Tensor>) -> candle_core::Result<Self> {
        Ok(match weight {
            QWeight::Packed(p) => Self::Packed {
                out: p.rows(),
                op: QMatMulOp::new(p),
                bias,
            },
            QWeight::Candle(t) => Self::Quantized {
                out: t.shape().dims().first().copied().unwrap_or(0),
                weight: QMatMul::from_arc(t)?,
                bias,
            },
        })
    }

    /// This layer with its dense weight in bf16 for the CPU kernel (quantized layers
    /// and other devices unchanged).
    pub fn to_bf16(self) -> candle_core::Result<Self> {
        match self {
            Self::Dense { weight, bias } if weight.device().is_cpu() => {
                let (rows, cols) = weight.dims2()?;
                let w = weight
                    .to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let packed =
                    PackedBf16::from_f32(rows, cols, &w).map_err(candle_core::Error::Msg)?;
                let bias = match bias {
                    Some(b) => Some(Arc::from(b.to_dtype(DType::F32)?.to_vec1::<f32>()?)),
                    None => None,
                };
                Ok(Self::Bf16 {
                    op: Bf16MatMulOp {
                        weight: Arc::new(packed),
                        bias,
                        gelu: false,
                    },
                    out: rows,
                })
            }
            other => Ok(other),
        }
    }

    /// This layer packed for the f32 CPU kernel, when it is a dense f32 layer on a CPU
    /// with AVX-512 (unchanged otherwise). For inference: the packed layer has no
    /// gradients.
    pub fn to_packed_f32(self) -> candle_core::Result<Self> {
        match self {
            Self::Dense { weight, bias }
                if crate::kernels::f32_cpu(&weight)
                    && bias.as_ref().is_none_or(crate::kernels::f32_cpu)
                    && crate::kernels::Isa::detect() == crate::kernels::Isa::Avx512Vnni =>
            {
                let (rows, cols) = weight.dims2()?;
                let packed =
                    crate::kernels::read_f32(&weight, |w| PackedF32::from_rows(rows, cols, w))?
                        .map_err(candle_core::Error::Msg)?;
                let bias = match bias {
                    Some(b) => Some(Arc::from(b.flatten_all()?.to_vec1::<f32>()?)),
                    None => None,
                };
                Ok(Self::F32 {
                    op: F32MatMulOp {
                        weight: Arc::new(packed),
                        bias,
                        gelu: false,
                    },
                    out: rows,
                })
            }
            other => Ok(other),
        }
    }

    /// The output size.
    pub fn out_dim(&self) -> usize {
        match self {
            Self::Dense { weight, .. } | Self::Bf16Train { weight, .. } => {
                weight.dims().first().copied().unwrap_or(0)
            }
            Self::Quantized { out, .. }
            | Self::Packed { out, .. }
            | Self::Bf16 { out, .. }
            | Self::F32 { out, .. } => *out,
            Self::Lora { base, .. } => base.out_dim(),
        }
    }

    /// `act(self.forward(x))`: for a bf16 layer on CPU with exact GELU, one op that
    /// applies the activation to each block of outputs as it is written.
    pub fn forward_act(
        &self,
        x: &Tensor,
        act: &crate::layers::Activation,
    ) -> candle_core::Result<Tensor> {
        if *act == crate::layers::Activation::Gelu {
            match self {
                Self::Bf16 { op, .. } => {
                    let op = Bf16MatMulOp {
                        gelu: true,
                        ..op.clone()
                    };
                    return apply_f32_op(x, &op);
                }
                Self::F32 { op, .. } => {
                    let op = F32MatMulOp {
                        gelu: true,
                        ..op.clone()
                    };
                    return apply_f32_op(x, &op);
                }
                _ => {}
            }
        }
        act.forward(&self.forward(x)?)
    }

    /// `self.forward(x) + residual` (`residual` of the output's shape): in inference on
    /// CPU in f32 or bf16 the kernels add it while writing the outputs.
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Dense { weight, bias } => {
                let y = crate::kernels::gemv::matmul_t_residual(
                    x,
                    weight,
                    bias.as_ref(),
                    Some(residual),
                )?;
                if let Some(y) = y {
                    return Ok(y);
                }
            }
            Self::Bf16 { op, out } => {
                if let Some(y) = residual_op(x, residual, *out, op)? {
                    return Ok(y);
                }
            }
            Self::F32 { op, out } => {
                if let Some(y) = residual_op(x, residual, *out, op)? {
                    return Ok(y);
                }
            }
            _ => {}
        }
        self.forward(x)? + residual
    }

    /// Applies the layer to `[..., in]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (y, bias) = match self {
            Self::Dense { weight, bias } => {
                if let Some(y) = crate::kernels::gemv::matmul_t(x, weight, bias.as_ref())? {
                    return Ok(y);
                }
                let f32_cpu = crate::kernels::f32_cpu;
                if let Some(b) = bias
                    .as_ref()
                    .filter(|b| f32_cpu(x) && f32_cpu(weight) && f32_cpu(b))
                {
                    // Training (an operand tracks gradients): one op with its backward.
                    return x.contiguous()?.apply_op3(
                        &weight.contiguous()?,
                        &b.contiguous()?,
                        crate::kernels::train::LinearTrainOp { bf16: false },
                    );
                }
                let w = weight.t()?;
                let y = match x.dims() {
                    [b, s, i] => x.reshape((b * s, *i))?.matmul(&w)?.reshape((*b, *s, ()))?,
                    _ => x.broadcast_matmul(&w)?,
                };
                (y, bias)
            }
            Self::Bf16Train {
                weight,
                bias: Some(b),
            } => {
                return x.to_dtype(DType::F32)?.contiguous()?.apply_op3(
                    &weight.contiguous()?,
                    &b.contiguous()?,
                    crate::kernels::train::LinearTrainOp { bf16: true },
                );
            }
            Self::Bf16Train { weight, bias } => {
                let dims = x.dims().to_vec();
                let Some((&k, lead)) = dims.split_last() else {
                    candle_core::bail!("a linear layer needs an input of rank 1 or more");
                };
                let m: usize = lead.iter().product();
                let y = x
                    .to_dtype(DType::F32)?
                    .reshape((m, k))?
                    .contiguous()?
                    .apply_op2(&weight.contiguous()?, crate::kernels::bf16::Bf16TrainMatMul)?;
                let mut shape = lead.to_vec();
                shape.push(weight.dim(0)?);
                (y.reshape(shape)?, bias)
            }
            Self::Quantized { weight, bias, .. } => (weight.forward(x)?, bias),
            Self::Packed { op, bias, .. } => (apply_f32_op(x, op)?, bias),
            Self::Bf16 { op, .. } => return apply_f32_op(x, op),
            Self::F32 { op, .. } => return apply_f32_op(x, op),
            Self::Lora {
                base,
                a,
                b,
                scale,
                dropout,
            } => {
                let xd = dropout.forward(x)?;
                let delta = crate::lora::matmul_t(&crate::lora::matmul_t(&xd, a)?, b)?;
                return base.forward(x)? + (delta * *scale)?;
            }
        };
        match bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// `layer` with its dense products (a LoRA adapter's base included) in bf16 for training.
fn bf16_training(layer: QLinear) -> QLinear {
    match layer {
        QLinear::Dense { weight, bias } => QLinear::Bf16Train { weight, bias },
        QLinear::Lora {
            base,
            a,
            b,
            scale,
            dropout,
        } => QLinear::Lora {
            base: Box::new(bf16_training(*base)),
            a,
            b,
            scale,
            dropout,
        },
        other => other,
    }
}

/// `op(x, residual)` for a layer of `out` outputs when both are f32 CPU tensors outside
/// autograd and the residual has the output's shape; `None` otherwise.
fn residual_op(
    x: &Tensor,
    residual: &Tensor,
    out: usize,
    op: &impl candle_core::CustomOp2,
) -> candle_core::Result<Option<Tensor>> {
    let mut dims = x.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = out;
    }
    let fits = crate::kernels::runs_kernels(residual) && residual.dims() == dims;
    if !fits || !crate::kernels::runs_kernels(x) {
        return Ok(None);
    }
    x.contiguous()?
        .apply_op2_no_bwd(&residual.contiguous()?, op)
        .map(Some)
}

/// Runs an f32 kernel op on `x` (converted to f32 and back, made contiguous).
fn apply_f32_op(x: &Tensor, op: &impl candle_core::CustomOp1) -> candle_core::Result<Tensor> {
    let dtype = x.dtype();
    x.to_dtype(DType::F32)?
        .contiguous()?
        .apply_op1_no_bwd(op)?
        .to_dtype(dtype)
}

/// `candle_nn::linear`'s counterpart: a dense layer with bias under `vb`, run by
/// rustformers' f32 kernels on CPU.
pub fn linear(in_dim: usize, out_dim: usize, w: Weights) -> candle_core::Result<QLinear> {
    w.linear(in_dim, out_dim, true)
}

/// RMS normalisation (`LlamaRMSNorm`): computed in f32, `weight * x / rms(x)`;
/// `offset` 1.0 gives Gemma's `(1 + weight)`.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
    pub offset: f64,
}

impl RmsNorm {
    pub fn load(vb: VarBuilder, dim: usize, eps: f64) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            eps,
            offset: 0.0,
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if crate::kernels::runs_kernels(x) && crate::kernels::runs_kernels(&self.weight) {
            let op = crate::kernels::fused::RmsNormOp {
                eps: self.eps as f32,
                offset: self.offset as f32,
            };
            return x.contiguous()?.apply_op2_no_bwd(&self.weight, &op);
        }
        self.forward_by_ops(x)
    }

    /// [`RmsNorm::forward`] op by op (half-precision inputs, other devices).
    fn forward_by_ops(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        use candle_core::D;
        let dtype = x.dtype();
        let cd = crate::layers::compute_dtype(dtype);
        let xf = x.to_dtype(cd)?;
        let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = xf.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        let w = self.weight.to_dtype(cd)?;
        let w = if self.offset != 0.0 {
            (w + self.offset)?
        } else {
            w
        };
        normed.broadcast_mul(&w)?.to_dtype(dtype)
    }
}

/// A quantized linear weight: repacked for rustformers' CPU kernels, or a candle tensor
/// (other formats and devices).
#[derive(Debug, Clone)]
pub enum QWeight {
    Packed(Arc<PackedQ>),
    Candle(Arc<QTensor>),
}

impl QWeight {
    /// Repacks `t` when the CPU kernels run its format, keeps it otherwise.
    pub fn new(t: Arc<QTensor>) -> candle_core::Result<Self> {
        if let (true, Some(format), [rows, cols]) = (
            t.device().is_cpu(),
            QFormat::from_ggml(t.dtype()),
            t.shape().dims(),
        ) {
            let packed = PackedQ::from_ggml(format, *rows, *cols, &t.data()?)
                .map_err(candle_core::Error::Msg)?;
            return Ok(Self::Packed(Arc::new(packed)));
        }
        Ok(Self::Candle(t))
    }

    /// `[rows, cols]`.
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Self::Packed(p) => vec![p.rows(), p.cols()],
            Self::Candle(t) => t.shape().dims().to_vec(),
        }
    }
}

/// Quantized tensors by their HF name (from a GGUF file), consulted before the dense
/// weights when a model asks for a linear layer.
#[derive(Debug, Default)]
pub struct QuantizedStore {
    pub tensors: std::collections::HashMap<String, QWeight>,
}

impl QuantizedStore {
    /// Adds a weight (repacked for the CPU kernels where they run it).
    pub fn insert(&mut self, name: String, t: Arc<QTensor>) -> candle_core::Result<()> {
        self.tensors.insert(name, QWeight::new(t)?);
        Ok(())
    }
}

/// A layer's LoRA adapter: the update is `(dropout(x) Aᵀ) Bᵀ · scale` (A `[r, in]`, B
/// `[out, r]`); `merge`: add it to the weight at load instead of running it beside the
/// layer.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
    pub merge: bool,
    pub dropout: crate::layers::Dropout,
}

/// What a model is built from: dense weights through a `VarBuilder`, plus quantized
/// linear weights when the checkpoint is a GGUF file run quantized.
#[derive(Clone)]
pub struct Weights {
    vb: VarBuilder<'static>,
    quantized: Option<Arc<QuantizedStore>>,
    /// Dense linear weights go to bf16 (CPU `dtype = bf16`: activations stay f32).
    bf16_linears: bool,
    /// Dense f32 linear weights are packed for the CPU kernel (inference only), and
    /// handed over to the checkpoint's record in place of their tensors.
    packed_f32: Option<crate::weights::PackedWeights>,
    /// LoRA adapters for the target layers.
    lora: Option<Arc<crate::lora::LoraState>>,
    /// The model's training switch (dropout), when built for training.
    train_mode: Option<Arc<crate::layers::TrainMode>>,
    /// Dense linear products in bf16, forward and backward (mixed-precision training).
    bf16_train: bool,
    /// Gradient checkpointing of the model's layers (training).
    checkpointing: Option<Arc<crate::checkpoint::Checkpointing>>,
}

impl Weights {
    pub fn new(vb: VarBuilder<'static>, quantized: Option<Arc<QuantizedStore>>) -> Self {
        Self {
            vb,
            quantized,
            bf16_linears: false,
            packed_f32: None,
            lora: None,
            train_mode: None,
            bf16_train: false,
            checkpointing: None,
        }
    }

    /// The same weights for a model whose layers are checkpointed (recomputed in the
    /// backward pass instead of keeping their activations).
    pub fn with_checkpointing(mut self, c: Arc<crate::checkpoint::Checkpointing>) -> Self {
        self.checkpointing = Some(c);
        self
    }

    /// The checkpointing state, when the model's layers are checkpointed.
    pub fn checkpointing(&self) -> Option<Arc<crate::checkpoint::Checkpointing>> {
        self.checkpointing.clone()
    }

    /// The same weights with the dense linear layers' products in bf16, forward and
    /// backward (bf16 mixed-precision training; the weights stay f32).
    pub fn with_bf16_training(mut self) -> Self {
        self.bf16_train = true;
        self
    }

    /// True for bf16 mixed-precision training (layers built outside [`Weights::linear`],
    /// such as GPT-2's Conv1D, follow it).
    pub fn bf16_training(&self) -> bool {
        self.bf16_train
    }

    /// The same weights with dropout layers that follow `mode` (training).
    pub fn with_train_mode(mut self, mode: Arc<crate::layers::TrainMode>) -> Self {
        self.train_mode = Some(mode);
        self
    }

    /// The model's training state, when loaded for training.
    pub fn train_mode(&self) -> Option<Arc<crate::layers::TrainMode>> {
        self.train_mode.clone()
    }

    /// A dropout layer of probability `p` (the identity unless training).
    pub fn dropout(&self, p: f64) -> crate::layers::Dropout {
        crate::layers::Dropout::new(p, self.train_mode.clone())
    }

    /// The same weights with LoRA adapters on the layers `lora` targets.
    pub fn with_lora(mut self, lora: Arc<crate::lora::LoraState>) -> Self {
        self.lora = Some(lora);
        self
    }

    /// The same weights with every dense linear layer stored in bf16 and run by the CPU
    /// bf16 kernel: what `dtype = bf16` means on CPU, where candle has no bf16 matmul.
    /// Norms, embeddings and activations stay f32.
    pub fn with_bf16_linears(mut self) -> Self {
        self.bf16_linears = true;
        self
    }

    /// The same weights with every dense f32 linear layer on CPU packed for
    /// rustformers' f32 kernel ([`QLinear::to_packed_f32`]): for inference, as the
    /// packed layers have no gradients. Each packed weight replaces its tensor in
    /// `record` (the checkpoint's), so the file's values are not held twice.
    pub fn with_packed_f32_linears(mut self, record: crate::weights::PackedWeights) -> Self {
        self.packed_f32 = Some(record);
        self
    }

    /// Descends into a sub-module.
    pub fn pp(&self, name: impl ToString) -> Self {
        Self {
            vb: self.vb.pp(name),
            quantized: self.quantized.clone(),
            bf16_linears: self.bf16_linears,
            packed_f32: self.packed_f32.clone(),
            lora: self.lora.clone(),
            train_mode: self.train_mode.clone(),
            bf16_train: self.bf16_train,
            checkpointing: self.checkpointing.clone(),
        }
    }

    /// The dense builder at this prefix.
    pub fn vb(&self) -> &VarBuilder<'static> {
        &self.vb
    }

    /// True when the quantized store holds `name` (relative to this prefix).
    pub fn has_quantized(&self, name: &str) -> bool {
        let prefix = self.vb.prefix();
        let key = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}.{name}")
        };
        self.quantized
            .as_ref()
            .is_some_and(|s| s.tensors.contains_key(&key))
    }

    /// An embedding table of `rows` × `dim` at this prefix (key `weight`): looked up
    /// from the quantized store when it holds the table repacked (GGUF run quantized on
    /// CPU), from the dense weights otherwise.
    pub fn embedding(
        &self,
        rows: usize,
        dim: usize,
    ) -> candle_core::Result<crate::layers::Embedding> {
        let key = format!("{}.weight", self.vb.prefix());
        if let Some(QWeight::Packed(p)) = self.quantized.as_ref().and_then(|s| s.tensors.get(&key))
        {
            if [p.rows(), p.cols()] != [rows, dim] {
                candle_core::bail!(
                    "weight `{key}` has shape [{}, {}] but the config implies [{rows}, {dim}]",
                    p.rows(),
                    p.cols()
                );
            }
            return Ok(crate::layers::Embedding::quantized(
                p.clone(),
                &self.vb.prefix(),
            ));
        }
        crate::layers::embedding(rows, dim, self.vb.clone())
    }

    /// A linear layer at this prefix: quantized when the store holds its weight.
    pub fn linear(
        &self,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
    ) -> candle_core::Result<QLinear> {
        let key = format!("{}.weight", self.vb.prefix());
        if let Some(q) = self.quantized.as_ref().and_then(|s| s.tensors.get(&key)) {
            let dims = q.dims();
            if dims != [out_dim, in_dim] {
                candle_core::bail!("weight `{key}` has shape {dims:?} but the config implies [{out_dim}, {in_dim}]");
            }
            let b = if bias {
                Some(self.vb.get(out_dim, "bias")?)
            } else {
                None
            };
            return QLinear::from_qweight(q.clone(), b);
        }
        let layer = QLinear::load(self.vb.clone(), in_dim, out_dim, bias)?;
        let layer = match &self.lora {
            Some(lora) => self.with_adapter(lora, layer, in_dim, out_dim)?,
            None => layer,
        };
        if self.bf16_train {
            return Ok(bf16_training(layer));
        }
        if self.bf16_linears {
            layer.to_bf16()
        } else if let Some(record) = &self.packed_f32 {
            let layer = layer.to_packed_f32()?;
            if let QLinear::F32 { op, .. } = &layer {
                record.replace(&key, op.weight.clone())?;
            }
            Ok(layer)
        } else {
            Ok(layer)
        }
    }

    /// The LoRA adapter of the layer at this prefix, for a layer of `in_dim` inputs and
    /// `out_dim` outputs, or `None` when there are no adapters or the layer is not a
    /// target. For layers that are not [`Weights::linear`]s (GPT-2's Conv1D).
    pub fn lora_adapter(
        &self,
        in_dim: usize,
        out_dim: usize,
    ) -> candle_core::Result<Option<LoraAdapter>> {
        let Some(lora) = &self.lora else {
            return Ok(None);
        };
        let (dtype, device) = (self.vb.dtype(), self.vb.device().clone());
        let found = lora.adapter_for(&self.vb.prefix(), out_dim, in_dim, dtype, &device)?;
        Ok(found.map(|(a, b)| LoraAdapter {
            a,
            b,
            scale: lora.config.scaling(),
            merge: lora.merges(),
            dropout: self.dropout(lora.config.lora_dropout),
        }))
    }

    /// `layer` with its LoRA adapter (merged into the weight when loading merged), or
    /// unchanged when it is not a target.
    fn with_adapter(
        &self,
        lora: &crate::lora::LoraState,
        layer: QLinear,
        in_dim: usize,
        out_dim: usize,
    ) -> candle_core::Result<QLinear> {
        let QLinear::Dense { weight, bias } = layer else {
            return Ok(layer);
        };
        let path = self.vb.prefix();
        let Some((a, b)) =
            lora.adapter_for(&path, out_dim, in_dim, weight.dtype(), weight.device())?
        else {
            return Ok(QLinear::Dense { weight, bias });
        };
        let scale = lora.config.scaling();
        if lora.merges() {
            let merged = (&weight + (b.matmul(&a)? * scale)?)?;
            return Ok(QLinear::Dense {
                weight: merged,
                bias,
            });
        }
        Ok(QLinear::Lora {
            base: Box::new(QLinear::Dense { weight, bias }),
            a,
            b,
            scale,
            dropout: self.dropout(lora.config.lora_dropout),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;
    use candle_core::{DType, Device};

    /// A dense f32 layer packed for the f32 kernel gives the dense layer's outputs, for
    /// a row (decoding), a few and many rows; it is packed exactly where AVX-512 runs.
    #[test]
    fn packed_f32_layer_equals_the_dense_layer() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.2, (70, 52), &dev).unwrap();
        let b = Tensor::randn(0f32, 0.5, 70, &dev).unwrap();
        for bias in [Some(b), None] {
            let dense = QLinear::new(w.clone(), bias);
            let packed = dense.clone().to_packed_f32().unwrap();
            let avx512 = crate::kernels::Isa::detect() == crate::kernels::Isa::Avx512Vnni;
            assert_eq!(matches!(packed, QLinear::F32 { .. }), avx512);
            assert_eq!(packed.out_dim(), 70);
            for rows in [1, 5, 37] {
                let x = Tensor::randn(0f32, 1.0, (1, rows, 52), &dev).unwrap();
                let want = dense.forward(&x).unwrap();
                let got = packed.forward(&x).unwrap();
                assert_eq!(got.dims(), want.dims());
                assert!(crate::test_util::max_abs_diff(&got, &want) < 1e-5);
            }
        }
    }

    /// `forward_residual` equals `forward` plus the residual and `forward_act` the
    /// activation of `forward`, for f32 (the row kernel and the gemm blocks) and bf16
    /// layers; a residual of another shape is an error.
    #[test]
    fn fused_residual_and_activation_equal_the_separate_ops() {
        use crate::layers::Activation;
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.2, (48, 40), &dev).unwrap();
        let b = Tensor::randn(0f32, 0.5, 48, &dev).unwrap();
        for layer in [
            QLinear::new(w.clone(), Some(b.clone())),
            QLinear::new(w.clone(), None),
            QLinear::new(w.clone(), Some(b.clone())).to_bf16().unwrap(),
            QLinear::new(w.clone(), Some(b.clone()))
                .to_packed_f32()
                .unwrap(),
            QLinear::new(w.clone(), None).to_packed_f32().unwrap(),
        ] {
            for rows in [3, 70] {
                let x = Tensor::randn(0f32, 1.0, (2, rows, 40), &dev).unwrap();
                let res = Tensor::randn(0f32, 1.0, (2, rows, 48), &dev).unwrap();
                let plain = layer.forward(&x).unwrap();
                let fused = layer.forward_residual(&x, &res).unwrap();
                let want = (&plain + &res).unwrap();
                assert!(crate::test_util::max_abs_diff(&fused, &want) < 1e-5);
                for act in [Activation::Gelu, Activation::Relu] {
                    let fused = layer.forward_act(&x, &act).unwrap();
                    let want = act.forward(&plain).unwrap();
                    assert!(crate::test_util::max_abs_diff(&fused, &want) < 1e-5);
                }
                let bad = Tensor::zeros((2, rows, 47), DType::F32, &dev).unwrap();
                assert!(layer.forward_residual(&x, &bad).is_err());
            }
        }
    }

    /// A quantized embedding table looks rows up as the dense lookup of its dequantized
    /// table does, refuses out-of-range ids, and comes from the store by name.
    #[test]
    fn quantized_embedding_equals_the_dequantized_table() {
        let dev = Device::Cpu;
        let table = Tensor::randn(0f32, 1.0, (10, 64), &dev).unwrap();
        let q = Arc::new(QTensor::quantize(&table, GgmlDType::Q8_0).unwrap());
        let mut store = QuantizedStore::default();
        store.insert("embed.weight".into(), q.clone()).unwrap();
        let vb = VarBuilder::zeros(DType::F32, &dev);
        let w = Weights::new(vb, Some(Arc::new(store)));
        let quant = w.pp("embed").embedding(10, 64).unwrap();
        assert!(w.pp("embed").embedding(11, 64).is_err());
        let dense = crate::layers::Embedding::new(q.dequantize(&dev).unwrap(), "embed").unwrap();
        let ids = Tensor::new(&[[3u32, 0, 9], [9, 9, 1]], &dev).unwrap();
        let (a, b) = (quant.forward(&ids).unwrap(), dense.forward(&ids).unwrap());
        assert_eq!(a.dims(), &[2, 3, 64]);
        let diff = crate::test_util::max_abs_diff(&a, &b);
        assert_eq!(diff, 0.0);
        let full = crate::test_util::max_abs_diff(
            &quant.embeddings().unwrap(),
            &dense.embeddings().unwrap(),
        );
        assert_eq!(full, 0.0);
        let bad = Tensor::new(&[[10u32]], &dev).unwrap();
        assert!(quant.forward(&bad).is_err());
    }

    /// The fused RMS norm equals the op-by-op path, with and without Gemma's offset.
    #[test]
    fn fused_rms_norm_equals_the_op_by_op_path() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 2.0, (2, 3, 16), &dev).unwrap();
        let weight = Tensor::randn(0f32, 1.0, 16, &dev).unwrap();
        for offset in [0.0, 1.0] {
            let n = RmsNorm {
                weight: weight.clone(),
                eps: 1e-6,
                offset,
            };
            let diff = crate::test_util::max_abs_diff(
                &n.forward(&x).unwrap(),
                &n.forward_by_ops(&x).unwrap(),
            );
            assert!(diff < 1e-5, "offset {offset}: {diff}");
        }
        let bad = RmsNorm {
            weight: Tensor::ones(8, DType::F32, &dev).unwrap(),
            eps: 1e-6,
            offset: 0.0,
        };
        assert!(bad.forward(&x).is_err());
    }

    /// Every block format runs through the quantized layer and stays close to the dense
    /// layer on the dequantized weight (the kernels quantize activations to 8 bits).
    #[test]
    fn quantized_formats_match_their_dequantized_weights() {
        let dev = Device::Cpu;
        let (out, inp) = (64, 512);
        let w = (Tensor::arange(0f32, (out * inp) as f32, &dev)
            .unwrap()
            .reshape((out, inp))
            .unwrap()
            * 0.37)
            .unwrap()
            .sin()
            .unwrap();
        let x = (Tensor::arange(0f32, (3 * inp) as f32, &dev)
            .unwrap()
            .reshape((1, 3, inp))
            .unwrap()
            * 0.11)
            .unwrap()
            .cos()
            .unwrap();
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
            GgmlDType::Q2K,
            GgmlDType::Q3K,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
        ] {
            let q = Arc::new(QTensor::quantize(&w, dtype).unwrap());
            let dense = QLinear::Dense {
                weight: q.dequantize(&dev).unwrap(),
                bias: None,
            };
            let quant = QLinear::quantized(q, None).unwrap();
            assert_eq!(quant.out_dim(), out);
            let a = quant.forward(&x).unwrap();
            let b = dense.forward(&x).unwrap();
            assert_eq!(a.dims(), &[1, 3, out]);
            let range = crate::test_util::max_abs(&b);
            let diff = crate::test_util::max_abs_diff(&a, &b);
            // 8-bit activations: a few percent of the output range at most.
            assert!(diff / range < 0.03, "{dtype:?}: {diff} of {range}");
            assert_eq!(x.dtype(), DType::F32);
        }
    }
}
