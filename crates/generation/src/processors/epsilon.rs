//! `EpsilonLogitsWarper` (epsilon sampling): drops tokens whose probability is below
//! `epsilon`, keeping at least the `min_keep` most likely.

use super::{kth_largest, softmax, LogitsProcessor};

#[derive(Debug, Clone)]
pub struct Epsilon {
    epsilon: f32,
    min_keep: usize,
}

impl Epsilon {
    pub fn new(epsilon: f64, min_keep: usize) -> Self {
        Self {
            epsilon: epsilon as f32,
            min_keep,
        }
    }
}

impl LogitsProcessor for Epsilon {
    fn process(&self, _tokens: &[u32], _new: usize, scores: &mut [f32]) {
        let probs = softmax(scores);
        let keep_above = kth_largest(scores, self.min_keep);
        for (s, p) in scores.iter_mut().zip(&probs) {
            if *p < self.epsilon && *s < keep_above {
                *s = f32::NEG_INFINITY;
            }
        }
    }
}
