//! Beam search bookkeeping as transformers 5.25 (generation/utils.py `_beam_search` and
//! its helpers `_get_top_k_continuations`, `_get_running_beams_for_next_iteration`,
//! `_update_finished_beams` and `_check_early_stop_heuristic`): per prompt, the running
//! beams and `num_beams` finished slots, both refilled each step from the
//! `K = max(2, 1 + number of eos ids) × num_beams` best candidates. A candidate that meets
//! a stopping criterion (eos, the length limit, a stop string) leaves the running beams;
//! it becomes finished only if it ranks among the first `num_beams`. Scores are f32, as
//! Python's tensors; "removed" entries get -1e9 added, as Python does.

use crate::config::EarlyStopping;

/// What Python adds to a score to rule an entry out.
const OUT: f32 = -1.0e9;

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

/// A finished slot of one prompt: generated tokens (the eos that ended them included),
/// the score (summed log-probabilities / new tokens ^ `length_penalty`), and whether a
/// real hypothesis fills it (empty slots hold -1e9, as Python initialises them).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Slot {
    pub tokens: Vec<u32>,
    pub score: f32,
    pub finished: bool,
}

/// The finished slots and the early-stop state of one prompt.
#[derive(Debug, Clone)]
pub(crate) struct PromptBeams {
    num_beams: usize,
    length_penalty: f64,
    early_stopping: EarlyStopping,
    /// New tokens the length limit allows.
    max_new: usize,
    /// `num_beams` slots, best first.
    pub slots: Vec<Slot>,
    /// Python's `is_early_stop_heuristic_unsatisfied`: a running beam may still beat a
    /// finished slot.
    improvable: bool,
}

/// `x / n ^ length_penalty` in f32 (a tensor divided by a Python float).
fn penalised(x: f32, n: usize, length_penalty: f64) -> f32 {
    x / (n as f64).powf(length_penalty) as f32
}

/// Indices of `scores` best first; ties go to the lower index (torch.topk, sorted).
fn ranked(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order
}

impl PromptBeams {
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
            slots: vec![
                Slot {
                    tokens: Vec::new(),
                    score: OUT,
                    finished: false,
                };
                num_beams
            ],
            improvable: true,
        }
    }

    /// Whether a step can still change the finished slots: the heuristic allows it, and
    /// with `early_stopping` true not every slot is finished yet.
    pub(crate) fn active(&self) -> bool {
        let full = self.slots.iter().all(|s| s.finished);
        self.improvable && !(full && self.early_stopping == EarlyStopping::True)
    }

    /// One step. `candidates` are the `K` best continuations, best first; `beam_tokens[b]`
    /// the tokens running beam `b` generated so far; `hits[i]` whether candidate `i`
    /// meets a stopping criterion; `new_len` the tokens generated after this step.
    /// Returns the next running beams with their running scores (those that hit a
    /// criterion carry -1e9 and rank last).
    pub(crate) fn step(
        &mut self,
        candidates: &[Candidate],
        beam_tokens: &[&[u32]],
        hits: &[bool],
        new_len: usize,
    ) -> Vec<(Candidate, f32)> {
        let nb = self.num_beams;
        let tokens_of = |c: &Candidate| {
            let mut t = beam_tokens
                .get(c.beam)
                .copied()
                .unwrap_or_default()
                .to_vec();
            t.push(c.token);
            t
        };
        // The running beams: the best candidates that hit no criterion.
        let running: Vec<f32> = candidates
            .iter()
            .zip(hits)
            .map(|(c, h)| if *h { c.score + OUT } else { c.score })
            .collect();
        let next: Vec<(Candidate, f32)> = ranked(&running)
            .into_iter()
            .take(nb)
            .map(|i| (candidates[i], running[i]))
            .collect();
        // The finished slots: merged with the candidates among the first num_beams that
        // hit a criterion; the best num_beams stay.
        let full =
            self.slots.iter().all(|s| s.finished) && self.early_stopping == EarlyStopping::True;
        let mut merged = self.slots.clone();
        for (i, (c, &hit)) in candidates.iter().zip(hits).enumerate() {
            let just_finished = hit && i < nb;
            let mut score = penalised(c.score, new_len, self.length_penalty);
            for ruled_out in [full, !self.improvable, !just_finished] {
                if ruled_out {
                    score += OUT;
                }
            }
            merged.push(Slot {
                tokens: tokens_of(c),
                score,
                finished: just_finished,
            });
        }
        let scores: Vec<f32> = merged.iter().map(|s| s.score).collect();
        self.slots = ranked(&scores)
            .into_iter()
            .take(nb)
            .map(|i| merged[i].clone())
            .collect();
        // Can the best running beam still beat a finished slot?
        let hypothetical =
            if self.early_stopping == EarlyStopping::Never && self.length_penalty > 0.0 {
                self.max_new
            } else {
                new_len
            };
        let best_possible = next.first().map_or(OUT, |(_, s)| {
            penalised(*s, hypothetical, self.length_penalty)
        });
        let worst = self
            .slots
            .iter()
            .map(|s| s.score)
            .fold(f32::INFINITY, f32::min);
        self.improvable &= self
            .slots
            .iter()
            .any(|s| best_possible > if s.finished { worst } else { OUT });
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_ranked_with_ties_to_the_lower_index() {
        let scores = vec![vec![-1.0, -0.5, -3.0], vec![-0.7, -2.0, -0.1]];
        let c = top_candidates(&scores, 4);
        let picked: Vec<(usize, u32)> = c.iter().map(|c| (c.beam, c.token)).collect();
        assert_eq!(picked, vec![(1, 2), (0, 1), (1, 0), (0, 0)]);
        assert_eq!(ranked(&[1.0, 2.0, 2.0, 0.0]), vec![1, 2, 0, 3]);
    }

    /// An eos candidate among the first num_beams fills a slot (scored over the new
    /// tokens, eos included) and leaves the running beams; one ranked lower is dropped.
    #[test]
    fn eos_candidates_fill_slots_only_from_the_top_num_beams() {
        let c = top_candidates(&[vec![-1.0, -0.5, -3.0], vec![-0.7, -2.0, -0.1]], 4);
        let (a, b) = ([7u32], [8u32]);
        let mut p = PromptBeams::new(2, 1.0, EarlyStopping::True, 5);
        // Token 2 is eos: ranked first.
        let hits: Vec<bool> = c.iter().map(|c| c.token == 2).collect();
        let next = p.step(&c, &[&a, &b], &hits, 2);
        assert_eq!(
            p.slots[0],
            Slot {
                tokens: vec![8, 2],
                score: -0.1 / 2.0,
                finished: true
            }
        );
        assert!(!p.slots[1].finished && p.slots[1].score <= OUT);
        let beams: Vec<(usize, u32)> = next.iter().map(|(c, _)| (c.beam, c.token)).collect();
        assert_eq!(beams, vec![(0, 1), (1, 0)]);
        assert!(p.active());
        // Token 0 is eos, ranked third of four with two beams: dropped.
        let mut p = PromptBeams::new(2, 1.0, EarlyStopping::True, 5);
        let hits: Vec<bool> = c.iter().map(|c| c.token == 0).collect();
        p.step(&c, &[&a, &b], &hits, 2);
        assert!(p.slots.iter().all(|s| !s.finished));
    }

    /// At the length limit every candidate hits: the first num_beams of them, eos or
    /// not, compete with the finished slots by score.
    #[test]
    fn at_the_length_limit_the_top_candidates_compete_with_finished_slots() {
        let mut p = PromptBeams::new(2, 1.0, EarlyStopping::False, 2);
        p.slots[0] = Slot {
            tokens: vec![5, 2],
            score: -0.3,
            finished: true,
        };
        let c = top_candidates(&[vec![-1.0, -0.4], vec![-3.0, -2.5]], 4);
        p.step(&c, &[&[1], &[3]], &[true; 4], 2);
        let got: Vec<(Vec<u32>, f32)> = p
            .slots
            .iter()
            .map(|s| (s.tokens.clone(), s.score))
            .collect();
        // -0.4 / 2 and -1.0 / 2 are eligible (the first two); -0.3 beats -0.5.
        assert_eq!(got, vec![(vec![1, 1], -0.2), (vec![5, 2], -0.3)]);
        assert!(p.slots.iter().all(|s| s.finished));
    }

    /// The heuristic: with every slot finished, `false` stops once the best running beam
    /// at the current length cannot beat the worst slot; `never` with a positive length
    /// penalty scores it at the length limit.
    #[test]
    fn early_stop_heuristic() {
        let c = top_candidates(&[vec![-0.1, -0.2, -9.0]], 3);
        for (mode, max_new, improvable) in [
            (EarlyStopping::False, 10, false),
            (EarlyStopping::Never, 1000, true),
        ] {
            let mut p = PromptBeams::new(1, 1.0, mode, max_new);
            // Token 0 (best) is eos: slot -0.1 / 1; the running beam -0.2 at length 1
            // cannot beat it; at length 1000 it can (-0.0002).
            let hits: Vec<bool> = c.iter().map(|c| c.token == 0).collect();
            p.step(&c, &[&[]], &hits, 1);
            assert_eq!(p.active(), improvable, "{mode:?}");
        }
    }
}
