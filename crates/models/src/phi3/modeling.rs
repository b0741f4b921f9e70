//! Phi-3, read top to bottom like Python's `modeling_phi3.py` (transformers 5.25:
//! src/transformers/models/phi3/modeling_phi3.py): rotary embedding (plain or
//! `longrope`) → gated MLP with a fused `gate_up_proj` → attention with a fused
//! `qkv_proj`, grouped-query heads and a KV cache → decoder layer → model → LM head.
//!
//! Copied from `llama/modeling.rs`; differs in: `qkv_proj` rows are `[q; k; v]` and
//! `gate_up_proj` rows `[gate; up]`, split after the matmul as Python slices them; the
//! MLP is `down(up * act(gate))`; no biases; the causal mask carries `sliding_window`;
//! the rotary table is plain or `longrope` (per-frequency short/long factors chosen by
//! the largest position against `original_max_position_embeddings`, cos/sin scaled by
//! `sqrt(1 + ln(factor) / ln(original_max))`, core's [`RotaryEmbedding`]), applied to
//! the first `partial_rotary_factor` share of each head. Field names are the checkpoint
//! keys.

use candle_core::{DType, Device, Result, Tensor, D};

use rustformers_core::kv_cache::KvCache;
use rustformers_core::layers::{
    cached_attention_with, causal_mask, Activation, Dropout, Embedding,
};
use rustformers_core::linear::{QLinear, RmsNorm, Weights};
use rustformers_core::rotary::{apply_rotary, RopeScaling, RotaryEmbedding};

use super::config::Phi3Config;
use crate::traits::{CausalLanguageModel, CausalLmInputs, LogitsMode};

/// Python's `base_model_prefix` for Phi-3.
pub const BASE_MODEL_PREFIX: &str = "model";

fn msg(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// Whether a cached step crosses `original_max_position_embeddings` under longrope: the
/// cached keys were rotated with the short factors, and Python's `generate` recomputes
/// the whole sequence there ([`CausalLanguageModel::recompute_cache`]).
fn crosses_switch(longrope_original_max: Option<usize>, past: usize, new: usize) -> bool {
    longrope_original_max.is_some_and(|m| past > 0 && past <= m && past + new > m)
}

/// Refuses a cached step that crosses the switch (callers that cannot recompute).
fn check_switch(longrope_original_max: Option<usize>, past: usize, new: usize) -> Result<()> {
    if let Some(original_max) = longrope_original_max {
        if crosses_switch(longrope_original_max, past, new) {
            candle_core::bail!(
                "Phi-3 longrope switches from its short to its long factors past \
                 original_max_position_embeddings ({original_max} tokens), and the cached \
                 keys would need recomputing (not supported): keep prompt + new tokens within \
                 {original_max}, or run the whole sequence without a cache"
            );
        }
    }
    Ok(())
}

/// `down(up * act(gate))` with `[gate; up] = gate_up_proj(x)`.
#[derive(Debug, Clone)]
pub struct Phi3Mlp {
    gate_up_proj: QLinear,
    down_proj: QLinear,
    act: Activation,
    intermediate_size: usize,
}

impl Phi3Mlp {
    pub fn load(w: Weights, c: &Phi3Config) -> Result<Self> {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        Ok(Self {
            gate_up_proj: w.pp("gate_up_proj").linear(h, 2 * i, false)?,
            down_proj: w.pp("down_proj").linear(i, h, false)?,
            act: Activation::from_name(&c.hidden_act).map_err(msg)?,
            intermediate_size: i,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate_up = self.gate_up_proj.forward(x)?;
        let i = self.intermediate_size;
        let gate = gate_up.narrow(D::Minus1, 0, i)?;
        let up = gate_up.narrow(D::Minus1, i, i)?;
        self.down_proj.forward(&(up * self.act.forward(&gate)?)?)
    }
}

/// Self-attention with a fused `qkv_proj` and grouped-query heads.
#[derive(Debug, Clone)]
pub struct Phi3Attention {
    /// `attention_dropout` on the attention probabilities (training only).
    attn_dropout: Dropout,
    qkv_proj: QLinear,
    o_proj: QLinear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Phi3Attention {
    pub fn load(w: Weights, c: &Phi3Config) -> Result<Self> {
        let (h, hd) = (c.hidden_size, c.head_dim());
        let (nh, nkv) = (c.num_attention_heads, c.num_key_value_heads());
        Ok(Self {
            attn_dropout: w.dropout(c.attention_dropout),
            qkv_proj: w.pp("qkv_proj").linear(h, (nh + 2 * nkv) * hd, false)?,
            o_proj: w.pp("o_proj").linear(nh * hd, h, false)?,
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: hd,
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
        let qkv = self.qkv_proj.forward(x)?;
        let (q_len, kv_len) = (
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
        );
        let split = |start: usize, len: usize, heads: usize| -> Result<Tensor> {
            qkv.narrow(D::Minus1, start, len)?
                .reshape((b, s, heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(0, q_len, self.num_heads)?;
        let k = split(q_len, kv_len, self.num_kv_heads)?;
        let v = split(q_len + kv_len, kv_len, self.num_kv_heads)?;
        let q = apply_rotary(&q, cos, sin)?;
        let k = apply_rotary(&k, cos, sin)?;
        let (k, v) = match cache {
            Some(c) => c.append(layer, &k, &v)?,
            None => (k, v),
        };
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let out = cached_attention_with(&q, &k, &v, mask, scale, None, &self.attn_dropout)?;
        self.o_proj.forward(&out)
    }
}

/// Pre-norm decoder layer (the residual dropouts are identities at inference).
#[derive(Debug, Clone)]
pub struct Phi3DecoderLayer {
    self_attn: Phi3Attention,
    mlp: Phi3Mlp,
    /// `resid_pdrop` on the attention and MLP outputs (training only). Python defines
    /// `embed_dropout` (`embd_pdrop`) but never applies it; neither does rustformers.
    resid_dropout: Dropout,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

impl Phi3DecoderLayer {
    pub fn load(w: Weights, c: &Phi3Config) -> Result<Self> {
        Ok(Self {
            self_attn: Phi3Attention::load(w.pp("self_attn"), c)?,
            mlp: Phi3Mlp::load(w.pp("mlp"), c)?,
            resid_dropout: w.dropout(c.resid_pdrop),
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
        let x = (x + self.resid_dropout.forward(&a)?)?;
        let m = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&x)?)?;
        x + self.resid_dropout.forward(&m)?
    }
}

/// The decoder stack (`model.*`).
#[derive(Debug, Clone)]
pub struct Phi3Model {
    /// Layers recomputed in the backward pass (`gradient_checkpointing`).
    checkpointing: Option<std::sync::Arc<rustformers_core::checkpoint::Checkpointing>>,
    embed_tokens: Embedding,
    layers: Vec<Phi3DecoderLayer>,
    norm: RmsNorm,
    rotary: RotaryEmbedding,
    /// `original_max_position_embeddings` under longrope (see [`check_switch`]).
    longrope_original_max: Option<usize>,
    sliding_window: Option<usize>,
    vocab_size: usize,
    max_positions: usize,
    dtype: DType,
}

impl Phi3Model {
    pub fn load(w: Weights, c: &Phi3Config) -> Result<Self> {
        let embed_tokens = w
            .pp("embed_tokens")
            .embedding(c.vocab_size, c.hidden_size)?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| Phi3DecoderLayer::load(w.pp(format!("layers.{i}")), c))
            .collect::<Result<Vec<_>>>()?;
        let rope = c.rope().map_err(msg)?;
        let longrope_original_max = match rope.scaling {
            RopeScaling::Longrope { original_max, .. } => Some(original_max),
            _ => None,
        };
        Ok(Self {
            checkpointing: w.checkpointing(),
            embed_tokens,
            layers,
            norm: RmsNorm::load(w.vb().pp("norm"), c.hidden_size, c.rms_norm_eps)?,
            rotary: RotaryEmbedding::from_parameters(c.head_dim(), &rope).map_err(msg)?,
            longrope_original_max,
            sliding_window: c.sliding_window,
            vocab_size: c.vocab_size,
            max_positions: c.max_position_embeddings,
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
        check_switch(self.longrope_original_max, past, s)?;
        let positions = match inputs.position_ids {
            Some(p) => p.clone(),
            None => default_positions(past, b, s, ids.device())?,
        };
        let (cos, sin) = self.rotary.cos_sin(&positions)?;
        let mask = causal_mask(
            inputs.attention_mask,
            b,
            s,
            past,
            self.sliding_window,
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

/// `past .. past + seq` for every row.
fn default_positions(past: usize, b: usize, s: usize, device: &Device) -> Result<Tensor> {
    Tensor::arange(past as u32, (past + s) as u32, device)?
        .unsqueeze(0)?
        .broadcast_as((b, s))?
        .contiguous()
}

/// `Phi3ForCausalLM`.
#[derive(Debug, Clone)]
pub struct Phi3ForCausalLM {
    model: Phi3Model,
    lm_head: QLinear,
}

impl Phi3ForCausalLM {
    pub fn load(w: Weights, c: &Phi3Config) -> Result<Self> {
        let model = Phi3Model::load(w.pp(BASE_MODEL_PREFIX), c)?;
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

impl CausalLanguageModel for Phi3ForCausalLM {
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

    fn recompute_cache(&self, past: usize, new: usize) -> bool {
        crosses_switch(self.model.longrope_original_max, past, new)
    }
}

impl crate::heads::DecoderBaseModel for Phi3Model {
    type Config = Phi3Config;
    const PREFIX: &'static str = BASE_MODEL_PREFIX;
    fn load(w: Weights, c: &Phi3Config) -> Result<Self> {
        Phi3Model::load(w, c)
    }
    fn forward(&self, inputs: CausalLmInputs<'_>, cache: Option<&mut KvCache>) -> Result<Tensor> {
        Phi3Model::forward(self, inputs, cache)
    }
}

/// `Phi3ForSequenceClassification`: the generic head (`score` on the rightmost non-pad
/// token) over [`Phi3Model`].
pub type Phi3ForSequenceClassification = crate::heads::ForSequenceClassification<Phi3Model>;

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: serde_json::Value) -> Phi3Config {
        let mut v = serde_json::json!({
            "hidden_size": 16, "num_attention_heads": 2, "max_position_embeddings": 64,
            "original_max_position_embeddings": 16
        });
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        serde_json::from_value(v).unwrap()
    }

    /// 5.25 picks the factors by the largest position of the forward
    /// (`longrope_frequency_update`): short up to `original_max` positions, long past it.
    #[test]
    fn longrope_picks_factors_by_position_and_refuses_a_cached_switch() {
        let c = config(serde_json::json!({"rope_scaling": {
            "type": "su", "short_factor": [1.0, 1.0, 1.0, 1.0], "long_factor": [2.0, 2.0, 2.0, 2.0]
        }}));
        c.validate().unwrap();
        let r = RotaryEmbedding::from_parameters(c.head_dim(), &c.rope().unwrap()).unwrap();
        let (short, _) = r
            .cos_sin(&Tensor::new(&[[3u32, 15]], &Device::Cpu).unwrap())
            .unwrap();
        let (long, _) = r
            .cos_sin(&Tensor::new(&[[3u32, 16]], &Device::Cpu).unwrap())
            .unwrap();
        let f = (1.0f64 + 4f64.ln() / 16f64.ln()).sqrt();
        let s = short.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let l = long.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!((s[0] as f64 - 3f64.cos() * f).abs() < 1e-5, "{s:?}");
        assert!((l[0] as f64 - 1.5f64.cos() * f).abs() < 1e-5, "{l:?}");
        assert!(check_switch(Some(16), 0, 20).is_ok());
        assert!(check_switch(Some(16), 10, 6).is_ok());
        assert!(check_switch(Some(16), 17, 1).is_ok());
        assert!(check_switch(None, 16, 1).is_ok());
        let e = check_switch(Some(16), 16, 1).unwrap_err().to_string();
        assert!(e.contains("original_max_position_embeddings"), "{e}");
    }

    #[test]
    fn unsupported_rope_scaling_is_a_clear_error() {
        let c = config(serde_json::json!({"rope_scaling": {"type": "linear", "factor": 2.0}}));
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("longrope"), "{e}");
        let c = config(serde_json::json!({"rope_scaling": {
            "type": "longrope", "short_factor": [1.0], "long_factor": [1.0]
        }}));
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("4 numbers"), "{e}");
    }
}
