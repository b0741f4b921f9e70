//! `RepetitionPenaltyLogitsProcessor`: every token already in the sequence has its score
//! divided by the penalty when positive, multiplied when negative.

use super::LogitsProcessor;

#[derive(Debug, Clone)]
pub struct RepetitionPenalty(f32);

impl RepetitionPenalty {
    pub fn new(p: f32) -> Self {
        Self(p)
    }
}

impl LogitsProcessor for RepetitionPenalty {
    fn process(&self, tokens: &[u32], _new: usize, scores: &mut [f32]) {
        let mut seen = std::collections::HashSet::new();
        for &t in tokens {
            let i = t as usize;
            if i < scores.len() && seen.insert(t) {
                let s = scores[i];
                scores[i] = if s < 0.0 { s * self.0 } else { s / self.0 };
            }
        }
    }
}
