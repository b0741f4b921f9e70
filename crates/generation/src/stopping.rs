//! Stopping criteria, as Python's `StoppingCriteriaList` (generation/stopping_criteria.py):
//! after each generated token every criterion looks at the row, and the row stops when
//! any of them says so. `generate()` always has [`MaxLength`] and, when the config has
//! eos ids, [`EosToken`]; [`StopStrings`] comes with `stop_strings` and a tokenizer.

use rustformers_core::{AutoTokenizer, Result};

/// Decides whether a row is done.
pub trait StoppingCriteria: Send {
    /// `tokens`: the row's tokens (prompt then generated, no padding); `new_tokens`: how
    /// many of them were generated (at least 1). True stops the row.
    fn should_stop(&self, tokens: &[u32], new_tokens: usize) -> Result<bool>;
}

/// `MaxLengthCriteria`: stops once `max_new_tokens` were generated (Python's
/// `max_length` counts the longest, padded prompt; `generate()` converts it so).
#[derive(Debug, Clone)]
pub struct MaxLength {
    pub max_new_tokens: usize,
}

impl MaxLength {
    pub fn new(max_new_tokens: usize) -> Self {
        Self { max_new_tokens }
    }
}

impl StoppingCriteria for MaxLength {
    fn should_stop(&self, _tokens: &[u32], new_tokens: usize) -> Result<bool> {
        Ok(new_tokens >= self.max_new_tokens)
    }
}

/// `EosTokenCriteria`: stops when the last generated token is one of the eos ids.
#[derive(Debug, Clone)]
pub struct EosToken {
    pub eos: Vec<u32>,
}

impl EosToken {
    pub fn new(eos: Vec<u32>) -> Self {
        Self { eos }
    }
}

impl StoppingCriteria for EosToken {
    fn should_stop(&self, tokens: &[u32], new_tokens: usize) -> Result<bool> {
        Ok(new_tokens > 0 && tokens.last().is_some_and(|t| self.eos.contains(t)))
    }
}

type Decoder<'a> = Box<dyn Fn(&[u32]) -> Result<String> + Send + Sync + 'a>;

/// `StopStringCriteria`, by text: the row's generated tokens are decoded (special tokens
/// kept) and the row stops when the text contains one of the stop strings. The token
/// that completes a stop string is kept, as in Python.
///
/// Python matches stop strings against the token strings at the end of the sequence
/// (so a stop string may start in the prompt); here only the generated text counts.
pub struct StopStrings<'a> {
    stops: Vec<String>,
    decode: Decoder<'a>,
}

impl std::fmt::Debug for StopStrings<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopStrings")
            .field("stops", &self.stops)
            .finish_non_exhaustive()
    }
}

impl<'a> StopStrings<'a> {
    /// Stop strings decoded with `tokenizer`.
    pub fn new(stops: Vec<String>, tokenizer: &'a AutoTokenizer) -> Self {
        Self::with_decoder(stops, move |ids| tokenizer.decode(ids, false))
    }

    /// Stop strings with any decoding function (tokens → text).
    pub fn with_decoder(
        stops: Vec<String>,
        decode: impl Fn(&[u32]) -> Result<String> + Send + Sync + 'a,
    ) -> Self {
        let stops: Vec<String> = stops.into_iter().filter(|s| !s.is_empty()).collect();
        Self {
            stops,
            decode: Box::new(decode),
        }
    }
}

impl StoppingCriteria for StopStrings<'_> {
    fn should_stop(&self, tokens: &[u32], new_tokens: usize) -> Result<bool> {
        if self.stops.is_empty() || new_tokens == 0 {
            return Ok(false);
        }
        let generated = &tokens[tokens.len().saturating_sub(new_tokens)..];
        let text = (self.decode)(generated)?;
        Ok(self.stops.iter().any(|s| text.contains(s.as_str())))
    }
}
