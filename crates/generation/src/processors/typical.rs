//! `TypicalLogitsWarper` (locally typical sampling): keeps the tokens whose surprisal is
//! closest to the entropy until their probability mass reaches `mass`.

use super::{log_softmax, softmax, LogitsProcessor};

#[derive(Debug, Clone)]
pub struct Typical {
    mass: f32,
    min_keep: usize,
}

impl Typical {
    pub fn new(mass: f64, min_keep: usize) -> Self {
        Self {
            mass: mass as f32,
            min_keep,
        }
    }
}

impl LogitsProcessor for Typical {
    fn process(&self, _tokens: &[u32], _new: usize, scores: &mut [f32]) {
        let n = scores.len();
        if n == 0 {
            return;
        }
        let logp = log_softmax(scores);
        // nansum: -inf × 0 terms are NaN and skipped.
        let entropy: f32 = -logp
            .iter()
            .map(|l| l * l.exp())
            .filter(|x| !x.is_nan())
            .sum::<f32>();
        let shifted: Vec<f32> = logp.iter().map(|l| (-l - entropy).abs()).collect();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|a, b| shifted[*a].total_cmp(&shifted[*b]));
        let sorted_logits: Vec<f32> = order.iter().map(|&i| scores[i]).collect();
        let sorted_probs = softmax(&sorted_logits);
        let mut cum = 0.0f64;
        let mut last = 0usize;
        for p in &sorted_probs {
            cum += *p as f64;
            if (cum as f32) < self.mass {
                last += 1;
            }
        }
        let limit = shifted[order[last.min(n - 1)]];
        for (rank, &i) in order.iter().enumerate() {
            if rank >= self.min_keep && shifted[i] > limit {
                scores[i] = f32::NEG_INFINITY;
            }
        }
    }
}
