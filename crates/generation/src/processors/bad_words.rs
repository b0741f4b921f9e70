//! `NoBadWordsLogitsProcessor`: a single-token bad word is always banned; a longer one
//! bans its last token when the sequence ends with the rest. Sequences equal to an eos
//! id are not banned, as in Python.

use super::LogitsProcessor;

#[derive(Debug, Clone)]
pub struct NoBadWords(Vec<Vec<u32>>);

impl NoBadWords {
    pub fn new(words: Vec<Vec<u32>>, eos: &[u32]) -> Self {
        Self(
            words
                .into_iter()
                .filter(|w| match w.as_slice() {
                    [] => false,
                    [one] => !eos.contains(one),
                    _ => true,
                })
                .collect(),
        )
    }
}

impl LogitsProcessor for NoBadWords {
    fn process(&self, tokens: &[u32], _new: usize, scores: &mut [f32]) {
        for w in &self.0 {
            let (last, prefix) = (w[w.len() - 1], &w[..w.len() - 1]);
            if tokens.ends_with(prefix) {
                if let Some(s) = scores.get_mut(last as usize) {
                    *s = f32::NEG_INFINITY;
                }
            }
        }
    }
}
