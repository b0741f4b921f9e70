//! `SuppressTokensLogitsProcessor` (these tokens are never generated) and
//! `SuppressTokensAtBeginLogitsProcessor` (these tokens are not generated first).

use super::{ban, LogitsProcessor};

#[derive(Debug, Clone)]
pub struct SuppressTokens(Vec<u32>);

impl SuppressTokens {
    pub fn new(tokens: Vec<u32>) -> Self {
        Self(tokens)
    }
}

impl LogitsProcessor for SuppressTokens {
    fn process(&self, _tokens: &[u32], _new: usize, scores: &mut [f32]) {
        ban(scores, &self.0);
    }
}

/// Bans its tokens at the first generation step only.
#[derive(Debug, Clone)]
pub struct SuppressTokensAtBegin(Vec<u32>);

impl SuppressTokensAtBegin {
    pub fn new(tokens: Vec<u32>) -> Self {
        Self(tokens)
    }
}

impl LogitsProcessor for SuppressTokensAtBegin {
    fn process(&self, _tokens: &[u32], new: usize, scores: &mut [f32]) {
        if new == 0 {
            ban(scores, &self.0);
        }
    }
}
