//! `TopPLogitsWarper` (nucleus): drops the lowest-probability tokens whose cumulative
//! probability (ascending order) is at most `1 - top_p`.

use super::{softmax, LogitsProcessor};

#[derive(Debug, Clone)]
pub struct TopP {
    p: f32,
    min_keep: usize,
}

impl TopP {
    pub fn new(p: f32, min_keep: usize) -> Self {
        Self { p, min_keep }
    }
}

impl LogitsProcessor for TopP {
    fn process(&self, _tokens: &[u32], _new: usize, scores: &mut [f32]) {
        let n = scores.len();
        let mut order: Vec<usize> = (0..n).collect();
        // Ascending, stable (torch.sort ascending).
        order.sort_by(|a, b| scores[*a].total_cmp(&scores[*b]));
        let sorted: Vec<f32> = order.iter().map(|&i| scores[i]).collect();
        let probs = softmax(&sorted);
        let mut cum = 0.0f32;
        let mut remove = Vec::new();
        for (rank, p) in probs.iter().enumerate() {
            cum += p;
            if cum <= 1.0 - self.p && rank < n.saturating_sub(self.min_keep) {
                remove.push(order[rank]);
            }
        }
        for i in remove {
            scores[i] = f32::NEG_INFINITY;
        }
    }
}
