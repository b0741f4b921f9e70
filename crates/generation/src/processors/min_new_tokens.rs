//! `MinLengthLogitsProcessor` + `MinNewTokensLengthLogitsProcessor`: eos is banned until
//! enough tokens exist.

use super::LogitsProcessor;

#[derive(Debug, Clone)]
pub struct MinNewTokens {
    min_new: usize,
    min_length: usize,
    eos: Vec<u32>,
}

impl MinNewTokens {
    pub fn new(min_new: usize, min_length: usize, eos: Vec<u32>) -> Self {
        Self {
            min_new,
            min_length,
            eos,
        }
    }
}

impl LogitsProcessor for MinNewTokens {
    fn process(&self, tokens: &[u32], new: usize, scores: &mut [f32]) {
        if new < self.min_new || tokens.len() < self.min_length {
            for &e in &self.eos {
                if let Some(s) = scores.get_mut(e as usize) {
                    *s = f32::NEG_INFINITY;
                }
            }
        }
    }
}
