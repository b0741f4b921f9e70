//! RoBERTa (and XLM-RoBERTa, which is the same network), read top to bottom like
//! Python's `modeling_roberta.py` (transformers 4.46:
//! src/transformers/models/roberta/modeling_roberta.py):
//! position ids → embeddings → self-attention → layer → model → task heads.
//! Field names are the checkpoint keys, so loading and saving need no rename table.
//! Dropout applies in training only (`Weights::dropout`), at Python's places.
//!
//! The encoder blocks are copied from `bert/modeling.rs` (a model never imports
//! another). What differs from BERT:
//! - position ids count non-padding tokens and start after `pad_token_id`
//!   ([`create_position_ids_from_input_ids`]), so padding never shifts positions;
//! - the sequence classification head reads the `<s>` token through
//!   `classifier.dense → tanh → classifier.out_proj` instead of the pooler;
//! - the MLM head is `lm_head.{dense, layer_norm, decoder, bias}` and always uses the
//!   exact GELU, whatever `hidden_act` says.
#![allow(non_snake_case)] // field names are checkpoint keys (`LayerNorm`)

use candle_core::{DType, Result, Tensor, D};
use rustformers_core::linear::{linear, QLinear, Weights};

use rustformers_core::kernels::encoder_layer::PostLnEncoderLayer;
use rustformers_core::layers::{
    encoder_self_attention, extended_attention_mask, Activation, Dropout, Embedding, LayerNorm,
    TrainMode,
};

use super::config::RobertaConfig;
use crate::traits::{
    token_types_or_zeros, BaseModelOutput, EncoderInputs, EncoderModel, MaskedLmModel,
    QuestionAnsweringModel, QuestionAnsweringOutput, SequenceClassificationModel,
    TokenClassificationModel,
};

/// Python's `base_model_prefix` for RoBERTa and XLM-RoBERTa.
pub const BASE_MODEL_PREFIX: &str = "roberta";

/// Tied tensors save_pretrained writes under both names (alias, source). Python 4.46
/// saves only `lm_head.bias` and, loading that, re-ties the two biases the wrong way
/// round and gets a zero bias; with both keys stored every version loads the real one.
pub const TIED_SAVE_KEYS: &[(&str, &str)] = &[("lm_head.decoder.bias", "lm_head.bias")];

fn act(config: &RobertaConfig) -> Result<Activation> {
    Activation::from_name(&config.hidden_act).map_err(|e| candle_core::Error::Msg(e.to_string()))
}

fn num_labels(config: &RobertaConfig) -> Result<usize> {
    config
        .base
        .num_labels()
        .map_err(|e| candle_core::Error::Msg(e.to_string()))
}

/// Python's `create_position_ids_from_input_ids`: each non-padding token gets
/// `padding_idx + (number of non-padding tokens up to and including it)`, padding
/// tokens get `padding_idx`. Returns u32 ids shaped like `input_ids`.
pub fn create_position_ids_from_input_ids(input_ids: &Tensor, padding_idx: u32) -> Result<Tensor> {
    let mask = input_ids.ne(padding_idx)?.to_dtype(DType::F32)?;
    // Counts stay exact in f32 far beyond any position table (2^24).
    let counts = mask.cumsum(D::Minus1)?.mul(&mask)?;
    counts.affine(1.0, padding_idx as f64)?.to_dtype(DType::U32)
}

/// Word + position + token type embeddings, then LayerNorm.
#[derive(Debug, Clone)]
pub struct RobertaEmbeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    LayerNorm: LayerNorm,
    dropout: Dropout,
    padding_idx: u32,
    max_tokens: usize,
}

impl RobertaEmbeddings {
    pub fn load(w: Weights, c: &RobertaConfig) -> Result<Self> {
        let padding_idx = u32::try_from(c.padding_idx()).map_err(|_| {
            candle_core::Error::Msg(format!("invalid pad_token_id {}", c.padding_idx()))
        })?;
        Ok(Self {
            word_embeddings: w
                .pp("word_embeddings")
                .embedding(c.vocab_size, c.hidden_size)?,
            position_embeddings: w
                .pp("position_embeddings")
                .embedding(c.max_position_embeddings, c.hidden_size)?,
            token_type_embeddings: w
                .pp("token_type_embeddings")
                .embedding(c.type_vocab_size, c.hidden_size)?,
            LayerNorm: LayerNorm::load(
                w.pp("LayerNorm").vb().clone(),
                c.hidden_size,
                c.layer_norm_eps,
            )?,
            dropout: w.dropout(c.hidden_dropout_prob),
            padding_idx,
            max_tokens: c.max_input_tokens(),
        })
    }

    /// The word embedding matrix (tied to the MLM decoder).
    pub fn word_embeddings(&self) -> Result<Tensor> {
        self.word_embeddings.embeddings()
    }

    pub fn forward(&self, input_ids: &Tensor, token_type_ids: &Tensor) -> Result<Tensor> {
        let (_b, s) = input_ids.dims2()?;
        if s > self.max_tokens {
            candle_core::bail!(
                "sequence of {s} tokens is longer than the model allows ({} = max_position_embeddings - pad_token_id - 1); truncate the input",
                self.max_tokens
            );
        }
        let positions = create_position_ids_from_input_ids(input_ids, self.padding_idx)?;
        let words = self.word_embeddings.forward(input_ids)?;
        let types = self.token_type_embeddings.forward(token_type_ids)?;
        let pos = self.position_embeddings.forward(&positions)?;
        let x = words.add(&types)?.add(&pos)?;
        self.dropout.forward(&self.LayerNorm.forward(&x)?)
    }
}

/// Multi-head self-attention (`attention.self`). Copied from `BertSelfAttention`
/// unchanged.
#[derive(Debug, Clone)]
pub struct RobertaSelfAttention {
    query: QLinear,
    key: QLinear,
    value: QLinear,
    num_heads: usize,
    head_dim: usize,
    dropout: Dropout,
}

impl RobertaSelfAttention {
    pub fn load(w: Weights, c: &RobertaConfig) -> Result<Self> {
        let h = c.hidden_size;
        Ok(Self {
            query: linear(h, h, w.pp("query"))?,
            key: linear(h, h, w.pp("key"))?,
            value: linear(h, h, w.pp("value"))?,
            num_heads: c.num_attention_heads,
            head_dim: h / c.num_attention_heads,
            dropout: w.dropout(c.attention_probs_dropout_prob),
        })
    }

    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let q = self.query.forward(x)?;
        let k = self.key.forward(x)?;
        let v = self.value.forward(x)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        encoder_self_attention(&q, &k, &v, self.num_heads, mask, scale, &self.dropout)
    }
}

/// Dense + residual + LayerNorm (`attention.output` and `output`). Copied from
/// `BertResidualOutput` unchanged.
#[derive(Debug, Clone)]
pub struct RobertaResidualOutput {
    dense: QLinear,
    LayerNorm: LayerNorm,
    dropout: Dropout,
}

impl RobertaResidualOutput {
    pub fn load(w: Weights, in_dim: usize, c: &RobertaConfig) -> Result<Self> {
        Ok(Self {
            dense: linear(in_dim, c.hidden_size, w.pp("dense"))?,
            LayerNorm: LayerNorm::load(
                w.pp("LayerNorm").vb().clone(),
                c.hidden_size,
                c.layer_norm_eps,
            )?,
            dropout: w.dropout(c.hidden_dropout_prob),
        })
    }

    pub fn forward(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        if !self.dropout.is_active() {
            // Inference: the kernels add the residual as they write the outputs.
            return self
                .LayerNorm
                .forward(&self.dense.forward_residual(x, residual)?);
        }
        let h = self.dropout.forward(&self.dense.forward(x)?)?;
        self.LayerNorm.forward(&(h + residual)?)
    }
}

/// One transformer block. Copied from `BertLayer` unchanged.
#[derive(Debug, Clone)]
pub struct RobertaLayer {
    attention_self: RobertaSelfAttention,
    attention_output: RobertaResidualOutput,
    intermediate: QLinear,
    act: Activation,
    output: RobertaResidualOutput,
    /// The training state (the fused training op hands it the parameters' gradients).
    train: Option<std::sync::Arc<TrainMode>>,
}

impl RobertaLayer {
    pub fn load(w: Weights, c: &RobertaConfig) -> Result<Self> {
        Ok(Self {
            attention_self: RobertaSelfAttention::load(w.pp("attention.self"), c)?,
            attention_output: RobertaResidualOutput::load(
                w.pp("attention.output"),
                c.hidden_size,
                c,
            )?,
            intermediate: linear(
                c.hidden_size,
                c.intermediate_size,
                w.pp("intermediate.dense"),
            )?,
            act: act(c)?,
            output: RobertaResidualOutput::load(w.pp("output"), c.intermediate_size, c)?,
            train: w.train_mode(),
        })
    }

    /// The layer's parts for the fused training op.
    fn fused(&self) -> PostLnEncoderLayer<'_> {
        let (sa, ao, out) = (&self.attention_self, &self.attention_output, &self.output);
        PostLnEncoderLayer {
            query: &sa.query,
            key: &sa.key,
            value: &sa.value,
            attention_output: &ao.dense,
            attention_norm: &ao.LayerNorm,
            intermediate: &self.intermediate,
            activation: &self.act,
            output: &out.dense,
            output_norm: &out.LayerNorm,
            heads: sa.num_heads,
            probs_dropout: &sa.dropout,
            attention_dropout: &ao.dropout,
            output_dropout: &out.dropout,
            mode: self.train.as_ref(),
        }
    }

    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        // Training: the whole layer as one op with its backward pass.
        if let Some(y) = self.fused().train_forward(x, mask)? {
            return Ok(y);
        }
        let a = self.attention_self.forward(x, mask)?;
        let a = self.attention_output.forward(&a, x)?;
        let i = self.intermediate.forward_act(&a, &self.act)?;
        self.output.forward(&i, &a)
    }
}

/// The base model: embeddings, encoder layers and (optionally) the pooler. Copied
/// from `BertModel`; only the embeddings differ.
#[derive(Debug, Clone)]
pub struct RobertaModel {
    /// Layers recomputed in the backward pass (`gradient_checkpointing`).
    checkpointing: Option<std::sync::Arc<rustformers_core::checkpoint::Checkpointing>>,
    embeddings: RobertaEmbeddings,
    layers: Vec<RobertaLayer>,
    pooler: Option<QLinear>,
    dtype: DType,
}

impl RobertaModel {
    /// Loads the base model from `vb` (already at the model's prefix).
    pub fn load(w: Weights, c: &RobertaConfig, add_pooling_layer: bool) -> Result<Self> {
        let embeddings = RobertaEmbeddings::load(w.pp("embeddings"), c)?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| RobertaLayer::load(w.pp(format!("encoder.layer.{i}")), c))
            .collect::<Result<Vec<_>>>()?;
        let pooler = if add_pooling_layer {
            Some(linear(c.hidden_size, c.hidden_size, w.pp("pooler.dense"))?)
        } else {
            None
        };
        Ok(Self {
            checkpointing: w.checkpointing(),
            embeddings,
            layers,
            pooler,
            dtype: w.vb().dtype(),
        })
    }

    pub fn embeddings(&self) -> &RobertaEmbeddings {
        &self.embeddings
    }

    pub fn forward(&self, inputs: EncoderInputs<'_>) -> Result<BaseModelOutput> {
        let types = token_types_or_zeros(&inputs)?;
        let mut x = self.embeddings.forward(inputs.input_ids, &types)?;
        let mask = inputs
            .attention_mask
            .map(|m| extended_attention_mask(m, self.dtype))
            .transpose()?;
        for layer in &self.layers {
            x = match &self.checkpointing {
                Some(c) => {
                    let (layer, mask) = (layer.clone(), mask.clone());
                    c.run(&x, move |x| layer.forward(x, mask.as_ref()))?
                }
                None => layer.forward(&x, mask.as_ref())?,
            };
        }
        let pooler_output = match &self.pooler {
            Some(p) => Some(p.forward(&first_token(&x)?)?.tanh()?),
            None => None,
        };
        Ok(BaseModelOutput {
            last_hidden_state: x,
            pooler_output,
        })
    }
}

/// `x[:, 0, :]`: the `<s>` token of every row.
fn first_token(x: &Tensor) -> Result<Tensor> {
    x.narrow(1, 0, 1)?.squeeze(1)
}

impl EncoderModel for RobertaModel {
    fn forward(&self, inputs: EncoderInputs<'_>) -> Result<BaseModelOutput> {
        RobertaModel::forward(self, inputs)
    }
}

/// `RobertaForSequenceClassification`: `<s>` hidden state → `classifier.dense` → tanh
/// → `classifier.out_proj` (Python's `RobertaClassificationHead`; no pooler).
#[derive(Debug, Clone)]
pub struct RobertaForSequenceClassification {
    roberta: RobertaModel,
    dropout: Dropout,
    dense: QLinear,
    out_proj: QLinear,
}

impl RobertaForSequenceClassification {
    pub fn load(w: Weights, c: &RobertaConfig) -> Result<Self> {
        let n = num_labels(c)?;
        let head = w.pp("classifier");
        Ok(Self {
            roberta: RobertaModel::load(w.pp(BASE_MODEL_PREFIX), c, false)?,
            dropout: w.dropout(c.classifier_dropout.unwrap_or(c.hidden_dropout_prob)),
            dense: linear(c.hidden_size, c.hidden_size, head.pp("dense"))?,
            out_proj: linear(c.hidden_size, n, head.pp("out_proj"))?,
        })
    }
}

impl SequenceClassificationModel for RobertaForSequenceClassification {
    fn forward(&self, inputs: EncoderInputs<'_>) -> Result<Tensor> {
        let out = self.roberta.forward(inputs)?;
        // Python's head: dropout → dense → tanh → dropout → out_proj.
        let x = self
            .dropout
            .forward(&first_token(&out.last_hidden_state)?)?;
        let x = self.dense.forward(&x)?.tanh()?;
        self.out_proj.forward(&self.dropout.forward(&x)?)
    }
}

/// `RobertaForTokenClassification`: sequence output → classifier.
#[derive(Debug, Clone)]
pub struct RobertaForTokenClassification {
    roberta: RobertaModel,
    dropout: Dropout,
    classifier: QLinear,
}

impl RobertaForTokenClassification {
    pub fn load(w: Weights, c: &RobertaConfig) -> Result<Self> {
        let n = num_labels(c)?;
        Ok(Self {
            roberta: RobertaModel::load(w.pp(BASE_MODEL_PREFIX), c, false)?,
            dropout: w.dropout(c.classifier_dropout.unwrap_or(c.hidden_dropout_prob)),
            classifier: linear(c.hidden_size, n, w.pp("classifier"))?,
        })
    }
}

impl TokenClassificationModel for RobertaForTokenClassification {
    fn forward(&self, inputs: EncoderInputs<'_>) -> Result<Tensor> {
        let out = self.roberta.forward(inputs)?;
        self.classifier
            .forward(&self.dropout.forward(&out.last_hidden_state)?)
    }
}

/// `RobertaForQuestionAnswering`: sequence output → start/end logits.
#[derive(Debug, Clone)]
pub struct RobertaForQuestionAnswering {
    roberta: RobertaModel,
    qa_outputs: QLinear,
}

impl RobertaForQuestionAnswering {
    pub fn load(w: Weights, c: &RobertaConfig) -> Result<Self> {
        Ok(Self {
            roberta: RobertaModel::load(w.pp(BASE_MODEL_PREFIX), c, false)?,
            qa_outputs: linear(c.hidden_size, 2, w.pp("qa_outputs"))?,
        })
    }
}

impl QuestionAnsweringModel for RobertaForQuestionAnswering {
    fn forward(&self, inputs: EncoderInputs<'_>) -> Result<QuestionAnsweringOutput> {
        let out = self.roberta.forward(inputs)?;
        let logits = self.qa_outputs.forward(&out.last_hidden_state)?;
        let start_logits = logits.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?;
        let end_logits = logits.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?;
        Ok(QuestionAnsweringOutput {
            start_logits,
            end_logits,
        })
    }
}

/// `RobertaForMaskedLM`: `lm_head.dense` → GELU → `lm_head.layer_norm` →
/// `lm_head.decoder` (tied to the word embeddings) + `lm_head.bias`.
#[derive(Debug, Clone)]
pub struct RobertaForMaskedLM {
    roberta: RobertaModel,
    dense: QLinear,
    layer_norm: LayerNorm,
    decoder: QLinear,
}

impl RobertaForMaskedLM {
    pub fn load(w: Weights, c: &RobertaConfig) -> Result<Self> {
        let roberta = RobertaModel::load(w.pp(BASE_MODEL_PREFIX), c, false)?;
        let p = w.pp("lm_head");
        let dense = linear(c.hidden_size, c.hidden_size, p.pp("dense"))?;
        let layer_norm = LayerNorm::load(
            p.pp("layer_norm").vb().clone(),
            c.hidden_size,
            c.layer_norm_eps,
        )?;
        let weight = if c.base.tie_word_embeddings() {
            roberta.embeddings().word_embeddings()?
        } else {
            p.vb()
                .get((c.vocab_size, c.hidden_size), "decoder.weight")?
        };
        // Python ties `lm_head.decoder.bias` to `lm_head.bias`; checkpoints hold either.
        let bias = if !p.vb().contains_tensor("bias") && p.vb().contains_tensor("decoder.bias") {
            p.vb().get(c.vocab_size, "decoder.bias")?
        } else {
            if p.vb().contains_tensor("decoder.bias") {
                // The same tied tensor stored twice: read so it counts as used.
                p.vb().get(c.vocab_size, "decoder.bias")?;
            }
            p.vb().get(c.vocab_size, "bias")?
        };
        Ok(Self {
            roberta,
            dense,
            layer_norm,
            decoder: QLinear::new(weight, Some(bias)),
        })
    }
}

impl MaskedLmModel for RobertaForMaskedLM {
    fn forward(&self, inputs: EncoderInputs<'_>) -> Result<Tensor> {
        let out = self.roberta.forward(inputs)?;
        let h = self.dense.forward(&out.last_hidden_state)?;
        let h = rustformers_core::kernels::activation::gelu_erf_tensor(&h)?;
        let h = self.layer_norm.forward(&h)?;
        self.decoder.forward(&h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn position_ids_skip_padding() {
        let ids =
            Tensor::new(&[[0u32, 44, 73, 2, 1, 1], [0, 5, 1, 6, 2, 1]], &Device::Cpu).unwrap();
        let pos = create_position_ids_from_input_ids(&ids, 1).unwrap();
        assert_eq!(
            pos.to_vec2::<u32>().unwrap(),
            vec![vec![2, 3, 4, 5, 1, 1], vec![2, 3, 1, 4, 5, 1]]
        );
    }
}
