//! Beam search bookkeeping as transformers 4.46 (generation/beam_search.py,
//! `BeamSearchScorer` and `BeamHypotheses`): finished hypotheses per prompt, the choice
//! of the next beams among the `2 × num_beams` best candidates, and the final
//! selection. Scores follow Python's precision: running beam scores are f32, hypothesis
//! scores f64 (Python floats), returned scores f32.

use rustformers_core::{Error, Result};

use crate::config::EarlyStopping;

/// The finished hypotheses of one prompt (at most `num_beams`, the best kept).
#[derive(Debug, Clone)]
pub(crate) struct BeamHypotheses {
    num_beams: usize,
    length_penalty: f64,
    early_stopping: EarlyStopping,
    /// New tokens Python's `max_length` leaves (`max_length - prompt length`).
    max_new: usize,
    /// (score, generated tokens without the eos that ended them).
    beams: Vec<(f64, Vec<u32>)>,
    worst_score: f64,
}

impl BeamHypotheses {
    pub(crate) fn new(
        num_beams: usize,
        length_penalty: f64,
        early_stopping: EarlyStopping,
        max_new: usize,
    ) -> Self {
        Self {
            num_beams,
            length_penalty,
            early_stopping,
            max_new,
            beams: Vec::new(),
            worst_score: 1e9,
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.beams.len()
    }

    /// Adds a hypothesis whose log-probabilities sum to `sum_logprobs` over
    /// `generated_len` new tokens (an eos that ended it included); kept if there is room
    /// or it beats the worst one, which then goes.
    pub(crate) fn add(&mut self, tokens: Vec<u32>, sum_logprobs: f64, generated_len: usize) {
        let score = sum_logprobs / (generated_len as f64).powf(self.length_penalty);
        if self.beams.len() < self.num_beams || score > self.worst_score {
            self.beams.push((score, tokens));
            if self.beams.len() > self.num_beams {
                // Python: sorted((score, index)) — the lowest score, the first on ties.
                let mut order: Vec<(f64, usize)> = self
                    .beams
                    .iter()
                    .enumerate()
                    .map(|(i, (s, _))| (*s, i))
                    .collect();
                order.sort_by(|a, b| {
                    a.0.partial_cmp(&b.0)
                        .unwrap_or(std::cmp::Ordering::Equal)
                        .then(a.1.cmp(&b.1))
                });
                self.beams.remove(order[0].1);
                self.worst_score = order[1].0;
            } else {
                self.worst_score = self.worst_score.min(score);
            }
        }
    }

    /// Whether no running beam can improve on the finished hypotheses: `best_sum_logprobs`
    /// is the best candidate score this step, `cur_new` the new tokens it would have.
    pub(crate) fn is_done(&self, best_sum_logprobs: f64, cur_new: usize) -> bool {
        if self.beams.len() < self.num_beams {
            return false;
        }
        let attainable = |len: usize| best_sum_logprobs / (len as f64).powf(self.length_penalty);
        match self.early_stopping {
            EarlyStopping::True => true,
            EarlyStopping::False => self.worst_score >= attainable(cur_new),
            EarlyStopping::Never => {
                if self.length_penalty > 0.0 {
                    self.worst_score >= attainable(self.max_new)
                } else {
                    self.worst_score >= attainable(cur_new)
                }
            }
        }
    }

    /// The `n` best hypotheses, best first (Python: a stable ascending sort, popped from
    /// the end, so among equal scores the later added comes first).
    pub(crate) fn best(&self, n: usize) -> Vec<(f64, Vec<u32>)> {
        let mut sorted = self.beams.clone();
        sorted.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
        sorted.into_iter().rev().take(n).collect()
    }
}

/// One candidate continuation: `beam` (within the prompt's beams) followed by `token`,
/// with the running score `score`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Candidate {
    pub score: f32,
    pub beam: usize,
    pub token: u32,
}

/// The `k` best candidates over `scores` (`num_beams` rows of the vocabulary, already
/// with the beams' running scores added), best first; ties go to the lower index
/// (torch.topk, sorted).
pub(crate) fn top_candidates(scores: &[Vec<f32>], k: usize) -> Vec<Candidate> {
    let vocab = scores.first().map(Vec::len).unwrap_or(0);
    let mut all: Vec<(f32, usize)> = scores
        .iter()
        .flatten()
        .copied()
        .enumerate()
        .map(|(i, s)| (s, i))
        .collect();
    let k = k.min(all.len());
    if k == 0 {
        return Vec::new();
    }
    let cmp = |a: &(f32, usize), b: &(f32, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    if k < all.len() {
        all.select_nth_unstable_by(k - 1, cmp);
        all.truncate(k);
    }
    all.sort_by(cmp);
    all.into_iter()
        .map(|(score, i)| Candidate {
            score,
            beam: i / vocab,
            token: (i % vocab) as u32,
        })
        .collect()
}

/// What one prompt's beams become after a step.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NextBeams {
    /// `num_beams` continuations that are not eos, best first.
    pub beams: Vec<Candidate>,
}

/// `BeamSearchScorer.process` for one prompt: walks the candidates best first; an eos
/// candidate ranked among the first `num_beams` becomes a finished hypothesis (of the
/// beam's tokens `beam_tokens[beam]`, without the eos), a lower-ranked one is dropped;
/// other candidates fill the next beams until there are `num_beams`. `step` is the
/// number of tokens the beams already have.
pub(crate) fn process(
    candidates: &[Candidate],
    beam_tokens: &[&[u32]],
    eos: &[u32],
    num_beams: usize,
    step: usize,
    hyps: &mut BeamHypotheses,
) -> Result<NextBeams> {
    let mut beams = Vec::with_capacity(num_beams);
    for (rank, c) in candidates.iter().enumerate() {
        if eos.contains(&c.token) {
            if rank >= num_beams {
                continue;
            }
            let tokens = beam_tokens
                .get(c.beam)
                .copied()
                .unwrap_or_default()
                .to_vec();
            hyps.add(tokens, c.score as f64, step + 1);
        } else {
            beams.push(*c);
        }
        if beams.len() == num_beams {
            break;
        }
    }
    if beams.len() < num_beams {
        return Err(Error::invalid(format!(
            "beam search found only {} non-eos continuations for {num_beams} beams",
            beams.len()
        )));
    }
    Ok(NextBeams { beams })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypotheses_keep_the_best_and_track_the_worst() {
        let mut h = BeamHypotheses::new(2, 1.0, EarlyStopping::False, 10);
        h.add(vec![1], -2.0, 2); // -1.0
        h.add(vec![2], -3.0, 1); // -3.0
        assert_eq!(h.len(), 2);
        assert_eq!(h.worst_score, -3.0);
        h.add(vec![3], -5.0, 1); // -5.0: worse than the worst, not kept
        assert_eq!(h.len(), 2);
        h.add(vec![4], -4.0, 2); // -2.0 replaces -3.0
        assert_eq!(h.worst_score, -2.0);
        let best = h.best(2);
        assert_eq!(best[0].1, vec![1]);
        assert_eq!(best[1].1, vec![4]);
        // False: done when the best candidate at the current length cannot beat -2.0.
        assert!(h.is_done(-6.0, 3));
        assert!(!h.is_done(-5.0, 3));
        // length_penalty 2 with "never" divides by max_new².
        let mut n = BeamHypotheses::new(1, 2.0, EarlyStopping::Never, 10);
        n.add(vec![1], -4.0, 2); // -1.0
        assert!(!n.is_done(-50.0, 3)); // -0.5 attainable at length 10
        assert!(n.is_done(-200.0, 3)); // -2.0
        let t = BeamHypotheses::new(1, 1.0, EarlyStopping::True, 10);
        assert!(!t.is_done(0.0, 1));
    }

    #[test]
    fn candidates_and_process() {
        let scores = vec![vec![-1.0, -0.5, -3.0], vec![-0.7, -2.0, -0.1]];
        let c = top_candidates(&scores, 4);
        let picked: Vec<(usize, u32)> = c.iter().map(|c| (c.beam, c.token)).collect();
        assert_eq!(picked, vec![(1, 2), (0, 1), (1, 0), (0, 0)]);
        let mut h = BeamHypotheses::new(2, 1.0, EarlyStopping::True, 5);
        let a = [7u32];
        let b = [8u32];
        // Token 2 is eos: ranked first, it becomes a hypothesis of beam 1's tokens.
        let next = process(&c, &[&a, &b], &[2], 2, 1, &mut h).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h.best(1)[0], ((-0.1f32) as f64 / 2.0, vec![8]));
        assert_eq!(next.beams.len(), 2);
        assert_eq!((next.beams[0].beam, next.beams[0].token), (0, 1));
        assert_eq!((next.beams[1].beam, next.beams[1].token), (1, 0));
        // An eos ranked below num_beams is dropped.
        let mut h = BeamHypotheses::new(2, 1.0, EarlyStopping::True, 5);
        process(&c, &[&a, &b], &[0], 2, 1, &mut h).unwrap();
        assert_eq!(h.len(), 0);
    }
}
