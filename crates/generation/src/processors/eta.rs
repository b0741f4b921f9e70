//! `EtaLogitsWarper` (eta sampling): drops tokens whose probability is below
//! `min(epsilon, sqrt(epsilon) * exp(-entropy))`, keeping at least the `min_keep` most
//! likely.

use super::{kth_largest, log_softmax, softmax, LogitsProcessor};

#[derive(Debug, Clone)]
pub struct Eta {
    epsilon: f32,
    min_keep: usize,
}

impl Eta {
    pub fn new(epsilon: f64, min_keep: usize) -> Self {
        Self {
            epsilon: epsilon as f32,
            min_keep,
        }
    }
}

impl LogitsProcessor for Eta {
    fn process(&self, _tokens: &[u32], _new: usize, scores: &mut [f32]) {
        let probs = softmax(scores);
        // torch.distributions.Categorical(logits).entropy(): -inf log-probs are clamped
        // to the lowest finite value, so their (zero-probability) terms vanish.
        let entropy: f32 = -log_softmax(scores)
            .iter()
            .zip(&probs)
            .map(|(l, p)| l.max(f32::MIN) * p)
            .sum::<f32>();
        let eta = self.epsilon.min(self.epsilon.sqrt() * (-entropy).exp());
        let keep_above = kth_largest(scores, self.min_keep);
        for (s, p) in scores.iter_mut().zip(&probs) {
            if *p < eta && *s < keep_above {
                *s = f32::NEG_INFINITY;
            }
        }
    }
}
