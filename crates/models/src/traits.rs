//! The small trait set pipelines program against. Each trait is one task's forward
//! signature; model families implement the ones they have heads for.

use candle_core::Tensor;

/// Inputs of an encoder forward pass. `input_ids`, `attention_mask` and
/// `token_type_ids` are `[batch, seq]` u32 tensors.
#[derive(Debug, Clone, Copy)]
pub struct EncoderInputs<'a> {
    pub input_ids: &'a Tensor,
    pub attention_mask: Option<&'a Tensor>,
    pub token_type_ids: Option<&'a Tensor>,
}

impl<'a> EncoderInputs<'a> {
    /// Inputs with only ids (all tokens attended, token type 0).
    pub fn ids(input_ids: &'a Tensor) -> Self {
        Self {
            input_ids,
            attention_mask: None,
            token_type_ids: None,
        }
    }
}

/// Output of a base encoder.
#[derive(Debug, Clone)]
pub struct BaseModelOutput {
    /// `[batch, seq, hidden]`.
    pub last_hidden_state: Tensor,
    /// `[batch, hidden]`, for models with a pooler.
    pub pooler_output: Option<Tensor>,
}

/// Output of a question-answering head: `[batch, seq]` logits each.
#[derive(Debug, Clone)]
pub struct QuestionAnsweringOutput {
    pub start_logits: Tensor,
    pub end_logits: Tensor,
}

/// A base encoder (Python's `AutoModel` for encoder families).
pub trait EncoderModel: Send + Sync {
    fn forward(&self, inputs: EncoderInputs<'_>) -> candle_core::Result<BaseModelOutput>;
}

/// A sequence classification head: logits `[batch, num_labels]`.
pub trait SequenceClassificationModel: Send + Sync {
    fn forward(&self, inputs: EncoderInputs<'_>) -> candle_core::Result<Tensor>;
}

/// A token classification head: logits `[batch, seq, num_labels]`.
pub trait TokenClassificationModel: Send + Sync {
    fn forward(&self, inputs: EncoderInputs<'_>) -> candle_core::Result<Tensor>;
}

/// An extractive question-answering head.
pub trait QuestionAnsweringModel: Send + Sync {
    fn forward(&self, inputs: EncoderInputs<'_>) -> candle_core::Result<QuestionAnsweringOutput>;
}

/// A masked language model head: logits `[batch, seq, vocab]`.
pub trait MaskedLmModel: Send + Sync {
    fn forward(&self, inputs: EncoderInputs<'_>) -> candle_core::Result<Tensor>;
}

/// Token types, defaulting to zeros shaped like the ids.
pub fn token_types_or_zeros(inputs: &EncoderInputs<'_>) -> candle_core::Result<Tensor> {
    match inputs.token_type_ids {
        Some(t) => Ok(t.clone()),
        None => inputs.input_ids.zeros_like(),
    }
}

/// Inputs of a causal-LM forward pass.
#[derive(Debug, Clone, Copy)]
pub struct CausalLmInputs<'a> {
    /// `[batch, seq]` new tokens (u32).
    pub input_ids: &'a Tensor,
    /// `[batch, past + seq]` 0/1 mask over the cached and the new positions (left padding).
    pub attention_mask: Option<&'a Tensor>,
    /// `[batch, seq]` positions of the new tokens; default `past .. past + seq`.
    pub position_ids: Option<&'a Tensor>,
}

impl<'a> CausalLmInputs<'a> {
    pub fn ids(input_ids: &'a Tensor) -> Self {
        Self {
            input_ids,
            attention_mask: None,
            position_ids: None,
        }
    }
}

/// Which positions get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsMode {
    /// Every position (loss, perplexity).
    All,
    /// The last position only (decoding).
    Last,
}

impl LogitsMode {
    /// The positions of `[batch, seq, hidden]` hidden states that get logits.
    pub fn select(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::All => Ok(hidden.clone()),
            Self::Last => {
                let s = hidden.dim(1)?;
                hidden.narrow(1, s.saturating_sub(1), 1)
            }
        }
    }
}

/// A decoder-only language model (`AutoModelForCausalLM`).
pub trait CausalLanguageModel: Send + Sync {
    /// Logits `[batch, seq or 1, vocab]` (f32). With a cache, the new keys and values are
    /// appended and earlier positions are not recomputed.
    fn forward(
        &self,
        inputs: CausalLmInputs<'_>,
        cache: Option<&mut rustformers_core::kv_cache::KvCache>,
        logits: LogitsMode,
    ) -> candle_core::Result<Tensor>;

    /// An empty cache for this model holding up to `capacity` positions (default: the
    /// model's context length).
    fn new_cache(&self, capacity: Option<usize>) -> rustformers_core::kv_cache::KvCache;

    /// The model's context length (`max_position_embeddings`).
    fn max_context(&self) -> usize;

    /// Vocabulary size of the logits.
    fn vocab_size(&self) -> usize;

    /// Whether a cached step of `new` positions after `past` cached ones must instead
    /// recompute the whole sequence with an empty cache (Phi-3's longrope switching to
    /// its long factors: Python's `prepare_inputs_for_generation` drops the cache there).
    fn recompute_cache(&self, _past: usize, _new: usize) -> bool {
        false
    }
}
