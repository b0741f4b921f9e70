//! `TopPLogitsWarper` (nucleus): in ascending order of score, drops the tokens whose
//! cumulative probability is at most `1 - top_p`, always keeping the `min_keep` highest.

use super::{softmax, LogitsProcessor};

#[derive(Debug, Clone)]
pub struct TopP {
    /// `1 - top_p`, computed in f64 and compared in f32 as torch does with a Python float.
    threshold: f32,
    min_keep: usize,
}

impl TopP {
    pub fn new(p: f64, min_keep: usize) -> Self {
        Self {
            threshold: (1.0 - p) as f32,
            min_keep,
        }
    }
}

impl LogitsProcessor for TopP {
    fn process(&self, _tokens: &[u32], _new: usize, scores: &mut [f32]) {
        let n = scores.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|a, b| scores[*a].total_cmp(&scores[*b]));
        let sorted: Vec<f32> = order.iter().map(|&i| scores[i]).collect();
        let probs = softmax(&sorted);
        // torch.cumsum on CPU accumulates f32 in f64 and rounds each partial sum.
        let mut cum = 0.0f64;
        let removable = n.saturating_sub(self.min_keep);
        let mut remove = Vec::new();
        for (rank, p) in probs.iter().enumerate() {
            cum += *p as f64;
            if rank < removable && (cum as f32) <= self.threshold {
                remove.push(order[rank]);
            }
        }
        for i in remove {
            scores[i] = f32::NEG_INFINITY;
        }
    }
}
