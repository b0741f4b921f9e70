//! Gemma2, read top to bottom like Python's `modeling_gemma2.py` (transformers 4.46:
//! src/transformers/models/gemma2/modeling_gemma2.py): RMSNorm with `(1 + weight)` →
//! gated MLP → rotary embedding → soft-capped attention → decoder layer with four norms
//! → model with scaled embeddings → LM head with soft-capped logits.
//!
//! Copied from `llama/modeling.rs`; differs in: RMSNorm gains are `(1 + weight)`
//! (computed in f32, cast after the product); the embeddings are multiplied by
//! `sqrt(hidden_size)` rounded to the model dtype; attention scores are scaled by
//! `query_pre_attn_scalar ** -0.5` and soft-capped (`cap * tanh(x / cap)`) before the
//! mask; even layers use the sliding window and odd layers attend globally; each layer
//! norms the attention output (`post_attention_layernorm`) and wraps the MLP in
//! `pre_feedforward_layernorm` / `post_feedforward_layernorm`; the MLP activation is
//! `hidden_activation`; the LM head is tied to the embeddings by default and its logits
//! are soft-capped. Field names are the checkpoint keys.

use candle_core::{DType, Result, Tensor};

use rustformers_core::kv_cache::KvCache;
use rustformers_core::layers::{
    cached_attention_with, Activation, Dropout, Embedding, WindowMasks,
};
use rustformers_core::linear::{QLinear, RmsNorm, Weights};
use rustformers_core::rotary::{apply_rotary, RotaryEmbedding};

use super::config::Gemma2Config;
use crate::traits::{CausalLanguageModel, CausalLmInputs, LogitsMode};

/// Python's `base_model_prefix` for Gemma2.
pub const BASE_MODEL_PREFIX: &str = "model";

fn msg(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// `Gemma2RMSNorm`: `x / rms(x) * (1 + weight)`, in f32.
fn gemma_rms_norm(vb: candle_nn::VarBuilder, dim: usize, eps: f64) -> Result<RmsNorm> {
    let mut norm = RmsNorm::load(vb, dim, eps)?;
    norm.offset = 1.0;
    Ok(norm)
}

/// `cap * tanh(x / cap)`.
fn soft_cap(x: &Tensor, cap: Option<f64>) -> Result<Tensor> {
    match cap {
        Some(c) => (x / c)?.tanh()? * c,
        None => Ok(x.clone()),
    }
}

/// `down(act(gate(x)) * up(x))`.
#[derive(Debug, Clone)]
pub struct Gemma2Mlp {
    gate_proj: QLinear,
    up_proj: QLinear,
    down_proj: QLinear,
    act: Activation,
}

impl Gemma2Mlp {
    pub fn load(w: Weights, c: &Gemma2Config) -> Result<Self> {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        Ok(Self {
            gate_proj: w.pp("gate_proj").linear(h, i, false)?,
            up_proj: w.pp("up_proj").linear(h, i, false)?,
            down_proj: w.pp("down_proj").linear(i, h, false)?,
            act: Activation::from_name(&c.hidden_activation).map_err(msg)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let g = self.act.forward(&self.gate_proj.forward(x)?)?;
        self.down_proj.forward(&(g * self.up_proj.forward(x)?)?)
    }
}

/// Self-attention with grouped-query heads and soft-capped scores.
#[derive(Debug, Clone)]
pub struct Gemma2Attention {
    /// `attention_dropout` on the attention probabilities (training only).
    attn_dropout: Dropout,
    q_proj: QLinear,
    k_proj: QLinear,
    v_proj: QLinear,
    o_proj: QLinear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    scaling: f64,
    attn_logit_softcapping: Option<f64>,
}

impl Gemma2Attention {
    pub fn load(w: Weights, c: &Gemma2Config) -> Result<Self> {
        let (h, hd) = (c.hidden_size, c.head_dim);
        let (nh, nkv) = (c.num_attention_heads, c.num_key_value_heads);
        let bias = c.attention_bias;
        Ok(Self {
            attn_dropout: w.dropout(c.attention_dropout),
            q_proj: w.pp("q_proj").linear(h, nh * hd, bias)?,
            k_proj: w.pp("k_proj").linear(h, nkv * hd, bias)?,
            v_proj: w.pp("v_proj").linear(h, nkv * hd, bias)?,
            o_proj: w.pp("o_proj").linear(nh * hd, h, bias)?,
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: hd,
            scaling: (c.query_pre_attn_scalar as f64).powf(-0.5),
            attn_logit_softcapping: c.attn_logit_softcapping,
        })
    }

    pub fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        cache: Option<&mut KvCache>,
        layer: usize,
    ) -> Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        let split = |t: Tensor, heads: usize| -> Result<Tensor> {
            t.reshape((b, s, heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.q_proj.forward(x)?, self.num_heads)?;
        let k = split(self.k_proj.forward(x)?, self.num_kv_heads)?;
        let v = split(self.v_proj.forward(x)?, self.num_kv_heads)?;
        let q = apply_rotary(&q, cos, sin)?;
        let k = apply_rotary(&k, cos, sin)?;
        let (k, v) = match cache {
            Some(c) => c.append(layer, &k, &v)?,
            None => (k, v),
        };
        let out = cached_attention_with(
            &q,
            &k,
            &v,
            mask,
            self.scaling,
            self.attn_logit_softcapping,
            &self.attn_dropout,
        )?;
        self.o_proj.forward(&out)
    }
}

/// Decoder layer: `x + post_attn_norm(attn(input_norm(x)))`, then
/// `x + post_ff_norm(mlp(pre_ff_norm(x)))`.
#[derive(Debug, Clone)]
pub struct Gemma2DecoderLayer {
    self_attn: Gemma2Attention,
    mlp: Gemma2Mlp,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
    pre_feedforward_layernorm: RmsNorm,
    post_feedforward_layernorm: RmsNorm,
    /// The attention window of this layer (`None`: global).
    sliding_window: Option<usize>,
}

impl Gemma2DecoderLayer {
    pub fn load(w: Weights, c: &Gemma2Config, sliding_window: Option<usize>) -> Result<Self> {
        let norm = |name: &str| gemma_rms_norm(w.vb().pp(name), c.hidden_size, c.rms_norm_eps);
        Ok(Self {
            self_attn: Gemma2Attention::load(w.pp("self_attn"), c)?,
            mlp: Gemma2Mlp::load(w.pp("mlp"), c)?,
            input_layernorm: norm("input_layernorm")?,
            post_attention_layernorm: norm("post_attention_layernorm")?,
            pre_feedforward_layernorm: norm("pre_feedforward_layernorm")?,
            post_feedforward_layernorm: norm("post_feedforward_layernorm")?,
            sliding_window,
        })
    }

    pub fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        cache: Option<&mut KvCache>,
        layer: usize,
    ) -> Result<Tensor> {
        let a = self.self_attn.forward(
            &self.input_layernorm.forward(x)?,
            cos,
            sin,
            mask,
            cache,
            layer,
        )?;
        let x = (x + self.post_attention_layernorm.forward(&a)?)?;
        let m = self
            .mlp
            .forward(&self.pre_feedforward_layernorm.forward(&x)?)?;
        x + self.post_feedforward_layernorm.forward(&m)?
    }
}

/// The decoder stack (`model.*`).
#[derive(Debug, Clone)]
pub struct Gemma2Model {
    /// Layers recomputed in the backward pass (`gradient_checkpointing`).
    checkpointing: Option<std::sync::Arc<rustformers_core::checkpoint::Checkpointing>>,
    embed_tokens: Embedding,
    layers: Vec<Gemma2DecoderLayer>,
    norm: RmsNorm,
    rotary: RotaryEmbedding,
    hidden_size: usize,
    vocab_size: usize,
    max_positions: usize,
    dtype: DType,
}

impl Gemma2Model {
    pub fn load(w: Weights, c: &Gemma2Config) -> Result<Self> {
        let embed_tokens = w
            .pp("embed_tokens")
            .embedding(c.vocab_size, c.hidden_size)?;
        let layers = c
            .layer_sliding_windows()
            .map_err(msg)?
            .into_iter()
            .enumerate()
            .map(|(i, window)| Gemma2DecoderLayer::load(w.pp(format!("layers.{i}")), c, window))
            .collect::<Result<Vec<_>>>()?;
        let rotary =
            RotaryEmbedding::from_parameters(c.head_dim, &c.rope().map_err(msg)?).map_err(msg)?;
        Ok(Self {
            checkpointing: w.checkpointing(),
            embed_tokens,
            layers,
            norm: gemma_rms_norm(w.vb().pp("norm"), c.hidden_size, c.rms_norm_eps)?,
            max_positions: rotary.context(c.max_position_embeddings),
            rotary,
            hidden_size: c.hidden_size,
            vocab_size: c.vocab_size,
            dtype: w.vb().dtype(),
        })
    }

    /// The token embedding table (dequantized when stored quantized).
    pub fn embed_tokens(&self) -> Result<Tensor> {
        self.embed_tokens.embeddings()
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Hidden states `[batch, seq, hidden]` after the final norm.
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
        // The embedding lookup refuses ids outside the vocabulary.
        let past = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        let positions = match inputs.position_ids {
            Some(p) => p.clone(),
            None => Tensor::arange(past as u32, (past + s) as u32, ids.device())?
                .unsqueeze(0)?
                .broadcast_as((b, s))?
                .contiguous()?,
        };
        let (cos, sin) = self.rotary.cos_sin(&positions)?;
        let windows: Vec<Option<usize>> = self.layers.iter().map(|l| l.sliding_window).collect();
        let masks = WindowMasks::new(
            inputs.attention_mask,
            b,
            s,
            past,
            &windows,
            self.dtype,
            ids.device(),
        )?;
        let mut x = self.embed_tokens.forward(ids)?;
        // Python multiplies by `torch.tensor(hidden_size ** 0.5, dtype=hidden.dtype)`:
        // the factor is rounded to the model dtype first.
        let normalizer =
            Tensor::new((self.hidden_size as f64).sqrt(), x.device())?.to_dtype(x.dtype())?;
        x = x.broadcast_mul(&normalizer)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let mask = masks.get(layer.sliding_window)?;
            x = match (&self.checkpointing, cache.is_none()) {
                (Some(c), true) => {
                    let (layer, cos, sin, mask) =
                        (layer.clone(), cos.clone(), sin.clone(), mask.clone());
                    c.run(&x, move |x| layer.forward(x, &cos, &sin, &mask, None, i))?
                }
                _ => layer.forward(&x, &cos, &sin, mask, cache.as_deref_mut(), i)?,
            };
        }
        if let Some(c) = cache {
            c.commit();
        }
        self.norm.forward(&x)
    }
}

/// `Gemma2ForCausalLM`.
#[derive(Debug, Clone)]
pub struct Gemma2ForCausalLM {
    model: Gemma2Model,
    lm_head: QLinear,
    final_logit_softcapping: Option<f64>,
}

impl Gemma2ForCausalLM {
    pub fn load(w: Weights, c: &Gemma2Config) -> Result<Self> {
        let model = Gemma2Model::load(w.pp(BASE_MODEL_PREFIX), c)?;
        let lm_head = if c.tie_word_embeddings() && !w.has_quantized("lm_head.weight") {
            QLinear::Dense {
                weight: model.embed_tokens()?,
                bias: None,
            }
        } else {
            w.pp("lm_head").linear(c.hidden_size, c.vocab_size, false)?
        };
        Ok(Self {
            model,
            lm_head,
            final_logit_softcapping: c.final_logit_softcapping,
        })
    }
}

impl CausalLanguageModel for Gemma2ForCausalLM {
    fn forward(
        &self,
        inputs: CausalLmInputs<'_>,
        cache: Option<&mut KvCache>,
        logits: LogitsMode,
    ) -> Result<Tensor> {
        let h = self.model.forward(inputs, cache)?;
        let h = logits.select(&h)?;
        let logits = self.lm_head.forward(&h)?;
        soft_cap(&logits, self.final_logit_softcapping)?.to_dtype(DType::F32)
    }

    fn new_cache(&self, capacity: Option<usize>) -> KvCache {
        KvCache::new(
            self.model.num_layers(),
            capacity.unwrap_or(self.model.max_positions),
        )
    }

    fn max_context(&self) -> usize {
        self.model.max_positions
    }

    fn vocab_size(&self) -> usize {
        self.model.vocab_size
    }
}

impl crate::heads::DecoderBaseModel for Gemma2Model {
    type Config = Gemma2Config;
    const PREFIX: &'static str = BASE_MODEL_PREFIX;
    fn load(w: Weights, c: &Gemma2Config) -> Result<Self> {
        Gemma2Model::load(w, c)
    }
    fn forward(&self, inputs: CausalLmInputs<'_>, cache: Option<&mut KvCache>) -> Result<Tensor> {
        Gemma2Model::forward(self, inputs, cache)
    }
}

/// `Gemma2ForSequenceClassification`: the generic head (`score` on the rightmost non-pad
/// token) over [`Gemma2Model`].
pub type Gemma2ForSequenceClassification = crate::heads::ForSequenceClassification<Gemma2Model>;
