//! Streaming: tokens turn into text as they are generated; a character that spans
//! several tokens is held back until complete, so every piece is valid UTF-8.

use rustformers_core::{AutoTokenizer, Result};

/// Turns one row's tokens into text deltas.
pub struct TextStreamer<'a> {
    tokenizer: &'a AutoTokenizer,
    skip_special_tokens: bool,
    tokens: Vec<u32>,
    emitted: usize,
}

impl<'a> TextStreamer<'a> {
    pub fn new(tokenizer: &'a AutoTokenizer, skip_special_tokens: bool) -> Self {
        Self {
            tokenizer,
            skip_special_tokens,
            tokens: Vec::new(),
            emitted: 0,
        }
    }

    /// Adds a token; returns the new text it completes (possibly empty).
    pub fn push(&mut self, token: u32) -> Result<String> {
        self.tokens.push(token);
        let text = self
            .tokenizer
            .decode(&self.tokens, self.skip_special_tokens)?;
        // An incomplete multi-byte character decodes to U+FFFD: wait for the rest.
        if text.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        Ok(self.take_from(&text))
    }

    /// Whatever is left at the end (an incomplete character is given as decoded).
    pub fn finish(&mut self) -> Result<String> {
        let text = self
            .tokenizer
            .decode(&self.tokens, self.skip_special_tokens)?;
        Ok(self.take_from(&text))
    }

    fn take_from(&mut self, text: &str) -> String {
        // Decoding more tokens can change earlier text (cleanup of spaces); emit only
        // what extends what was emitted, at a char boundary.
        let mut start = self.emitted.min(text.len());
        while start > 0 && !text.is_char_boundary(start) {
            start -= 1;
        }
        let delta = text[start..].to_string();
        self.emitted = text.len();
        delta
    }
}
