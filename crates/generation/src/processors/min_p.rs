//! `MinPLogitsWarper`: drops tokens whose probability is below `min_p` × the top one,
//! keeping at least the `min_keep` highest.

use super::{softmax, LogitsProcessor};

#[derive(Debug, Clone)]
pub struct MinP {
    p: f32,
    min_keep: usize,
}

impl MinP {
    pub fn new(p: f64, min_keep: usize) -> Self {
        Self {
            p: p as f32,
            min_keep,
        }
    }
}

impl LogitsProcessor for MinP {
    fn process(&self, _tokens: &[u32], _new: usize, scores: &mut [f32]) {
        let probs = softmax(scores);
        let top = probs.iter().copied().fold(0.0f32, f32::max);
        let threshold = self.p * top;
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]));
        for (rank, &i) in order.iter().enumerate() {
            if rank >= self.min_keep && probs[i] < threshold {
                scores[i] = f32::NEG_INFINITY;
            }
        }
    }
}
