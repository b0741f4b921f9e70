//! `MinNewTokensLengthLogitsProcessor`: eos is banned until `min_new_tokens` tokens were
//! generated.

use super::{ban, LogitsProcessor};

#[derive(Debug, Clone)]
pub struct MinNewTokens {
    min_new: usize,
    eos: Vec<u32>,
}

impl MinNewTokens {
    pub fn new(min_new: usize, eos: Vec<u32>) -> Self {
        Self { min_new, eos }
    }
}

impl LogitsProcessor for MinNewTokens {
    fn process(&self, _tokens: &[u32], new: usize, scores: &mut [f32]) {
        if new < self.min_new {
            ban(scores, &self.eos);
        }
    }
}
