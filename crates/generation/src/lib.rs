//! rustformers generation: `GenerationConfig` (+ generation_config.json), one file per
//! logits processor, stopping criteria, greedy search, sampling and beam search over
//! left-padded batches with the KV cache, a step-by-step `Generator` with a token
//! iterator, and UTF-8-safe streaming.

mod beam;
pub mod config;
pub mod continuous;
pub mod generate;
pub mod processors;
pub mod sampling;
pub mod stopping;
pub mod streamer;

pub use config::{unread_config_keys, EarlyStopping, GenerationConfig};
pub use continuous::{
    BatchEvent, ContinuousBatcher, FinishReason, SeqId, SequenceOptions, TokenLogprobs,
};
pub use generate::{generate, GenerateOutput, Generator, TokenCallback, TokenStream};
pub use stopping::{EosToken, MaxLength, StopStrings, StoppingCriteria};
pub use streamer::TextStreamer;

/// Index of the largest value, the first on ties (torch.argmax).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best
}
