//! GPT-2, read top to bottom like Python's `modeling_gpt2.py` (transformers 4.46:
//! src/transformers/models/gpt2/modeling_gpt2.py): `Conv1D` → attention with a fused
//! `c_attn` and a KV cache → MLP → block → model with learned token and position
//! embeddings → LM head tied to `wte`.
//!
//! Unlike the rotary decoders there is no rotary embedding: positions index the learned
//! `wpe` table, from `position_ids` when given (Python's `generate` passes
//! `cumsum(attention_mask) - 1` with 1 at padding, so a left-padded row starts at 0),
//! else `past .. past + seq`. Norms are LayerNorms with biases, placed before attention
//! and MLP (`ln_1`, `ln_2`) and after the stack (`ln_f`). Field names are the checkpoint
//! keys.

use candle_core::{DType, Result, Tensor, D};

use rustformers_core::kv_cache::KvCache;
use rustformers_core::layers::{
    causal_mask, embedding, softmax_last, Activation, Dropout, Embedding, LayerNorm,
};
use rustformers_core::linear::{QLinear, Weights};

use super::config::Gpt2Config;
use crate::traits::{CausalLanguageModel, CausalLmInputs, LogitsMode};

/// Python's `base_model_prefix` for GPT-2.
pub const BASE_MODEL_PREFIX: &str = "transformer";

fn msg(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// Python's `Conv1D`: a linear layer whose weight is stored `[in, out]`, so
/// `y = x W + b` without a transpose (the checkpoint layout is kept, for save_pretrained).
/// A LoRA target (PEFT's `fan_in_fan_out`) adds `(dropout(x) Aᵀ) Bᵀ · scale`, or has it merged
/// into `W` as `(B A)ᵀ · scale`.
#[derive(Debug, Clone)]
pub struct Conv1D {
    weight: Tensor,
    bias: Tensor,
    lora: Option<(Tensor, Tensor, f64, Dropout)>,
    /// bf16 mixed-precision training: the product runs in bf16, forward and backward.
    bf16_train: bool,
}

impl Conv1D {
    pub fn load(w: Weights, in_dim: usize, out_dim: usize) -> Result<Self> {
        let vb = w.vb();
        let mut weight = vb.get((in_dim, out_dim), "weight")?;
        let mut lora = None;
        if let Some(ad) = w.lora_adapter(in_dim, out_dim)? {
            if ad.merge {
                let delta = (ad.b.matmul(&ad.a)?.t()? * ad.scale)?;
                weight = (weight + delta)?;
            } else {
                lora = Some((ad.a, ad.b, ad.scale, ad.dropout));
            }
        }
        Ok(Self {
            weight,
            bias: vb.get(out_dim, "bias")?,
            lora,
            bf16_train: w.bf16_training(),
        })
    }

    /// Applies the layer to `[batch, seq, in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, s, i) = x.dims3()?;
        let x2 = x.reshape((b * s, i))?;
        let mut y = if self.bf16_train {
            // The op takes `[out, in]`; the transpose is a tracked copy.
            x2.contiguous()?.apply_op2(
                &self.weight.t()?.contiguous()?,
                rustformers_core::kernels::bf16::Bf16TrainMatMul,
            )?
        } else {
            x2.matmul(&self.weight)?
        };
        if let Some((a, bm, scale, dropout)) = &self.lora {
            let xd = dropout.forward(&x2)?;
            y = (y + (xd.matmul(&a.t()?)?.matmul(&bm.t()?)? * *scale)?)?;
        }
        y.reshape((b, s, ()))?.broadcast_add(&self.bias)
    }
}

/// The dropout layers of a block: on the attention weights (`attn_pdrop`) and on the
/// attention and MLP outputs (`resid_pdrop`); identities unless training.
#[derive(Debug, Clone)]
pub struct Gpt2Dropouts {
    pub attn: Dropout,
    pub resid: Dropout,
}

/// Causal self-attention with a fused `c_attn` (`[q | k | v]` columns).
#[derive(Debug, Clone)]
pub struct Gpt2Attention {
    c_attn: Conv1D,
    c_proj: Conv1D,
    num_heads: usize,
    head_dim: usize,
    /// What the scores are multiplied by: `1/sqrt(head_dim)` with `scale_attn_weights`,
    /// divided by `layer + 1` with `scale_attn_by_inverse_layer_idx`.
    scale: f64,
    upcast: bool,
    attn_dropout: Dropout,
    resid_dropout: Dropout,
}

impl Gpt2Attention {
    pub fn load(w: Weights, c: &Gpt2Config, layer: usize, drop: &Gpt2Dropouts) -> Result<Self> {
        let e = c.n_embd;
        let mut scale = 1.0;
        if c.scale_attn_weights {
            scale /= (c.head_dim() as f64).sqrt();
        }
        if c.scale_attn_by_inverse_layer_idx {
            scale /= (layer + 1) as f64;
        }
        Ok(Self {
            c_attn: Conv1D::load(w.pp("c_attn"), e, 3 * e)?,
            c_proj: Conv1D::load(w.pp("c_proj"), e, e)?,
            num_heads: c.n_head,
            head_dim: c.head_dim(),
            scale,
            upcast: c.reorder_and_upcast_attn,
            attn_dropout: drop.attn.clone(),
            resid_dropout: drop.resid.clone(),
        })
    }

    pub fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        cache: Option<&mut KvCache>,
        layer: usize,
    ) -> Result<Tensor> {
        let (b, s, e) = x.dims3()?;
        let qkv = self.c_attn.forward(x)?;
        let split = |i: usize| -> Result<Tensor> {
            qkv.narrow(D::Minus1, i * e, e)?
                .reshape((b, s, self.num_heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (split(0)?, split(1)?, split(2)?);
        let (k, v) = match cache {
            Some(c) => c.append(layer, &k, &v)?,
            None => (k, v),
        };
        // The cache hands back views of its buffers; matmul wants plain layouts.
        let (k, v) = (k.contiguous()?, v.contiguous()?);
        let dtype = q.dtype();
        let (q, k) = if self.upcast {
            (q.to_dtype(DType::F32)?, k.to_dtype(DType::F32)?)
        } else {
            (q, k)
        };
        let scores = (q.matmul(&k.t()?)? * self.scale)?;
        let scores = scores
            .to_dtype(DType::F32)?
            .broadcast_add(&mask.to_dtype(DType::F32)?)?;
        let probs = self
            .attn_dropout
            .forward(&softmax_last(&scores)?.to_dtype(dtype)?)?;
        let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, s, e))?;
        self.resid_dropout.forward(&self.c_proj.forward(&out)?)
    }
}

/// `c_proj(act(c_fc(x)))`.
#[derive(Debug, Clone)]
pub struct Gpt2Mlp {
    c_fc: Conv1D,
    c_proj: Conv1D,
    act: Activation,
    dropout: Dropout,
}

impl Gpt2Mlp {
    pub fn load(w: Weights, c: &Gpt2Config, drop: &Gpt2Dropouts) -> Result<Self> {
        let (e, i) = (c.n_embd, c.inner_dim());
        Ok(Self {
            c_fc: Conv1D::load(w.pp("c_fc"), e, i)?,
            c_proj: Conv1D::load(w.pp("c_proj"), i, e)?,
            act: Activation::from_name(&c.activation_function).map_err(msg)?,
            dropout: drop.resid.clone(),
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self
            .c_proj
            .forward(&self.act.forward(&self.c_fc.forward(x)?)?)?;
        self.dropout.forward(&h)
    }
}

/// `GPT2Block`: `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.
#[derive(Debug, Clone)]
pub struct Gpt2Block {
    ln_1: LayerNorm,
    attn: Gpt2Attention,
    ln_2: LayerNorm,
    mlp: Gpt2Mlp,
}

impl Gpt2Block {
    pub fn load(w: Weights, c: &Gpt2Config, layer: usize, drop: &Gpt2Dropouts) -> Result<Self> {
        let eps = c.layer_norm_epsilon;
        let vb = w.vb();
        Ok(Self {
            ln_1: LayerNorm::load(vb.pp("ln_1"), c.n_embd, eps)?,
            attn: Gpt2Attention::load(w.pp("attn"), c, layer, drop)?,
            ln_2: LayerNorm::load(vb.pp("ln_2"), c.n_embd, eps)?,
            mlp: Gpt2Mlp::load(w.pp("mlp"), c, drop)?,
        })
    }

    pub fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        cache: Option<&mut KvCache>,
        layer: usize,
    ) -> Result<Tensor> {
        let a = self
            .attn
            .forward(&self.ln_1.forward(x)?, mask, cache, layer)?;
        let x = (x + a)?;
        let m = self.mlp.forward(&self.ln_2.forward(&x)?)?;
        x + m
    }
}

/// `GPT2Model` (`transformer.*`).
#[derive(Debug, Clone)]
pub struct Gpt2Model {
    /// Layers recomputed in the backward pass (`gradient_checkpointing`).
    checkpointing: Option<std::sync::Arc<rustformers_core::checkpoint::Checkpointing>>,
    wte: Embedding,
    wpe: Embedding,
    h: Vec<Gpt2Block>,
    ln_f: LayerNorm,
    drop: Dropout,
    vocab_size: usize,
    n_positions: usize,
    dtype: DType,
}

impl Gpt2Model {
    pub fn load(w: Weights, c: &Gpt2Config) -> Result<Self> {
        let vb = w.vb();
        let drop = Gpt2Dropouts {
            attn: w.dropout(c.attn_pdrop),
            resid: w.dropout(c.resid_pdrop),
        };
        let h = (0..c.n_layer)
            .map(|i| Gpt2Block::load(w.pp(format!("h.{i}")), c, i, &drop))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            checkpointing: w.checkpointing(),
            wte: embedding(c.vocab_size, c.n_embd, vb.pp("wte"))?,
            wpe: embedding(c.n_positions, c.n_embd, vb.pp("wpe"))?,
            h,
            ln_f: LayerNorm::load(vb.pp("ln_f"), c.n_embd, c.layer_norm_epsilon)?,
            drop: w.dropout(c.embd_pdrop),
            vocab_size: c.vocab_size,
            n_positions: c.n_positions,
            dtype: vb.dtype(),
        })
    }

    pub fn wte(&self) -> Result<Tensor> {
        self.wte.embeddings()
    }

    pub fn num_layers(&self) -> usize {
        self.h.len()
    }

    /// Hidden states `[batch, seq, n_embd]` after `ln_f`.
    pub fn forward(
        &self,
        inputs: CausalLmInputs<'_>,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let ids = inputs.input_ids;
        let (b, s) = ids.dims2()?;
        if s == 0 {
            candle_core::bail!("empty input: at least one token is needed");
        }
        let past = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        let positions = match inputs.position_ids {
            Some(p) => p.clone(),
            None => Tensor::arange(past as u32, (past + s) as u32, ids.device())?
                .unsqueeze(0)?
                .broadcast_as((b, s))?
                .contiguous()?,
        };
        let mask = causal_mask(
            inputs.attention_mask,
            b,
            s,
            past,
            None,
            self.dtype,
            ids.device(),
        )?;
        // Both lookups fail with a clear error on an id or position past their table.
        let mut x = self
            .drop
            .forward(&(self.wte.forward(ids)? + self.wpe.forward(&positions)?)?)?;
        for (i, block) in self.h.iter().enumerate() {
            x = match (&self.checkpointing, cache.is_none()) {
                (Some(c), true) => {
                    let (block, mask) = (block.clone(), mask.clone());
                    c.run(&x, move |x| block.forward(x, &mask, None, i))?
                }
                _ => block.forward(&x, &mask, cache.as_deref_mut(), i)?,
            };
        }
        if let Some(c) = cache {
            c.commit();
        }
        self.ln_f.forward(&x)
    }
}

/// `GPT2LMHeadModel`.
#[derive(Debug, Clone)]
pub struct Gpt2LMHeadModel {
    transformer: Gpt2Model,
    lm_head: QLinear,
}

impl Gpt2LMHeadModel {
    pub fn load(w: Weights, c: &Gpt2Config) -> Result<Self> {
        let transformer = Gpt2Model::load(w.pp(BASE_MODEL_PREFIX), c)?;
        let lm_head = if c.tie_word_embeddings() {
            QLinear::Dense {
                weight: transformer.wte()?,
                bias: None,
            }
        } else {
            w.pp("lm_head").linear(c.n_embd, c.vocab_size, false)?
        };
        Ok(Self {
            transformer,
            lm_head,
        })
    }
}

impl CausalLanguageModel for Gpt2LMHeadModel {
    fn forward(
        &self,
        inputs: CausalLmInputs<'_>,
        cache: Option<&mut KvCache>,
        logits: LogitsMode,
    ) -> Result<Tensor> {
        let h = self.transformer.forward(inputs, cache)?;
        let h = logits.select(&h)?;
        self.lm_head.forward(&h)?.to_dtype(DType::F32)
    }

    fn new_cache(&self, capacity: Option<usize>) -> KvCache {
        KvCache::new(
            self.transformer.num_layers(),
            capacity.unwrap_or(self.transformer.n_positions),
        )
    }

    fn max_context(&self) -> usize {
        self.transformer.n_positions
    }

    fn vocab_size(&self) -> usize {
        self.transformer.vocab_size
    }
}

impl crate::heads::DecoderBaseModel for Gpt2Model {
    type Config = Gpt2Config;
    const PREFIX: &'static str = BASE_MODEL_PREFIX;
    fn load(w: Weights, c: &Gpt2Config) -> Result<Self> {
        Gpt2Model::load(w, c)
    }
    fn forward(&self, inputs: CausalLmInputs<'_>, cache: Option<&mut KvCache>) -> Result<Tensor> {
        Gpt2Model::forward(self, inputs, cache)
    }
}

/// `GPT2ForSequenceClassification`: the generic head (`score` on the rightmost non-pad
/// token) over [`Gpt2Model`].
pub type Gpt2ForSequenceClassification = crate::heads::ForSequenceClassification<Gpt2Model>;
