//! Logits processors: one small type per file, composed in a list as in Python's
//! `LogitsProcessorList` (transformers 4.46, generation/logits_process.py). Each works
//! on one row of scores (f32, the vocabulary) given the row's tokens so far; filtered
//! entries become `-inf`.

mod bad_words;
mod epsilon;
mod eta;
mod min_length;
mod min_new_tokens;
mod min_p;
mod no_repeat_ngram;
mod openai_penalties;
mod repetition_penalty;
mod suppress_tokens;
mod temperature;
mod top_k;
mod top_p;
mod typical;

pub use bad_words::NoBadWords;
pub use epsilon::Epsilon;
pub use eta::Eta;
pub use min_length::MinLength;
pub use min_new_tokens::MinNewTokens;
pub use min_p::MinP;
pub use no_repeat_ngram::NoRepeatNGram;
pub use openai_penalties::OpenAiPenalties;
pub use repetition_penalty::RepetitionPenalty;
pub use suppress_tokens::{SuppressTokens, SuppressTokensAtBegin};
pub use temperature::Temperature;
pub use top_k::TopK;
pub use top_p::TopP;
pub use typical::Typical;

use crate::config::GenerationConfig;

/// Changes one row of next-token scores.
pub trait LogitsProcessor: Send + Sync + std::fmt::Debug {
    /// `tokens`: the row's tokens so far (prompt and generated, no padding);
    /// `new_tokens`: how many of them were generated.
    fn process(&self, tokens: &[u32], new_tokens: usize, scores: &mut [f32]);
}

/// Applies `processors` in order.
pub fn apply(
    processors: &[Box<dyn LogitsProcessor>],
    tokens: &[u32],
    new_tokens: usize,
    scores: &mut [f32],
) {
    for p in processors {
        p.process(tokens, new_tokens, scores);
    }
}

/// Softmax in f32 with max shift (the sum is accumulated in f64); `-inf` entries get
/// probability 0; an all `-inf` row gives zeros.
pub fn softmax(x: &[f32]) -> Vec<f32> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY || max.is_nan() {
        return vec![0.0; x.len()];
    }
    let e: Vec<f32> = x.iter().map(|v| (v - max).exp()).collect();
    let s: f64 = e.iter().map(|v| *v as f64).sum();
    let inv = (1.0 / s) as f32;
    e.iter().map(|v| v * inv).collect()
}

/// `log_softmax` in f32: `x - (max + ln(sum(exp(x - max))))`, the sum accumulated in f64.
pub fn log_softmax(x: &[f32]) -> Vec<f32> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY || max.is_nan() {
        return vec![f32::NEG_INFINITY; x.len()];
    }
    let s: f64 = x.iter().map(|v| ((v - max).exp()) as f64).sum();
    let shift = max + (s.ln() as f32);
    x.iter().map(|v| v - shift).collect()
}

/// The `k`-th largest value (`k` clamped to 1..=len), as `torch.topk(x, k)[0][-1]`.
pub(crate) fn kth_largest(x: &[f32], k: usize) -> f32 {
    if x.is_empty() {
        return f32::NEG_INFINITY;
    }
    let k = k.clamp(1, x.len());
    let mut v = x.to_vec();
    let (_, kth, _) = v.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    *kth
}

/// Sets the scores of `tokens` (those inside the vocabulary) to `-inf`.
pub(crate) fn ban(scores: &mut [f32], tokens: &[u32]) {
    for &t in tokens {
        if let Some(s) = scores.get_mut(t as usize) {
            *s = f32::NEG_INFINITY;
        }
    }
}

/// How many top tokens the sampling warpers always keep: 1, or with beam sampling the
/// number of eos ids + 1 (so one non-eos continuation survives), as Python.
pub fn min_tokens_to_keep(c: &GenerationConfig) -> usize {
    if c.num_beams > 1 {
        match &c.eos_token_id {
            Some(_) => c.eos_ids().len() + 1,
            None => 2,
        }
    } else {
        1
    }
}

/// The processors a config asks for, in Python's order (`_get_logits_processor`):
/// penalties and bans first, then (when sampling) the warpers.
pub fn from_config(c: &GenerationConfig) -> Vec<Box<dyn LogitsProcessor>> {
    let mut out = processors(c);
    out.extend(warpers(c));
    out
}

/// The penalties and bans a config asks for (applied before the warpers).
pub fn processors(c: &GenerationConfig) -> Vec<Box<dyn LogitsProcessor>> {
    let mut out: Vec<Box<dyn LogitsProcessor>> = Vec::new();
    let eos = c.eos_ids();
    if c.repetition_penalty != 1.0 {
        out.push(Box::new(RepetitionPenalty::new(
            c.repetition_penalty as f32,
        )));
    }
    if c.presence_penalty != 0.0 || c.frequency_penalty != 0.0 {
        out.push(Box::new(OpenAiPenalties::new(
            c.presence_penalty as f32,
            c.frequency_penalty as f32,
        )));
    }
    if c.no_repeat_ngram_size > 0 {
        out.push(Box::new(NoRepeatNGram::new(c.no_repeat_ngram_size)));
    }
    if let Some(bad) = &c.bad_words_ids {
        out.push(Box::new(NoBadWords::new(bad.clone(), &eos)));
    }
    if !eos.is_empty() && c.min_length > 0 {
        out.push(Box::new(MinLength::new(c.min_length, eos.clone())));
    }
    if let Some(min_new) = c.min_new_tokens.filter(|m| *m > 0) {
        if !eos.is_empty() {
            out.push(Box::new(MinNewTokens::new(min_new, eos.clone())));
        }
    }
    if let Some(s) = &c.suppress_tokens {
        out.push(Box::new(SuppressTokens::new(s.clone())));
    }
    if let Some(s) = &c.begin_suppress_tokens {
        out.push(Box::new(SuppressTokensAtBegin::new(s.clone())));
    }
    out
}

/// The sampling warpers a config asks for (none without `do_sample`).
pub fn warpers(c: &GenerationConfig) -> Vec<Box<dyn LogitsProcessor>> {
    let mut out: Vec<Box<dyn LogitsProcessor>> = Vec::new();
    if c.do_sample {
        let keep = min_tokens_to_keep(c);
        if c.temperature != 1.0 {
            out.push(Box::new(Temperature::new(c.temperature as f32)));
        }
        if c.top_k != 0 {
            out.push(Box::new(TopK::new(c.top_k, keep)));
        }
        if c.top_p < 1.0 {
            out.push(Box::new(TopP::new(c.top_p, keep)));
        }
        if let Some(m) = c.min_p {
            out.push(Box::new(MinP::new(m, keep)));
        }
        if c.typical_p < 1.0 {
            out.push(Box::new(Typical::new(c.typical_p, keep)));
        }
        if c.epsilon_cutoff > 0.0 && c.epsilon_cutoff < 1.0 {
            out.push(Box::new(Epsilon::new(c.epsilon_cutoff, keep)));
        }
        if c.eta_cutoff > 0.0 && c.eta_cutoff < 1.0 {
            out.push(Box::new(Eta::new(c.eta_cutoff, keep)));
        }
    }
    out
}
