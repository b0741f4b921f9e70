//! `generate()`: greedy search, sampling and beam search over a batch of prompts of
//! different lengths (left padding, position ids from the mask as Python computes them),
//! with the KV cache: the prompt is run once, then one token per step.
//!
//! [`Generator`] does the work one step at a time: `generate()` runs it to the end,
//! [`TokenStream`] is an iterator over the tokens as they come.

use std::collections::VecDeque;

use candle_core::{Device, Tensor};

use rustformers_core::kv_cache::KvCache;
use rustformers_core::rotary::position_ids_from_mask;
use rustformers_core::{AutoTokenizer, Error, Result};
use rustformers_models::{CausalLanguageModel, CausalLmInputs, LogitsMode};

use crate::beam::{self, Candidate, PromptBeams};
use crate::config::GenerationConfig;
use crate::processors::{self, log_softmax, softmax, LogitsProcessor};
use crate::sampling::{sample, Rng};
use crate::stopping::{EosToken, MaxLength, StopStrings, StoppingCriteria};

/// What `generate` returns: one entry per prompt × `num_return_sequences` (the copies of
/// a prompt next to each other).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOutput {
    /// Prompt tokens (no padding) followed by the generated tokens (through eos).
    pub sequences: Vec<Vec<u32>>,
    /// The generated tokens alone.
    pub new_tokens: Vec<Vec<u32>>,
    /// Beam search only: each sequence's score, its summed log-probabilities divided by
    /// (new tokens, eos included) ^ `length_penalty` (Python's `sequences_scores`).
    pub sequences_scores: Option<Vec<f32>>,
}

/// Called after each step with (row, token); returning `false` stops that row.
pub type TokenCallback<'a> = dyn FnMut(usize, u32) -> bool + 'a;

/// Generates continuations of `prompts` with `config` (validated first).
///
/// `on_token` sees every generated token as it is chosen. With beam search the tokens
/// are known only once the search ends (Python refuses a streamer there): the callback
/// then sees each returned sequence's new tokens at the end, and its answer is ignored.
///
/// `stop_strings` need a tokenizer: use [`Generator::with_tokenizer`].
pub fn generate(
    model: &dyn CausalLanguageModel,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
    device: &Device,
    on_token: Option<&mut TokenCallback<'_>>,
) -> Result<GenerateOutput> {
    Generator::new(model, prompts, config, device)?.run(on_token)
}

/// Step-by-step generation. Build it, optionally add a tokenizer (for `stop_strings`),
/// stopping criteria or logits processors (before the first step), then call [`step`](Self::step) until it returns `None` and take
/// the result with [`finish`](Self::finish) — or let [`run`](Self::run) or
/// [`stream`](Self::stream) do that.
pub struct Generator<'a> {
    model: &'a dyn CausalLanguageModel,
    config: GenerationConfig,
    device: Device,
    prompts: Vec<Vec<u32>>,
    processors: Vec<Box<dyn LogitsProcessor>>,
    custom_processors: Vec<Box<dyn LogitsProcessor>>,
    criteria: Vec<Box<dyn StoppingCriteria + 'a>>,
    tokenizer: Option<&'a AutoTokenizer>,
    max_new: usize,
    state: State,
}

enum State {
    /// Nothing ran yet (criteria may still be added).
    Ready,
    Search(Box<Search>),
    Beam(Box<BeamSearch>),
    /// Finished; holds the result until `finish` takes it.
    Done(Option<GenerateOutput>),
}

impl<'a> Generator<'a> {
    /// Checks the config and the prompts; nothing runs until the first step.
    pub fn new(
        model: &'a dyn CausalLanguageModel,
        prompts: &[Vec<u32>],
        config: &GenerationConfig,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        if prompts.iter().any(Vec::is_empty) {
            return Err(Error::invalid("every prompt needs at least one token"));
        }
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let context = model.max_context();
        if longest >= context {
            return Err(Error::invalid(format!(
                "the prompt has {longest} tokens, which leaves no room in the model's context of {context}"
            )));
        }
        let max_new = config.new_tokens_for(longest);
        if longest + max_new > context {
            tracing::warn!(
                "generating past the model's context of {context} tokens ({longest} prompt + {max_new} new); quality may drop"
            );
        }
        let mut criteria: Vec<Box<dyn StoppingCriteria + 'a>> =
            vec![Box::new(MaxLength::new(max_new))];
        let eos = config.eos_ids();
        if !eos.is_empty() {
            criteria.push(Box::new(EosToken::new(eos)));
        }
        Ok(Self {
            model,
            config: config.clone(),
            device: device.clone(),
            prompts: prompts.to_vec(),
            processors: processors::processors(config),
            custom_processors: Vec::new(),
            criteria,
            tokenizer: None,
            max_new,
            state: State::Ready,
        })
    }

    /// The tokenizer that decodes generated text for `stop_strings` (Python's
    /// `generate(..., tokenizer=...)`).
    pub fn with_tokenizer(mut self, tokenizer: &'a AutoTokenizer) -> Self {
        self.tokenizer = Some(tokenizer);
        self
    }

    /// Adds a stopping criterion (checked after each token with the built-in ones).
    pub fn with_stopping_criteria(mut self, criteria: Box<dyn StoppingCriteria + 'a>) -> Self {
        self.criteria.push(criteria);
        self
    }

    /// Adds a logits processor; as in Python, custom processors run after the config's
    /// penalties and bans and before the sampling warpers.
    pub fn with_logits_processor(mut self, processor: Box<dyn LogitsProcessor>) -> Self {
        self.custom_processors.push(processor);
        self
    }

    /// The rows of the output: prompts × `num_return_sequences`.
    pub fn num_rows(&self) -> usize {
        self.prompts.len() * self.config.num_return_sequences
    }

    /// True with beam search (tokens come only at the end).
    pub fn is_beam_search(&self) -> bool {
        self.config.num_beams > 1
    }

    /// True once generation ended (the next step returns `None`).
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Done(_))
    }

    /// Stops `row` (its tokens so far are kept). Without effect in beam search, whose
    /// rows are known only at the end.
    pub fn stop_row(&mut self, row: usize) {
        if let State::Search(s) = &mut self.state {
            if let Some(f) = s.finished.get_mut(row) {
                *f = true;
            }
        }
    }

    /// Runs one decoding step: the tokens chosen, as (row, token) for each row still
    /// running, or `None` once generation has ended. With beam search, steps give no
    /// tokens until the last, which gives every returned sequence's new tokens.
    pub fn step(&mut self) -> Result<Option<Vec<(usize, u32)>>> {
        if matches!(self.state, State::Ready) {
            self.start()?;
        }
        let ctx = Ctx {
            model: self.model,
            config: &self.config,
            device: &self.device,
            processors: &self.processors,
            criteria: &self.criteria,
            max_new: self.max_new,
        };
        let output = match &mut self.state {
            State::Ready | State::Done(_) => return Ok(None),
            State::Search(s) => match s.step(&ctx)? {
                Some(tokens) => return Ok(Some(tokens)),
                None => s.output(),
            },
            State::Beam(b) => match b.step(&ctx)? {
                Some(()) => return Ok(Some(Vec::new())),
                None => b.finalize(&ctx)?,
            },
        };
        // Beam search: the returned sequences' tokens, now that they are known.
        let tokens: Vec<(usize, u32)> = if matches!(self.state, State::Beam(_)) {
            output
                .new_tokens
                .iter()
                .enumerate()
                .flat_map(|(row, t)| t.iter().map(move |&t| (row, t)))
                .collect()
        } else {
            Vec::new()
        };
        self.state = State::Done(Some(output));
        Ok((!tokens.is_empty()).then_some(tokens))
    }

    /// Runs the remaining steps and returns the result.
    pub fn finish(mut self) -> Result<GenerateOutput> {
        while self.step()?.is_some() {}
        match &mut self.state {
            State::Done(out) => out
                .take()
                .ok_or_else(|| Error::invalid("the generation result was already taken")),
            _ => Err(Error::invalid("generation did not finish")),
        }
    }

    /// Runs to the end, calling `on_token` with each (row, token) (see [`generate`]).
    pub fn run(mut self, mut on_token: Option<&mut TokenCallback<'_>>) -> Result<GenerateOutput> {
        let beam = self.is_beam_search();
        while let Some(tokens) = self.step()? {
            if let Some(cb) = on_token.as_deref_mut() {
                for (row, t) in tokens {
                    if !cb(row, t) && !beam {
                        self.stop_row(row);
                    }
                }
            }
        }
        self.finish()
    }

    /// An iterator over the (row, token) pairs as they are generated.
    pub fn stream(self) -> TokenStream<'a> {
        TokenStream {
            generator: self,
            queue: VecDeque::new(),
            failed: false,
        }
    }

    fn start(&mut self) -> Result<()> {
        self.processors.append(&mut self.custom_processors);
        self.processors.extend(processors::warpers(&self.config));
        if let Some(stops) = &self.config.stop_strings {
            let Some(tok) = self.tokenizer else {
                return Err(Error::invalid(
                    "stop_strings need a tokenizer to decode the generated text: \
                     build the generation with Generator::with_tokenizer",
                ));
            };
            self.criteria
                .push(Box::new(StopStrings::new(stops.clone(), tok)));
        }
        if self.prompts.is_empty() || self.max_new == 0 {
            let n = self.config.num_return_sequences;
            let sequences: Vec<Vec<u32>> = self
                .prompts
                .iter()
                .flat_map(|p| std::iter::repeat_n(p.clone(), n))
                .collect();
            let rows = sequences.len();
            self.state = State::Done(Some(GenerateOutput {
                sequences,
                new_tokens: vec![Vec::new(); rows],
                sequences_scores: self.is_beam_search().then(|| vec![0.0; rows]),
            }));
            return Ok(());
        }
        let pad = self.config.pad_id().unwrap_or(0);
        self.state = if self.config.num_beams > 1 {
            State::Beam(Box::new(BeamSearch::new(
                self.model,
                &self.prompts,
                &self.config,
                pad,
                self.max_new,
                &self.device,
            )?))
        } else {
            // num_return_sequences with sampling: each prompt repeated.
            let rows: Vec<Vec<u32>> = self
                .prompts
                .iter()
                .flat_map(|p| std::iter::repeat_n(p.clone(), self.config.num_return_sequences))
                .collect();
            let rng = match self.config.seed {
                Some(s) => Rng::new(s),
                None => Rng::from_entropy(),
            };
            State::Search(Box::new(Search::new(
                self.model,
                rows,
                pad,
                self.max_new,
                rng,
                &self.device,
            )?))
        };
        Ok(())
    }
}

/// The (row, token) pairs of a [`Generator`] as they come; `into_output` gives the
/// result once the iterator is done (or runs the rest).
pub struct TokenStream<'a> {
    generator: Generator<'a>,
    queue: VecDeque<(usize, u32)>,
    failed: bool,
}

impl TokenStream<'_> {
    /// Stops `row` (see [`Generator::stop_row`]).
    pub fn stop_row(&mut self, row: usize) {
        self.generator.stop_row(row);
        self.queue.retain(|(r, _)| *r != row);
    }

    /// Runs what is left and returns the result.
    pub fn into_output(self) -> Result<GenerateOutput> {
        self.generator.finish()
    }
}

impl Iterator for TokenStream<'_> {
    type Item = Result<(usize, u32)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(t) = self.queue.pop_front() {
                return Some(Ok(t));
            }
            if self.failed {
                return None;
            }
            match self.generator.step() {
                Ok(Some(tokens)) => self.queue.extend(tokens),
                Ok(None) => return None,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// What a step needs from its generator.
struct Ctx<'g, 'a> {
    model: &'a dyn CausalLanguageModel,
    config: &'g GenerationConfig,
    device: &'g Device,
    processors: &'g [Box<dyn LogitsProcessor>],
    criteria: &'g [Box<dyn StoppingCriteria + 'a>],
    max_new: usize,
}

impl Ctx<'_, '_> {
    fn should_stop(&self, tokens: &[u32], new_tokens: usize) -> Result<bool> {
        for c in self.criteria {
            if c.should_stop(tokens, new_tokens)? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// A left-padded batch in the model: the mask over every cached position, the next
/// position of each row, the KV cache and the input of the next forward pass.
struct Batch {
    mask: Vec<Vec<u32>>,
    /// Every token fed so far and pending, padding included (for a recompute).
    ids: Vec<Vec<u32>>,
    next_pos: Vec<u32>,
    cache: KvCache,
    capacity: usize,
    input: Tensor,
    positions: Tensor,
}

impl Batch {
    fn new(
        model: &dyn CausalLanguageModel,
        rows: &[Vec<u32>],
        pad: u32,
        max_new: usize,
        device: &Device,
    ) -> Result<Self> {
        let longest = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mask: Vec<Vec<u32>> = rows
            .iter()
            .map(|r| {
                let mut m = vec![0u32; longest - r.len()];
                m.extend(std::iter::repeat_n(1, r.len()));
                m
            })
            .collect();
        let ids: Vec<Vec<u32>> = rows
            .iter()
            .map(|r| {
                std::iter::repeat_n(pad, longest - r.len())
                    .chain(r.iter().copied())
                    .collect()
            })
            .collect();
        Ok(Self {
            input: Tensor::from_vec(ids.concat(), (rows.len(), longest), device)?,
            positions: position_ids_from_mask(&mask, device)?,
            next_pos: rows.iter().map(|r| r.len() as u32).collect(),
            cache: model.new_cache(Some(longest + max_new)),
            capacity: longest + max_new,
            ids,
            mask,
        })
    }

    /// Runs the pending input; the last position's logits of each row.
    fn forward(
        &mut self,
        model: &dyn CausalLanguageModel,
        device: &Device,
    ) -> Result<Vec<Vec<f32>>> {
        let b = self.mask.len();
        let width = self.mask.first().map(Vec::len).unwrap_or(0);
        let past = self.cache.len();
        if model.recompute_cache(past, width - past) {
            // The whole sequence again, with a fresh cache.
            self.cache = model.new_cache(Some(self.capacity));
            self.input = Tensor::from_vec(self.ids.concat(), (b, width), device)?;
            self.positions = position_ids_from_mask(&self.mask, device)?;
        }
        let flat: Vec<u32> = self.mask.iter().flatten().copied().collect();
        let mask = Tensor::from_vec(flat, (b, width), device)?;
        let logits = model.forward(
            CausalLmInputs {
                input_ids: &self.input,
                attention_mask: Some(&mask),
                position_ids: Some(&self.positions),
            },
            Some(&mut self.cache),
            LogitsMode::Last,
        )?;
        Ok(logits.squeeze(1)?.to_vec2::<f32>()?)
    }

    /// Sets the next input: one token per row.
    fn push(&mut self, tokens: Vec<u32>, device: &Device) -> Result<()> {
        let b = tokens.len();
        for m in self.mask.iter_mut() {
            m.push(1);
        }
        for (row, t) in self.ids.iter_mut().zip(&tokens) {
            row.push(*t);
        }
        self.input = Tensor::from_vec(tokens, (b, 1), device)?;
        self.positions = Tensor::from_vec(self.next_pos.clone(), (b, 1), device)?;
        for p in self.next_pos.iter_mut() {
            *p += 1;
        }
        Ok(())
    }

    /// Row `i` becomes old row `indices[i]` (the cache, the mask, the positions).
    fn select(&mut self, indices: &[u32]) -> Result<()> {
        let identity = indices.len() == self.mask.len()
            && indices.iter().enumerate().all(|(i, &j)| i == j as usize);
        if identity {
            return Ok(());
        }
        self.cache.reorder(indices)?;
        self.mask = indices
            .iter()
            .map(|&i| self.mask[i as usize].clone())
            .collect();
        self.ids = indices
            .iter()
            .map(|&i| self.ids[i as usize].clone())
            .collect();
        self.next_pos = indices.iter().map(|&i| self.next_pos[i as usize]).collect();
        Ok(())
    }
}

/// Greedy search and sampling (Python's `_sample`): each row runs until a stopping
/// criterion (or the caller) stops it; stopped rows are fed padding.
struct Search {
    batch: Batch,
    tokens: Vec<Vec<u32>>,
    generated: Vec<Vec<u32>>,
    finished: Vec<bool>,
    pad: u32,
    rng: Rng,
}

impl Search {
    fn new(
        model: &dyn CausalLanguageModel,
        rows: Vec<Vec<u32>>,
        pad: u32,
        max_new: usize,
        rng: Rng,
        device: &Device,
    ) -> Result<Self> {
        let b = rows.len();
        Ok(Self {
            batch: Batch::new(model, &rows, pad, max_new, device)?,
            tokens: rows,
            generated: vec![Vec::new(); b],
            finished: vec![false; b],
            pad,
            rng,
        })
    }

    fn step(&mut self, ctx: &Ctx<'_, '_>) -> Result<Option<Vec<(usize, u32)>>> {
        if self.finished.iter().all(|f| *f) {
            return Ok(None);
        }
        if self.generated.iter().any(|g| g.len() >= ctx.max_new) {
            return Ok(None);
        }
        let logits = self.batch.forward(ctx.model, ctx.device)?;
        let mut next = vec![self.pad; logits.len()];
        let mut out = Vec::new();
        for (row, mut scores) in logits.into_iter().enumerate() {
            if self.finished[row] {
                continue;
            }
            let new = self.generated[row].len();
            processors::apply(ctx.processors, &self.tokens[row], new, &mut scores);
            let t = if ctx.config.do_sample {
                sample(&softmax(&scores), &mut self.rng)
            } else {
                crate::argmax(&scores)
            } as u32;
            next[row] = t;
            self.tokens[row].push(t);
            self.generated[row].push(t);
            out.push((row, t));
            if ctx.should_stop(&self.tokens[row], new + 1)? {
                self.finished[row] = true;
            }
        }
        self.batch.push(next, ctx.device)?;
        Ok(Some(out))
    }

    fn output(&mut self) -> GenerateOutput {
        GenerateOutput {
            sequences: std::mem::take(&mut self.tokens),
            new_tokens: std::mem::take(&mut self.generated),
            sequences_scores: None,
        }
    }
}

/// Beam search (Python 5.25's `_beam_search`, bookkeeping in [`beam`]), and beam
/// sampling with `do_sample`.
struct BeamSearch {
    batch: Batch,
    num_beams: usize,
    prompts: Vec<Vec<u32>>,
    /// Generated tokens of each beam row (`prompt × num_beams + beam`).
    beams: Vec<Vec<u32>>,
    /// Running sum of log-probabilities of each beam row (f32, as Python).
    beam_scores: Vec<f32>,
    finished: Vec<PromptBeams>,
    /// Beam rows are expanded from the prompts after the first forward pass.
    expanded: bool,
    step: usize,
    pad: u32,
    rng: Rng,
}

impl BeamSearch {
    fn new(
        model: &dyn CausalLanguageModel,
        prompts: &[Vec<u32>],
        config: &GenerationConfig,
        pad: u32,
        max_new: usize,
        device: &Device,
    ) -> Result<Self> {
        let nb = config.num_beams;
        let early = config.early_stopping_mode()?;
        let rows = prompts.len() * nb;
        // Beam 0 starts alone: the others are -1e9 so that the first step does not
        // pick the same continuation num_beams times.
        let beam_scores = (0..rows)
            .map(|r| if r % nb == 0 { 0.0 } else { -1e9 })
            .collect();
        Ok(Self {
            // The prompts run once; their cache rows are then copied to every beam.
            batch: Batch::new(model, prompts, pad, max_new, device)?,
            num_beams: nb,
            prompts: prompts.to_vec(),
            beams: vec![Vec::new(); rows],
            beam_scores,
            finished: (0..prompts.len())
                .map(|_| PromptBeams::new(nb, config.length_penalty, early, max_new))
                .collect(),
            expanded: false,
            step: 0,
            pad,
            rng: match config.seed {
                Some(s) => Rng::new(s),
                None => Rng::from_entropy(),
            },
        })
    }

    /// One step; `None` once the search is over: no prompt can change its finished
    /// beams any more, or every candidate met a stopping criterion (the length limit).
    fn step(&mut self, ctx: &Ctx<'_, '_>) -> Result<Option<()>> {
        if self.step >= ctx.max_new || !self.finished.iter().any(PromptBeams::active) {
            return Ok(None);
        }
        let nb = self.num_beams;
        let mut logits = self.batch.forward(ctx.model, ctx.device)?;
        if !self.expanded {
            let idx: Vec<u32> = (0..self.prompts.len() as u32)
                .flat_map(|p| std::iter::repeat_n(p, nb))
                .collect();
            self.batch.select(&idx)?;
            logits = idx.iter().map(|&p| logits[p as usize].clone()).collect();
            self.expanded = true;
        }
        let n_keep = 2.max(1 + ctx.config.eos_ids().len()) * nb;
        let rows = self.beams.len();
        let mut next_tokens = vec![self.pad; rows];
        let mut next_scores = self.beam_scores.clone();
        let mut sources: Vec<u32> = (0..rows as u32).collect();
        let mut all_hit = true;
        for p in 0..self.prompts.len() {
            if !self.finished[p].active() {
                continue;
            }
            // log_softmax, the processors, plus the beam's running score.
            let scores: Vec<Vec<f32>> = (0..nb)
                .map(|b| {
                    let r = p * nb + b;
                    let mut s = log_softmax(&logits[r]);
                    if !ctx.processors.is_empty() {
                        let mut tokens = self.prompts[p].clone();
                        tokens.extend_from_slice(&self.beams[r]);
                        processors::apply(ctx.processors, &tokens, self.step, &mut s);
                    }
                    let running = self.beam_scores[r];
                    s.iter_mut().for_each(|x| *x += running);
                    s
                })
                .collect();
            let candidates = if ctx.config.do_sample {
                sample_candidates(&scores, n_keep, &mut self.rng)
            } else {
                beam::top_candidates(&scores, n_keep)
            };
            // Which candidates meet a stopping criterion (eos, length, stop strings).
            let mut hits = Vec::with_capacity(candidates.len());
            for c in &candidates {
                let mut tokens = self.prompts[p].clone();
                tokens.extend_from_slice(&self.beams[p * nb + c.beam]);
                tokens.push(c.token);
                hits.push(ctx.should_stop(&tokens, self.step + 1)?);
            }
            all_hit &= hits.iter().all(|h| *h);
            let beam_tokens: Vec<&[u32]> =
                (0..nb).map(|b| self.beams[p * nb + b].as_slice()).collect();
            let next = self.finished[p].step(&candidates, &beam_tokens, &hits, self.step + 1);
            for (b, (c, score)) in next.iter().enumerate() {
                let r = p * nb + b;
                next_tokens[r] = c.token;
                next_scores[r] = *score;
                sources[r] = (p * nb + c.beam) as u32;
            }
        }
        self.beams = sources
            .iter()
            .zip(&next_tokens)
            .map(|(&s, &t)| {
                let mut b = self.beams[s as usize].clone();
                b.push(t);
                b
            })
            .collect();
        self.beam_scores = next_scores;
        self.step += 1;
        if all_hit || !self.finished.iter().any(PromptBeams::active) {
            return Ok(None);
        }
        self.batch.select(&sources)?;
        self.batch.push(next_tokens, ctx.device)?;
        Ok(Some(()))
    }

    /// The best `num_return_sequences` finished slots of each prompt, best first.
    fn finalize(&mut self, ctx: &Ctx<'_, '_>) -> Result<GenerateOutput> {
        let keep = ctx.config.num_return_sequences;
        let mut out = GenerateOutput {
            sequences: Vec::new(),
            new_tokens: Vec::new(),
            sequences_scores: Some(Vec::new()),
        };
        for (p, f) in self.finished.iter().enumerate() {
            // `num_return_sequences <= num_beams` is validated with the config.
            for slot in f.slots.iter().take(keep) {
                let mut seq = self.prompts[p].clone();
                seq.extend_from_slice(&slot.tokens);
                out.sequences.push(seq);
                out.new_tokens.push(slot.tokens.clone());
                if let Some(s) = out.sequences_scores.as_mut() {
                    s.push(slot.score);
                }
            }
        }
        Ok(out)
    }
}

/// Beam sampling: `k` candidates drawn without replacement from the softmax over all
/// beams' scores, then sorted best first (Python: multinomial, gather, sort).
fn sample_candidates(scores: &[Vec<f32>], k: usize, rng: &mut Rng) -> Vec<Candidate> {
    let vocab = scores.first().map(Vec::len).unwrap_or(0);
    let flat: Vec<f32> = scores.iter().flatten().copied().collect();
    let mut probs = softmax(&flat);
    let mut picked: Vec<usize> = Vec::with_capacity(k);
    for _ in 0..k.min(flat.len()) {
        let i = if probs.iter().any(|p| *p > 0.0) {
            sample(&probs, rng)
        } else {
            // Nothing left with probability: the best remaining scores.
            match (0..flat.len())
                .filter(|i| !picked.contains(i))
                .max_by(|a, b| flat[*a].total_cmp(&flat[*b]).then(b.cmp(a)))
            {
                Some(i) => i,
                None => break,
            }
        };
        probs[i] = 0.0;
        picked.push(i);
    }
    let mut out: Vec<Candidate> = picked
        .into_iter()
        .map(|i| Candidate {
            score: flat[i],
            beam: i / vocab.max(1),
            token: (i % vocab.max(1)) as u32,
        })
        .collect();
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    out
}
