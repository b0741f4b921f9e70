//! Logits processors: one small type per file, composed in a list as in Python's
//! `LogitsProcessorList` (transformers 4.46, generation/logits_process.py). Each works
//! on one row of scores (f32, the vocabulary) given the row's tokens so far.

mod bad_words;
mod min_new_tokens;
mod min_p;
mod no_repeat_ngram;
mod repetition_penalty;
mod temperature;
mod top_k;
mod top_p;
mod typical;

pub use bad_words::NoBadWords;
pub use min_new_tokens::MinNewTokens;
pub use min_p::MinP;
pub use no_repeat_ngram::NoRepeatNGram;
pub use repetition_penalty::RepetitionPenalty;
pub use temperature::Temperature;
pub use top_k::TopK;
pub use top_p::TopP;
pub use typical::Typical;

use crate::config::GenerationConfig;

/// Changes one row of next-token scores.
pub trait LogitsProcessor: Send + Sync + std::fmt::Debug {
    /// `tokens`: the row's tokens so far (prompt and generated, no padding);
    /// `new_tokens`: how many were generated.
    fn process(&self, tokens: &[u32], new_tokens: usize, scores: &mut [f32]);
}

/// Softmax in f32 with max shift; `-inf` entries get probability 0.
pub fn softmax(x: &[f32]) -> Vec<f32> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return vec![0.0; x.len()];
    }
    let e: Vec<f32> = x.iter().map(|v| (v - max).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// The processors a config asks for, in Python's order: penalties and bans first, then
/// (when sampling) the warpers.
pub fn from_config(c: &GenerationConfig) -> Vec<Box<dyn LogitsProcessor>> {
    let mut out: Vec<Box<dyn LogitsProcessor>> = Vec::new();
    let eos = c.eos_ids();
    if c.repetition_penalty != 1.0 {
        out.push(Box::new(RepetitionPenalty::new(
            c.repetition_penalty as f32,
        )));
    }
    if c.no_repeat_ngram_size > 0 {
        out.push(Box::new(NoRepeatNGram::new(c.no_repeat_ngram_size)));
    }
    if let Some(bad) = &c.bad_words_ids {
        out.push(Box::new(NoBadWords::new(bad.clone(), &eos)));
    }
    if !eos.is_empty() {
        out.push(Box::new(MinNewTokens::new(
            c.min_new_tokens.unwrap_or(0),
            c.min_length,
            eos,
        )));
    }
    if c.do_sample {
        let keep = if c.num_beams > 1 { 2 } else { 1 };
        if c.temperature != 1.0 {
            out.push(Box::new(Temperature::new(c.temperature as f32)));
        }
        if c.top_k != 0 {
            out.push(Box::new(TopK::new(c.top_k, keep)));
        }
        if c.top_p < 1.0 {
            out.push(Box::new(TopP::new(c.top_p as f32, keep)));
        }
        if let Some(m) = c.min_p {
            out.push(Box::new(MinP::new(m as f32, keep)));
        }
        if c.typical_p < 1.0 {
            out.push(Box::new(Typical::new(c.typical_p as f32, keep)));
        }
    }
    out
}
