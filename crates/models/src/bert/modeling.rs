//! BERT, read top to bottom like Python's `modeling_bert.py`
//! (transformers 4.46: src/transformers/models/bert/modeling_bert.py):
//! embeddings → self-attention → layer → encoder → pooler → model → task heads.
//! Field names are the checkpoint keys, so loading and saving need no rename table.
//! Dropout applies in training only (`Weights::dropout`), at Python's places.
#![allow(non_snake_case)] // field names are checkpoint keys (`LayerNorm`)

use candle_core::{DType, Result, Tensor, D};
use rustformers_core::linear::{linear, QLinear, Weights};

use rustformers_core::kernels::encoder_layer::PostLnEncoderLayer;
use rustformers_core::layers::{
    encoder_self_attention, extended_attention_mask, Activation, Dropout, Embedding, LayerNorm,
    TrainMode,
};

use super::config::BertConfig;
use crate::traits::{
    token_types_or_zeros, BaseModelOutput, EncoderInputs, EncoderModel, MaskedLmModel,
    QuestionAnsweringModel, QuestionAnsweringOutput, SequenceClassificationModel,
    TokenClassificationModel,
};

/// Python's `base_model_prefix` for BERT.
pub const BASE_MODEL_PREFIX: &str = "bert";

fn act(config: &BertConfig) -> Result<Activation> {
    Activation::from_name(&config.hidden_act).map_err(|e| candle_core::Error::Msg(e.to_string()))
}

/// Word + position + token type embeddings, then LayerNorm.
#[derive(Debug, Clone)]
pub struct BertEmbeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    LayerNorm: LayerNorm,
    dropout: Dropout,
    max_positions: usize,
}

impl BertEmbeddings {
    pub fn load(w: Weights, c: &BertConfig) -> Result<Self> {
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
            max_positions: c.max_position_embeddings,
        })
    }

    /// The word embedding matrix (tied to the MLM decoder).
    pub fn word_embeddings(&self) -> Result<Tensor> {
        self.word_embeddings.embeddings()
    }

    pub fn forward(&self, input_ids: &Tensor, token_type_ids: &Tensor) -> Result<Tensor> {
        let (_b, s) = input_ids.dims2()?;
        if s > self.max_positions {
            candle_core::bail!(
                "sequence of {s} tokens is longer than the model's max_position_embeddings ({}); truncate the input",
                self.max_positions
            );
        }
        let positions = Tensor::arange(0u32, s as u32, input_ids.device())?;
        let words = self.word_embeddings.forward(input_ids)?;
        let types = self.token_type_embeddings.forward(token_type_ids)?;
        let pos = self.position_embeddings.forward(&positions)?;
        let x = words.add(&types)?.broadcast_add(&pos)?;
        self.dropout.forward(&self.LayerNorm.forward(&x)?)
    }
}

/// Multi-head self-attention (`attention.self`).
#[derive(Debug, Clone)]
pub struct BertSelfAttention {
    query: QLinear,
    key: QLinear,
    value: QLinear,
    num_heads: usize,
    head_dim: usize,
    dropout: Dropout,
}

impl BertSelfAttention {
    pub fn load(w: Weights, c: &BertConfig) -> Result<Self> {
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

/// Dense + residual + LayerNorm (`attention.output` and `output`).
#[derive(Debug, Clone)]
pub struct BertResidualOutput {
    dense: QLinear,
    LayerNorm: LayerNorm,
    dropout: Dropout,
}

impl BertResidualOutput {
    pub fn load(w: Weights, in_dim: usize, c: &BertConfig) -> Result<Self> {
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

/// One transformer block.
#[derive(Debug, Clone)]
pub struct BertLayer {
    attention_self: BertSelfAttention,
    attention_output: BertResidualOutput,
    intermediate: QLinear,
    act: Activation,
    output: BertResidualOutput,
    /// The training state (the fused training op hands it the parameters' gradients).
    train: Option<std::sync::Arc<TrainMode>>,
}

impl BertLayer {
    pub fn load(w: Weights, c: &BertConfig) -> Result<Self> {
        Ok(Self {
            attention_self: BertSelfAttention::load(w.pp("attention.self"), c)?,
            attention_output: BertResidualOutput::load(w.pp("attention.output"), c.hidden_size, c)?,
            intermediate: linear(
                c.hidden_size,
                c.intermediate_size,
                w.pp("intermediate.dense"),
            )?,
            act: act(c)?,
            output: BertResidualOutput::load(w.pp("output"), c.intermediate_size, c)?,
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

/// The base model: embeddings, encoder layers and (optionally) the pooler.
#[derive(Debug, Clone)]
pub struct BertModel {
    /// Layers recomputed in the backward pass (`gradient_checkpointing`).
    checkpointing: Option<std::sync::Arc<rustformers_core::checkpoint::Checkpointing>>,
    embeddings: BertEmbeddings,
    layers: Vec<BertLayer>,
    pooler: Option<QLinear>,
    dtype: DType,
}

impl BertModel {
    /// Loads the base model from `vb` (already at the model's prefix).
    pub fn load(w: Weights, c: &BertConfig, add_pooling_layer: bool) -> Result<Self> {
        let embeddings = BertEmbeddings::load(w.pp("embeddings"), c)?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| BertLayer::load(w.pp(format!("encoder.layer.{i}")), c))
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

    pub fn embeddings(&self) -> &BertEmbeddings {
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
            Some(p) => Some(p.forward(&x.narrow(1, 0, 1)?.squeeze(1)?)?.tanh()?),
            None => None,
        };
        Ok(BaseModelOutput {
            last_hidden_state: x,
            pooler_output,
        })
    }
}

impl EncoderModel for BertModel {
    fn forward(&self, inputs: EncoderInputs<'_>) -> Result<BaseModelOutput> {
        BertModel::forward(self, inputs)
    }
}

/// `BertForSequenceClassification`: pooler output → classifier.
#[derive(Debug, Clone)]
pub struct BertForSequenceClassification {
    bert: BertModel,
    dropout: Dropout,
    classifier: QLinear,
}

impl BertForSequenceClassification {
    pub fn load(w: Weights, c: &BertConfig) -> Result<Self> {
        let n = c
            .base
            .num_labels()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok(Self {
            bert: BertModel::load(w.pp(BASE_MODEL_PREFIX), c, true)?,
            dropout: w.dropout(c.classifier_dropout.unwrap_or(c.hidden_dropout_prob)),
            classifier: linear(c.hidden_size, n, w.pp("classifier"))?,
        })
    }
}

impl SequenceClassificationModel for BertForSequenceClassification {
    fn forward(&self, inputs: EncoderInputs<'_>) -> Result<Tensor> {
        let out = self.bert.forward(inputs)?;
        let pooled = out
            .pooler_output
            .ok_or_else(|| candle_core::Error::Msg("BERT pooler missing".into()))?;
        self.classifier.forward(&self.dropout.forward(&pooled)?)
    }
}

/// `BertForTokenClassification`: sequence output → classifier.
#[derive(Debug, Clone)]
pub struct BertForTokenClassification {
    bert: BertModel,
    dropout: Dropout,
    classifier: QLinear,
}

impl BertForTokenClassification {
    pub fn load(w: Weights, c: &BertConfig) -> Result<Self> {
        let n = c
            .base
            .num_labels()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok(Self {
            bert: BertModel::load(w.pp(BASE_MODEL_PREFIX), c, false)?,
            dropout: w.dropout(c.classifier_dropout.unwrap_or(c.hidden_dropout_prob)),
            classifier: linear(c.hidden_size, n, w.pp("classifier"))?,
        })
    }
}

impl TokenClassificationModel for BertForTokenClassification {
    fn forward(&self, inputs: EncoderInputs<'_>) -> Result<Tensor> {
        let out = self.bert.forward(inputs)?;
        self.classifier
            .forward(&self.dropout.forward(&out.last_hidden_state)?)
    }
}

/// `BertForQuestionAnswering`: sequence output → start/end logits.
#[derive(Debug, Clone)]
pub struct BertForQuestionAnswering {
    bert: BertModel,
    qa_outputs: QLinear,
}

impl BertForQuestionAnswering {
    pub fn load(w: Weights, c: &BertConfig) -> Result<Self> {
        Ok(Self {
            bert: BertModel::load(w.pp(BASE_MODEL_PREFIX), c, false)?,
            qa_outputs: linear(c.hidden_size, 2, w.pp("qa_outputs"))?,
        })
    }
}

impl QuestionAnsweringModel for BertForQuestionAnswering {
    fn forward(&self, inputs: EncoderInputs<'_>) -> Result<QuestionAnsweringOutput> {
        let out = self.bert.forward(inputs)?;
        let logits = self.qa_outputs.forward(&out.last_hidden_state)?;
        let start_logits = logits.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?;
        let end_logits = logits.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?;
        Ok(QuestionAnsweringOutput {
            start_logits,
            end_logits,
        })
    }
}

/// `BertForMaskedLM`: `cls.predictions` transform → decoder tied to the word embeddings.
#[derive(Debug, Clone)]
pub struct BertForMaskedLM {
    bert: BertModel,
    transform_dense: QLinear,
    transform_act: Activation,
    transform_norm: LayerNorm,
    decoder: QLinear,
}

impl BertForMaskedLM {
    pub fn load(w: Weights, c: &BertConfig) -> Result<Self> {
        let bert = BertModel::load(w.pp(BASE_MODEL_PREFIX), c, false)?;
        let p = w.pp("cls.predictions");
        let transform_dense = linear(c.hidden_size, c.hidden_size, p.pp("transform.dense"))?;
        let transform_norm = LayerNorm::load(
            p.pp("transform.LayerNorm").vb().clone(),
            c.hidden_size,
            c.layer_norm_eps,
        )?;
        let weight = if c.base.tie_word_embeddings() {
            bert.embeddings().word_embeddings()?
        } else {
            p.vb()
                .get((c.vocab_size, c.hidden_size), "decoder.weight")?
        };
        let bias = p.vb().get(c.vocab_size, "bias")?;
        Ok(Self {
            bert,
            transform_dense,
            transform_act: act(c)?,
            transform_norm,
            decoder: QLinear::new(weight, Some(bias)),
        })
    }
}

impl MaskedLmModel for BertForMaskedLM {
    fn forward(&self, inputs: EncoderInputs<'_>) -> Result<Tensor> {
        let out = self.bert.forward(inputs)?;
        let h = self.transform_dense.forward(&out.last_hidden_state)?;
        let h = self.transform_act.forward(&h)?;
        let h = self.transform_norm.forward(&h)?;
        self.decoder.forward(&h)
    }
}
