//! Llama, read top to bottom like Python's `modeling_llama.py` (transformers 4.46:
//! src/transformers/models/llama/modeling_llama.py): rotary embedding → attention with
//! grouped-query heads and a KV cache → gated MLP → decoder layer → model → LM head and
//! sequence-classification head. Field names are the checkpoint keys.

use candle_core::{DType, Result, Tensor};

use rustformers_core::kv_cache::KvCache;
use rustformers_core::layers::{
    cached_attention_with, causal_mask, Activation, Dropout, Embedding,
};
use rustformers_core::linear::{QLinear, RmsNorm, Weights};
use rustformers_core::rotary::{apply_rotary, apply_rotary_interleaved, RotaryEmbedding};

use super::config::LlamaConfig;
use crate::traits::{CausalLanguageModel, CausalLmInputs, LogitsMode};

/// Python's `base_model_prefix` for Llama.
pub const BASE_MODEL_PREFIX: &str = "model";

fn msg(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// Self-attention with grouped-query heads.
#[derive(Debug, Clone)]
pub struct LlamaAttention {
    /// `attention_dropout` on the attention probabilities (training only).
    attn_dropout: Dropout,
    q_proj: QLinear,
    k_proj: QLinear,
    v_proj: QLinear,
    o_proj: QLinear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    rope_interleaved: bool,
}

impl LlamaAttention {
    pub fn load(w: Weights, c: &LlamaConfig) -> Result<Self> {
        let (h, hd) = (c.hidden_size, c.head_dim());
        let (nh, nkv) = (c.num_attention_heads, c.num_key_value_heads());
        Ok(Self {
            attn_dropout: w.dropout(c.attention_dropout),
            q_proj: w.pp("q_proj").linear(h, nh * hd, c.attention_bias)?,
            k_proj: w.pp("k_proj").linear(h, nkv * hd, c.attention_bias)?,
            v_proj: w.pp("v_proj").linear(h, nkv * hd, c.attention_bias)?,
            o_proj: w.pp("o_proj").linear(nh * hd, h, c.attention_bias)?,
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: hd,
            rope_interleaved: c.rope_interleaved,
        })
    }

    #[allow(clippy::too_many_arguments)]
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
        let rope = if self.rope_interleaved {
            apply_rotary_interleaved
        } else {
            apply_rotary
        };
        let q = rope(&q, cos, sin)?;
        let k = rope(&k, cos, sin)?;
        let (k, v) = match cache {
            Some(c) => c.append(layer, &k, &v)?,
            None => (k, v),
        };
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let out = cached_attention_with(&q, &k, &v, mask, scale, None, &self.attn_dropout)?;
        self.o_proj.forward(&out)
    }
}

/// `down(act(gate(x)) * up(x))`.
#[derive(Debug, Clone)]
pub struct LlamaMlp {
    gate_proj: QLinear,
    up_proj: QLinear,
    down_proj: QLinear,
    act: Activation,
}

impl LlamaMlp {
    pub fn load(w: Weights, c: &LlamaConfig) -> Result<Self> {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        Ok(Self {
            gate_proj: w.pp("gate_proj").linear(h, i, c.mlp_bias)?,
            up_proj: w.pp("up_proj").linear(h, i, c.mlp_bias)?,
            down_proj: w.pp("down_proj").linear(i, h, c.mlp_bias)?,
            act: Activation::from_name(&c.hidden_act).map_err(msg)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self
            .act
            .forward_mul(&self.gate_proj.forward(x)?, &self.up_proj.forward(x)?)?;
        self.down_proj.forward(&h)
    }
}

/// Pre-norm decoder layer.
#[derive(Debug, Clone)]
pub struct LlamaDecoderLayer {
    self_attn: LlamaAttention,
    mlp: LlamaMlp,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

impl LlamaDecoderLayer {
    pub fn load(w: Weights, c: &LlamaConfig) -> Result<Self> {
        Ok(Self {
            self_attn: LlamaAttention::load(w.pp("self_attn"), c)?,
            mlp: LlamaMlp::load(w.pp("mlp"), c)?,
            input_layernorm: RmsNorm::load(
                w.vb().pp("input_layernorm"),
                c.hidden_size,
                c.rms_norm_eps,
            )?,
            post_attention_layernorm: RmsNorm::load(
                w.vb().pp("post_attention_layernorm"),
                c.hidden_size,
                c.rms_norm_eps,
            )?,
        })
    }

    #[allow(clippy::too_many_arguments)]
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
        let x = (x + a)?;
        let m = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&x)?)?;
        x + m
    }
}

/// The decoder stack (`model.*`).
#[derive(Debug, Clone)]
pub struct LlamaModel {
    /// Layers recomputed in the backward pass (`gradient_checkpointing`).
    checkpointing: Option<std::sync::Arc<rustformers_core::checkpoint::Checkpointing>>,
    embed_tokens: Embedding,
    layers: Vec<LlamaDecoderLayer>,
    norm: RmsNorm,
    rotary: RotaryEmbedding,
    vocab_size: usize,
    max_positions: usize,
    dtype: DType,
}

impl LlamaModel {
    pub fn load(w: Weights, c: &LlamaConfig) -> Result<Self> {
        let embed_tokens = w
            .pp("embed_tokens")
            .embedding(c.vocab_size, c.hidden_size)?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| LlamaDecoderLayer::load(w.pp(format!("layers.{i}")), c))
            .collect::<Result<Vec<_>>>()?;
        let rotary =
            RotaryEmbedding::from_parameters(c.head_dim(), &c.rope().map_err(msg)?).map_err(msg)?;
        Ok(Self {
            checkpointing: w.checkpointing(),
            embed_tokens,
            layers,
            norm: RmsNorm::load(w.vb().pp("norm"), c.hidden_size, c.rms_norm_eps)?,
            vocab_size: c.vocab_size,
            max_positions: rotary.context(c.max_position_embeddings),
            rotary,
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
        // Rotary positions have no hard limit (Python runs past max_position_embeddings);
        // generate() refuses prompts longer than the context and the cache bounds the rest.
        let past = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        let positions = match inputs.position_ids {
            Some(p) => p.clone(),
            None => Tensor::arange(past as u32, (past + s) as u32, ids.device())?
                .unsqueeze(0)?
                .broadcast_as((b, s))?
                .contiguous()?,
        };
        let (cos, sin) = self.rotary.cos_sin(&positions)?;
        let mask = causal_mask(
            inputs.attention_mask,
            b,
            s,
            past,
            None,
            self.dtype,
            ids.device(),
        )?;
        let mut x = self.embed_tokens.forward(ids)?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = match (&self.checkpointing, cache.is_none()) {
                (Some(c), true) => {
                    let (layer, cos, sin, mask) =
                        (layer.clone(), cos.clone(), sin.clone(), mask.clone());
                    c.run(&x, move |x| layer.forward(x, &cos, &sin, &mask, None, i))?
                }
                _ => layer.forward(&x, &cos, &sin, &mask, cache.as_deref_mut(), i)?,
            };
        }
        if let Some(c) = cache {
            c.commit();
        }
        self.norm.forward(&x)
    }
}

/// `LlamaForCausalLM`.
#[derive(Debug, Clone)]
pub struct LlamaForCausalLM {
    model: LlamaModel,
    lm_head: QLinear,
}

impl LlamaForCausalLM {
    pub fn load(w: Weights, c: &LlamaConfig) -> Result<Self> {
        let model = LlamaModel::load(w.pp(BASE_MODEL_PREFIX), c)?;
        let lm_head = if c.tie_word_embeddings() && !w.has_quantized("lm_head.weight") {
            QLinear::Dense {
                weight: model.embed_tokens()?,
                bias: None,
            }
        } else {
            w.pp("lm_head").linear(c.hidden_size, c.vocab_size, false)?
        };
        Ok(Self { model, lm_head })
    }
}

impl CausalLanguageModel for LlamaForCausalLM {
    fn forward(
        &self,
        inputs: CausalLmInputs<'_>,
        cache: Option<&mut KvCache>,
        logits: LogitsMode,
    ) -> Result<Tensor> {
        let h = self.model.forward(inputs, cache)?;
        let h = logits.select(&h)?;
        self.lm_head.forward(&h)?.to_dtype(DType::F32)
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

impl crate::heads::DecoderBaseModel for LlamaModel {
    type Config = LlamaConfig;
    const PREFIX: &'static str = BASE_MODEL_PREFIX;
    fn load(w: Weights, c: &LlamaConfig) -> Result<Self> {
        LlamaModel::load(w, c)
    }
    fn forward(&self, inputs: CausalLmInputs<'_>, cache: Option<&mut KvCache>) -> Result<Tensor> {
        LlamaModel::forward(self, inputs, cache)
    }
}

/// `LlamaForSequenceClassification`: the generic head (`score` on the rightmost non-pad
/// token) over [`LlamaModel`].
pub type LlamaForSequenceClassification = crate::heads::ForSequenceClassification<LlamaModel>;
