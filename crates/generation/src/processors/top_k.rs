//! `TopKLogitsWarper`: keeps the `k` highest scores (ties with the k-th kept).

use super::{kth_largest, LogitsProcessor};

#[derive(Debug, Clone)]
pub struct TopK {
    k: usize,
}

impl TopK {
    /// `k` is raised to `min_keep` as Python does.
    pub fn new(k: usize, min_keep: usize) -> Self {
        Self { k: k.max(min_keep) }
    }
}

impl LogitsProcessor for TopK {
    fn process(&self, _tokens: &[u32], _new: usize, scores: &mut [f32]) {
        if self.k == 0 || self.k >= scores.len() {
            return;
        }
        let threshold = kth_largest(scores, self.k);
        for s in scores.iter_mut() {
            if *s < threshold {
                *s = f32::NEG_INFINITY;
            }
        }
    }
}
