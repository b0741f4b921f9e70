//! `NoRepeatNGramLogitsProcessor`: bans tokens that would repeat an n-gram already in
//! the sequence.

use super::LogitsProcessor;

#[derive(Debug, Clone)]
pub struct NoRepeatNGram(usize);

impl NoRepeatNGram {
    pub fn new(n: usize) -> Self {
        Self(n)
    }
}

impl LogitsProcessor for NoRepeatNGram {
    fn process(&self, tokens: &[u32], _new: usize, scores: &mut [f32]) {
        let n = self.0;
        if n == 0 || tokens.len() + 1 < n {
            return;
        }
        let prefix = &tokens[tokens.len() + 1 - n..];
        for w in tokens.windows(n) {
            if &w[..n - 1] == prefix {
                if let Some(s) = scores.get_mut(w[n - 1] as usize) {
                    *s = f32::NEG_INFINITY;
                }
            }
        }
    }
}
