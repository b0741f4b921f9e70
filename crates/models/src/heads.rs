//! Heads that are generic over a base model, as Python's are
//! (`GenericForSequenceClassification` in transformers 5.25, modeling_layers.py): a family
//! gets them by implementing [`DecoderBaseModel`] for its base model, and declares
//! `pub type XForSequenceClassification = ForSequenceClassification<XModel>;`.

use candle_core::{DType, Result, Tensor};

use rustformers_core::kv_cache::KvCache;
use rustformers_core::linear::{QLinear, Weights};

use crate::family::FamilyConfig;
use crate::traits::{CausalLmInputs, EncoderInputs, SequenceClassificationModel};

/// A decoder's base model (the stack under `base_model_prefix`): hidden states after the
/// final norm.
pub trait DecoderBaseModel: Sized + Send + Sync {
    type Config: FamilyConfig;
    /// Python's `base_model_prefix` (`model`, GPT-2's `transformer`).
    const PREFIX: &'static str;
    fn load(w: Weights, c: &Self::Config) -> Result<Self>;
    /// Hidden states `[batch, seq, hidden]`.
    fn forward(&self, inputs: CausalLmInputs<'_>, cache: Option<&mut KvCache>) -> Result<Tensor>;
}

fn msg(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// `XForSequenceClassification`: `score` (no bias) on the rightmost token of each row
/// that is not `pad_token_id` (either padding side); without a pad id, the last token,
/// and only one row.
#[derive(Debug, Clone)]
pub struct ForSequenceClassification<M> {
    model: M,
    score: QLinear,
    /// config.json's (a negative one matches no token: every row pools its last).
    pad_token_id: Option<i64>,
}

impl<M: DecoderBaseModel> ForSequenceClassification<M> {
    pub fn load(w: Weights, c: &M::Config) -> Result<Self> {
        let n = c.base().num_labels().map_err(msg)?;
        Ok(Self {
            model: M::load(w.pp(M::PREFIX), c)?,
            score: w.pp("score").linear(c.hidden_size(), n, false)?,
            pad_token_id: c.base().pad_token_id,
        })
    }

    /// Logits `[batch, num_labels]`.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        let h = self.model.forward(
            CausalLmInputs {
                input_ids,
                attention_mask,
                position_ids: None,
            },
            None,
        )?;
        let logits = self.score.forward(&h)?;
        let (b, s) = input_ids.dims2()?;
        let ids = input_ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        let mut rows = Vec::with_capacity(b);
        for (i, row) in ids.iter().enumerate() {
            let last = match self.pad_token_id {
                // Python: argmax(arange * (ids != pad)): 0 for a row of padding alone.
                Some(p) => row.iter().rposition(|t| i64::from(*t) != p).unwrap_or(0),
                None if b > 1 => candle_core::bail!(
                    "a batch of more than one row needs pad_token_id in config.json"
                ),
                None => s - 1,
            };
            rows.push(logits.get(i)?.get(last)?);
        }
        Tensor::stack(&rows, 0)?.to_dtype(DType::F32)
    }
}

impl<M: DecoderBaseModel> SequenceClassificationModel for ForSequenceClassification<M> {
    /// Token types are not used by decoders.
    fn forward(&self, inputs: EncoderInputs<'_>) -> Result<Tensor> {
        ForSequenceClassification::forward(self, inputs.input_ids, inputs.attention_mask)
    }
}
