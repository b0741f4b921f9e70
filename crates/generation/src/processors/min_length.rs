//! `MinLengthLogitsProcessor`: eos is banned while the sequence is shorter than
//! `min_length` tokens (prompt included).
//!
//! Python counts `input_ids.shape[-1]`, which in a left-padded batch includes the
//! padding; here the row's own length counts (the same for a single prompt).

use super::{ban, LogitsProcessor};

#[derive(Debug, Clone)]
pub struct MinLength {
    min_length: usize,
    eos: Vec<u32>,
}

impl MinLength {
    pub fn new(min_length: usize, eos: Vec<u32>) -> Self {
        Self { min_length, eos }
    }
}

impl LogitsProcessor for MinLength {
    fn process(&self, tokens: &[u32], _new: usize, scores: &mut [f32]) {
        if tokens.len() < self.min_length {
            ban(scores, &self.eos);
        }
    }
}
