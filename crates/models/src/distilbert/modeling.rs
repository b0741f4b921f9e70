//! DistilBERT, read top to bottom like Python's `modeling_distilbert.py`
//! (transformers 4.46: src/transformers/models/distilbert/modeling_distilbert.py):
//! embeddings → multi-head self-attention → FFN → transformer block → model → heads.
//! Field names are the checkpoint keys, so loading and saving need no rename table.
//! Dropout applies in training only (`Weights::dropout`), at Python's places.
//!
//! Differences from BERT worth knowing: no token type embeddings (token_type_ids are
//! ignored), no pooler, every LayerNorm has eps 1e-12 whatever the config says, and
//! the sequence classification head is `pre_classifier → ReLU → classifier` on the
//! `[CLS]` hidden state.
#![allow(non_snake_case)] // field names are checkpoint keys (`LayerNorm`)

use candle_core::{DType, Result, Tensor, D};
use candle_nn::VarBuilder;
use rustformers_core::linear::{linear, QLinear, Weights};

use rustformers_core::kernels::encoder_layer::PostLnEncoderLayer;
use rustformers_core::layers::{
    encoder_self_attention, extended_attention_mask, Activation, Dropout, Embedding, LayerNorm,
    TrainMode,
};

use super::config::DistilBertConfig;
use crate::traits::{
    BaseModelOutput, EncoderInputs, EncoderModel, MaskedLmModel, QuestionAnsweringModel,
    QuestionAnsweringOutput, SequenceClassificationModel, TokenClassificationModel,
};

/// Python's `base_model_prefix` for DistilBERT.
pub const BASE_MODEL_PREFIX: &str = "distilbert";

/// The LayerNorm epsilon Python hard-codes in every DistilBERT LayerNorm.
const LAYER_NORM_EPS: f64 = 1e-12;

fn act(config: &DistilBertConfig) -> Result<Activation> {
    Activation::from_name(&config.activation).map_err(|e| candle_core::Error::Msg(e.to_string()))
}

fn num_labels(config: &DistilBertConfig) -> Result<usize> {
    config
        .base
        .num_labels()
        .map_err(|e| candle_core::Error::Msg(e.to_string()))
}

/// Python's `_create_sinusoidal_embeddings`: `[n_pos, dim]` with
/// `angle = pos / 10000^(2*(j/2)/dim)`, sine in even columns, cosine in odd ones.
pub fn sinusoidal_position_table(n_pos: usize, dim: usize, vb: &VarBuilder) -> Result<Tensor> {
    let mut data = Vec::with_capacity(n_pos * dim);
    for pos in 0..n_pos {
        for j in 0..dim {
            let angle = pos as f64 / 10000f64.powf((2 * (j / 2)) as f64 / dim as f64);
            data.push(if j % 2 == 0 { angle.sin() } else { angle.cos() } as f32);
        }
    }
    Tensor::from_vec(data, (n_pos, dim), vb.device())?.to_dtype(vb.dtype())
}

/// Word + position embeddings, then LayerNorm (Python's `Embeddings`).
#[derive(Debug, Clone)]
pub struct Embeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    LayerNorm: LayerNorm,
    dropout: Dropout,
    max_positions: usize,
}

impl Embeddings {
    pub fn load(w: Weights, c: &DistilBertConfig) -> Result<Self> {
        let pw = w.pp("position_embeddings");
        let position_embeddings = if c.sinusoidal_pos_embds && !pw.vb().contains_tensor("weight") {
            Embedding::new(
                sinusoidal_position_table(c.max_position_embeddings, c.dim, pw.vb())?,
                "position_embeddings",
            )?
        } else {
            pw.embedding(c.max_position_embeddings, c.dim)?
        };
        Ok(Self {
            word_embeddings: w.pp("word_embeddings").embedding(c.vocab_size, c.dim)?,
            position_embeddings,
            LayerNorm: LayerNorm::load(w.pp("LayerNorm").vb().clone(), c.dim, LAYER_NORM_EPS)?,
            dropout: w.dropout(c.dropout),
            max_positions: c.max_position_embeddings,
        })
    }

    /// The word embedding matrix (tied to the MLM projector).
    pub fn word_embeddings(&self) -> Result<Tensor> {
        self.word_embeddings.embeddings()
    }

    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (_b, s) = input_ids.dims2()?;
        if s > self.max_positions {
            candle_core::bail!(
                "sequence of {s} tokens is longer than the model's max_position_embeddings ({}); truncate the input",
                self.max_positions
            );
        }
        let positions = Tensor::arange(0u32, s as u32, input_ids.device())?;
        let words = self.word_embeddings.forward(input_ids)?;
        let pos = self.position_embeddings.forward(&positions)?;
        self.dropout
            .forward(&self.LayerNorm.forward(&words.broadcast_add(&pos)?)?)
    }
}

/// `attention`: q/k/v projections, scaled dot-product attention, `out_lin`.
#[derive(Debug, Clone)]
pub struct MultiHeadSelfAttention {
    q_lin: QLinear,
    k_lin: QLinear,
    v_lin: QLinear,
    out_lin: QLinear,
    n_heads: usize,
    head_dim: usize,
    dropout: Dropout,
}

impl MultiHeadSelfAttention {
    pub fn load(w: Weights, c: &DistilBertConfig) -> Result<Self> {
        let d = c.dim;
        Ok(Self {
            q_lin: linear(d, d, w.pp("q_lin"))?,
            k_lin: linear(d, d, w.pp("k_lin"))?,
            v_lin: linear(d, d, w.pp("v_lin"))?,
            out_lin: linear(d, d, w.pp("out_lin"))?,
            n_heads: c.n_heads,
            head_dim: d / c.n_heads,
            dropout: w.dropout(c.attention_dropout),
        })
    }

    /// `mask` is the additive `[batch, 1, 1, seq]` mask; Python fills masked scores
    /// with the dtype minimum, which softmax turns into the same zeros.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let q = self.q_lin.forward(x)?;
        let k = self.k_lin.forward(x)?;
        let v = self.v_lin.forward(x)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        self.out_lin.forward(&encoder_self_attention(
            &q,
            &k,
            &v,
            self.n_heads,
            mask,
            scale,
            &self.dropout,
        )?)
    }
}

/// `ffn`: `lin1` → activation → `lin2`.
#[derive(Debug, Clone)]
pub struct Ffn {
    lin1: QLinear,
    lin2: QLinear,
    act: Activation,
    dropout: Dropout,
}

impl Ffn {
    pub fn load(w: Weights, c: &DistilBertConfig) -> Result<Self> {
        Ok(Self {
            lin1: linear(c.dim, c.hidden_dim, w.pp("lin1"))?,
            lin2: linear(c.hidden_dim, c.dim, w.pp("lin2"))?,
            act: act(c)?,
            dropout: w.dropout(c.dropout),
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.lin2.forward(&self.lin1.forward_act(x, &self.act)?)?;
        self.dropout.forward(&h)
    }
}

/// One transformer block: attention + residual + `sa_layer_norm`, then FFN + residual
/// + `output_layer_norm`.
#[derive(Debug, Clone)]
pub struct TransformerBlock {
    attention: MultiHeadSelfAttention,
    sa_layer_norm: LayerNorm,
    ffn: Ffn,
    output_layer_norm: LayerNorm,
    /// The training state (the fused training op hands it the parameters' gradients).
    train: Option<std::sync::Arc<TrainMode>>,
    /// DistilBERT has no dropout after `out_lin` (the fused op's slot for one).
    no_dropout: Dropout,
}

impl TransformerBlock {
    pub fn load(w: Weights, c: &DistilBertConfig) -> Result<Self> {
        Ok(Self {
            attention: MultiHeadSelfAttention::load(w.pp("attention"), c)?,
            sa_layer_norm: LayerNorm::load(
                w.pp("sa_layer_norm").vb().clone(),
                c.dim,
                LAYER_NORM_EPS,
            )?,
            ffn: Ffn::load(w.pp("ffn"), c)?,
            output_layer_norm: LayerNorm::load(
                w.pp("output_layer_norm").vb().clone(),
                c.dim,
                LAYER_NORM_EPS,
            )?,
            train: w.train_mode(),
            no_dropout: Dropout::default(),
        })
    }

    /// The block's parts for the fused training op.
    fn fused(&self) -> PostLnEncoderLayer<'_> {
        let (at, ffn) = (&self.attention, &self.ffn);
        PostLnEncoderLayer {
            query: &at.q_lin,
            key: &at.k_lin,
            value: &at.v_lin,
            attention_output: &at.out_lin,
            attention_norm: &self.sa_layer_norm,
            intermediate: &ffn.lin1,
            activation: &ffn.act,
            output: &ffn.lin2,
            output_norm: &self.output_layer_norm,
            heads: at.n_heads,
            probs_dropout: &at.dropout,
            attention_dropout: &self.no_dropout,
            output_dropout: &ffn.dropout,
            mode: self.train.as_ref(),
        }
    }

    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        // Training: the whole block as one op with its backward pass.
        if let Some(y) = self.fused().train_forward(x, mask)? {
            return Ok(y);
        }
        let sa = self
            .sa_layer_norm
            .forward(&(self.attention.forward(x, mask)? + x)?)?;
        self.output_layer_norm
            .forward(&(self.ffn.forward(&sa)? + &sa)?)
    }
}

/// The base model: embeddings and `transformer.layer.N` blocks; no pooler.
#[derive(Debug, Clone)]
pub struct DistilBertModel {
    /// Layers recomputed in the backward pass (`gradient_checkpointing`).
    checkpointing: Option<std::sync::Arc<rustformers_core::checkpoint::Checkpointing>>,
    embeddings: Embeddings,
    layers: Vec<TransformerBlock>,
    dtype: DType,
}

impl DistilBertModel {
    /// Loads the base model from `vb` (already at the model's prefix).
    pub fn load(w: Weights, c: &DistilBertConfig) -> Result<Self> {
        let embeddings = Embeddings::load(w.pp("embeddings"), c)?;
        let layers = (0..c.n_layers)
            .map(|i| TransformerBlock::load(w.pp(format!("transformer.layer.{i}")), c))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            checkpointing: w.checkpointing(),
            embeddings,
            layers,
            dtype: w.vb().dtype(),
        })
    }

    pub fn embeddings(&self) -> &Embeddings {
        &self.embeddings
    }

    /// Runs the encoder; `token_type_ids` are ignored, as in Python.
    pub fn forward(&self, inputs: EncoderInputs<'_>) -> Result<BaseModelOutput> {
        let mut x = self.embeddings.forward(inputs.input_ids)?;
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
        Ok(BaseModelOutput {
            last_hidden_state: x,
            pooler_output: None,
        })
    }
}

impl EncoderModel for DistilBertModel {
    fn forward(&self, inputs: EncoderInputs<'_>) -> Result<BaseModelOutput> {
        DistilBertModel::forward(self, inputs)
    }
}

/// `DistilBertForSequenceClassification`: `[CLS]` hidden state → `pre_classifier` →
/// ReLU → `classifier`.
#[derive(Debug, Clone)]
pub struct DistilBertForSequenceClassification {
    distilbert: DistilBertModel,
    pre_classifier: QLinear,
    dropout: Dropout,
    classifier: QLinear,
}

impl DistilBertForSequenceClassification {
    pub fn load(w: Weights, c: &DistilBertConfig) -> Result<Self> {
        let n = num_labels(c)?;
        Ok(Self {
            distilbert: DistilBertModel::load(w.pp(BASE_MODEL_PREFIX), c)?,
            pre_classifier: linear(c.dim, c.dim, w.pp("pre_classifier"))?,
            dropout: w.dropout(c.seq_classif_dropout),
            classifier: linear(c.dim, n, w.pp("classifier"))?,
        })
    }
}

impl SequenceClassificationModel for DistilBertForSequenceClassification {
    fn forward(&self, inputs: EncoderInputs<'_>) -> Result<Tensor> {
        let out = self.distilbert.forward(inputs)?;
        let cls = out.last_hidden_state.narrow(1, 0, 1)?.squeeze(1)?;
        let x = self.pre_classifier.forward(&cls)?.relu()?;
        self.classifier.forward(&self.dropout.forward(&x)?)
    }
}

/// `DistilBertForTokenClassification`: sequence output → classifier.
#[derive(Debug, Clone)]
pub struct DistilBertForTokenClassification {
    distilbert: DistilBertModel,
    dropout: Dropout,
    classifier: QLinear,
}

impl DistilBertForTokenClassification {
    pub fn load(w: Weights, c: &DistilBertConfig) -> Result<Self> {
        let n = num_labels(c)?;
        Ok(Self {
            distilbert: DistilBertModel::load(w.pp(BASE_MODEL_PREFIX), c)?,
            dropout: w.dropout(c.dropout),
            classifier: linear(c.dim, n, w.pp("classifier"))?,
        })
    }
}

impl TokenClassificationModel for DistilBertForTokenClassification {
    fn forward(&self, inputs: EncoderInputs<'_>) -> Result<Tensor> {
        let out = self.distilbert.forward(inputs)?;
        self.classifier
            .forward(&self.dropout.forward(&out.last_hidden_state)?)
    }
}

/// `DistilBertForQuestionAnswering`: sequence output → start/end logits.
#[derive(Debug, Clone)]
pub struct DistilBertForQuestionAnswering {
    distilbert: DistilBertModel,
    qa_outputs: QLinear,
}

impl DistilBertForQuestionAnswering {
    pub fn load(w: Weights, c: &DistilBertConfig) -> Result<Self> {
        Ok(Self {
            distilbert: DistilBertModel::load(w.pp(BASE_MODEL_PREFIX), c)?,
            qa_outputs: linear(c.dim, 2, w.pp("qa_outputs"))?,
        })
    }
}

impl QuestionAnsweringModel for DistilBertForQuestionAnswering {
    fn forward(&self, inputs: EncoderInputs<'_>) -> Result<QuestionAnsweringOutput> {
        let out = self.distilbert.forward(inputs)?;
        let logits = self.qa_outputs.forward(&out.last_hidden_state)?;
        let start_logits = logits.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?;
        let end_logits = logits.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?;
        Ok(QuestionAnsweringOutput {
            start_logits,
            end_logits,
        })
    }
}

/// `DistilBertForMaskedLM`: `vocab_transform` → activation → `vocab_layer_norm` →
/// `vocab_projector` (weight tied to the word embeddings, own bias).
#[derive(Debug, Clone)]
pub struct DistilBertForMaskedLM {
    distilbert: DistilBertModel,
    vocab_transform: QLinear,
    act: Activation,
    vocab_layer_norm: LayerNorm,
    vocab_projector: QLinear,
}

impl DistilBertForMaskedLM {
    pub fn load(w: Weights, c: &DistilBertConfig) -> Result<Self> {
        let distilbert = DistilBertModel::load(w.pp(BASE_MODEL_PREFIX), c)?;
        let vocab_transform = linear(c.dim, c.dim, w.pp("vocab_transform"))?;
        let vocab_layer_norm =
            LayerNorm::load(w.pp("vocab_layer_norm").vb().clone(), c.dim, LAYER_NORM_EPS)?;
        let p = w.pp("vocab_projector");
        let weight = if c.base.tie_word_embeddings() {
            distilbert.embeddings().word_embeddings()?
        } else {
            p.vb().get((c.vocab_size, c.dim), "weight")?
        };
        let bias = p.vb().get(c.vocab_size, "bias")?;
        Ok(Self {
            distilbert,
            vocab_transform,
            act: act(c)?,
            vocab_layer_norm,
            vocab_projector: QLinear::new(weight, Some(bias)),
        })
    }
}

impl MaskedLmModel for DistilBertForMaskedLM {
    fn forward(&self, inputs: EncoderInputs<'_>) -> Result<Tensor> {
        let out = self.distilbert.forward(inputs)?;
        let h = self.vocab_transform.forward(&out.last_hidden_state)?;
        let h = self.act.forward(&h)?;
        let h = self.vocab_layer_norm.forward(&h)?;
        self.vocab_projector.forward(&h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn sinusoidal_table_matches_definition() {
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        let t = sinusoidal_position_table(4, 6, &vb)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(t[0], vec![0.0, 1.0, 0.0, 1.0, 0.0, 1.0]);
        let a = 3.0f64 / 10000f64.powf(2.0 / 6.0);
        assert!((t[3][2] as f64 - a.sin()).abs() < 1e-6);
        assert!((t[3][3] as f64 - a.cos()).abs() < 1e-6);
    }
}
