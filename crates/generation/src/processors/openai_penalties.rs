//! OpenAI's presence and frequency penalties (not in Python transformers; what the
//! server's `presence_penalty` / `frequency_penalty` set): each token generated so far
//! (the prompt does not count) has its score lowered by `count · frequency + presence`.

use super::LogitsProcessor;

#[derive(Debug, Clone)]
pub struct OpenAiPenalties {
    presence: f32,
    frequency: f32,
}

impl OpenAiPenalties {
    pub fn new(presence: f32, frequency: f32) -> Self {
        Self {
            presence,
            frequency,
        }
    }
}

impl LogitsProcessor for OpenAiPenalties {
    fn process(&self, tokens: &[u32], new: usize, scores: &mut [f32]) {
        let mut counts = std::collections::HashMap::new();
        for &t in &tokens[tokens.len().saturating_sub(new)..] {
            *counts.entry(t).or_insert(0u32) += 1;
        }
        for (t, c) in counts {
            if let Some(s) = scores.get_mut(t as usize) {
                *s -= c as f32 * self.frequency + self.presence;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_generated_tokens_count() {
        let p = OpenAiPenalties::new(0.5, 0.25);
        let mut s = [1.0f32; 5];
        // Prompt [1, 2], generated [2, 3, 3].
        p.process(&[1, 2, 2, 3, 3], 3, &mut s);
        assert_eq!(s, [1.0, 1.0, 0.25, 0.0, 1.0]);
    }
}
