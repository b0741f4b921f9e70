//! `TopKLogitsWarper`: keeps the `k` highest scores (ties with the k-th kept).

use super::LogitsProcessor;

#[derive(Debug, Clone)]
pub struct TopK {
    k: usize,
    min_keep: usize,
}

impl TopK {
    pub fn new(k: usize, min_keep: usize) -> Self {
        Self { k, min_keep }
    }
}

impl LogitsProcessor for TopK {
    fn process(&self, _tokens: &[u32], _new: usize, scores: &mut [f32]) {
        let k = self.k.max(self.min_keep).min(scores.len());
        if k == 0 || k == scores.len() {
            return;
        }
        let mut sorted = scores.to_vec();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let threshold = sorted[k - 1];
        for s in scores.iter_mut() {
            if *s < threshold {
                *s = f32::NEG_INFINITY;
            }
        }
    }
}
