//! Continuous batching (what `rustformers serve` runs): sequences join a running batch
//! between decode steps and leave it as soon as they finish, so concurrent requests
//! share each forward pass instead of waiting for one another.
//!
//! The running batch is a left-padded batch, as in `generate()` for several prompts:
//! one KV cache whose rows all end at the same position, an attention mask that hides
//! each row's padding, and position ids that count each row's own tokens. A new
//! sequence's prompt runs next to the running batch's decode step, outside the batch:
//! each step runs up to [`ContinuousBatcher::prefill_chunk`] prompt tokens (padding
//! counted). Whole waiting prompts that fit run together as one left-padded batch (one
//! forward pass, so the products get the rows that fast kernels need); a prompt longer
//! than what is left of the step's budget runs in chunks, one per step, so a long prompt
//! delays the other streams by one chunk at a time. Once its prompt has run, its cache row is
//! gathered into the batch's cache ([`KvCache::gather`]); a finished or cancelled row
//! is dropped the same way, which also trims padding no row needs any more.
//!
//! Each sequence keeps its own generation config: processors, warpers, stopping criteria
//! and seeded RNG are per row, so a sequence's tokens are the ones `generate()` gives for
//! its prompt alone (greedy and seeded sampling alike), up to float rounding of batched
//! products. Beam search is not batched continuously.

use std::collections::VecDeque;

use candle_core::{Device, Tensor};

use rustformers_core::kv_cache::{CacheRow, KvCache};
use rustformers_core::rotary::position_ids_from_mask;
use rustformers_core::{AutoTokenizer, Error, Result};
use rustformers_models::{CausalLanguageModel, CausalLmInputs, LogitsMode};

use crate::config::GenerationConfig;
use crate::processors::{self, log_softmax, softmax, LogitsProcessor};
use crate::sampling::{sample, Rng};
use crate::stopping::{EosToken, MaxLength, StopStrings, StoppingCriteria};

/// A sequence's handle in a [`ContinuousBatcher`].
pub type SeqId = u64;

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An eos token or another stopping criterion.
    Stop,
    /// `max_new_tokens` were generated.
    Length,
}

/// Log-probabilities of a generated token under the model's distribution (the raw
/// logits' log-softmax, before penalties, temperature and filtering).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    /// The chosen token's.
    pub logprob: f32,
    /// The most likely tokens and theirs, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// What a step produced for one sequence.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchEvent {
    /// A generated token; `finished` is set on the sequence's last one.
    Token {
        id: SeqId,
        token: u32,
        logprobs: Option<TokenLogprobs>,
        finished: Option<FinishReason>,
    },
    /// The sequence failed (its prompt or the batch's forward pass); it is gone.
    Failed { id: SeqId, message: String },
}

/// Per-sequence options beside the generation config.
#[derive(Debug, Clone, Copy, Default)]
pub struct SequenceOptions {
    /// Report log-probabilities: the chosen token's and the `n` most likely.
    pub top_logprobs: Option<usize>,
}

struct Seq<'a> {
    id: SeqId,
    tokens: Vec<u32>,
    prompt_len: usize,
    max_new: usize,
    eos: Vec<u32>,
    processors: Vec<Box<dyn LogitsProcessor>>,
    criteria: Vec<Box<dyn StoppingCriteria + 'a>>,
    do_sample: bool,
    rng: Rng,
    top_logprobs: Option<usize>,
}

impl Seq<'_> {
    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Picks the next token from `logits`; the token, its log-probabilities and, when
    /// this was the sequence's last token, why.
    fn choose(
        &mut self,
        mut logits: Vec<f32>,
    ) -> Result<(u32, Option<TokenLogprobs>, Option<FinishReason>)> {
        let raw = self.top_logprobs.map(|_| log_softmax(&logits));
        let new = self.generated();
        processors::apply(&self.processors, &self.tokens, new, &mut logits);
        let token = if self.do_sample {
            sample(&softmax(&logits), &mut self.rng)
        } else {
            crate::argmax(&logits)
        } as u32;
        let logprobs = match (raw, self.top_logprobs) {
            (Some(lp), Some(n)) => Some(TokenLogprobs {
                logprob: lp.get(token as usize).copied().unwrap_or(f32::NEG_INFINITY),
                top: top_n(&lp, n),
            }),
            _ => None,
        };
        self.tokens.push(token);
        let mut stop = false;
        for c in &self.criteria {
            if c.should_stop(&self.tokens, new + 1)? {
                stop = true;
                break;
            }
        }
        let finished = stop.then(|| {
            if !self.eos.contains(&token) && new + 1 >= self.max_new {
                FinishReason::Length
            } else {
                FinishReason::Stop
            }
        });
        Ok((token, logprobs, finished))
    }
}

/// The `n` largest entries of `lp`, largest first (ties: lower id first).
fn top_n(lp: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<u32> = (0..lp.len() as u32).collect();
    let n = n.min(idx.len());
    if n == 0 {
        return Vec::new();
    }
    let cmp = |a: &u32, b: &u32| lp[*b as usize].total_cmp(&lp[*a as usize]).then(a.cmp(b));
    idx.select_nth_unstable_by(n - 1, cmp);
    idx.truncate(n);
    idx.sort_by(cmp);
    idx.into_iter().map(|i| (i, lp[i as usize])).collect()
}

/// A sequence whose prompt is running chunk by chunk.
struct Prefill<'a> {
    seq: Seq<'a>,
    cache: KvCache,
    done: usize,
}

/// A row of the running batch: `cached` of its positions are in the cache, and
/// `pending` is its next input token.
struct Row<'a> {
    seq: Seq<'a>,
    cached: usize,
    pending: u32,
}

struct Running<'a> {
    rows: Vec<Row<'a>>,
    cache: KvCache,
}

/// Greedy search and sampling over sequences that come and go (see the module docs).
pub struct ContinuousBatcher<'a> {
    model: &'a dyn CausalLanguageModel,
    device: Device,
    tokenizer: Option<&'a AutoTokenizer>,
    max_batch: usize,
    prefill_chunk: usize,
    waiting: VecDeque<Seq<'a>>,
    prefill: Option<Prefill<'a>>,
    running: Option<Running<'a>>,
    next_id: SeqId,
    /// Failures found outside a step (a cancel's regather), reported by the next one.
    failed_carry: Vec<BatchEvent>,
}

impl<'a> ContinuousBatcher<'a> {
    /// Prompt tokens run per step by default.
    pub const DEFAULT_PREFILL_CHUNK: usize = 256;

    /// A batcher running at most `max_batch` sequences at once (at least 1).
    pub fn new(model: &'a dyn CausalLanguageModel, device: &Device, max_batch: usize) -> Self {
        Self {
            model,
            device: device.clone(),
            tokenizer: None,
            max_batch: max_batch.max(1),
            prefill_chunk: Self::DEFAULT_PREFILL_CHUNK,
            waiting: VecDeque::new(),
            prefill: None,
            running: None,
            next_id: 0,
            failed_carry: Vec::new(),
        }
    }

    /// The tokenizer `stop_strings` decode with.
    pub fn with_tokenizer(mut self, tokenizer: &'a AutoTokenizer) -> Self {
        self.tokenizer = Some(tokenizer);
        self
    }

    /// Prompt tokens run per step (at least 1).
    pub fn with_prefill_chunk(mut self, tokens: usize) -> Self {
        self.prefill_chunk = tokens.max(1);
        self
    }

    /// Prompt tokens run per step.
    pub fn prefill_chunk(&self) -> usize {
        self.prefill_chunk
    }

    /// Queues a sequence; it joins the batch when there is room. Errors: an invalid
    /// config, beam search, several return sequences, an empty prompt or one that
    /// fills the model's context.
    pub fn add(
        &mut self,
        prompt: Vec<u32>,
        config: &GenerationConfig,
        options: SequenceOptions,
    ) -> Result<SeqId> {
        config.validate()?;
        if config.num_beams > 1 {
            return Err(Error::invalid(
                "continuous batching runs greedy search and sampling, not beam search (num_beams > 1)",
            ));
        }
        if config.num_return_sequences != 1 {
            return Err(Error::invalid(
                "continuous batching runs one sequence per prompt: add the prompt again instead of num_return_sequences",
            ));
        }
        if prompt.is_empty() {
            return Err(Error::invalid("every prompt needs at least one token"));
        }
        let context = self.model.max_context();
        if prompt.len() >= context {
            return Err(Error::invalid(format!(
                "the prompt has {} tokens, which leaves no room in the model's context of {context}",
                prompt.len()
            )));
        }
        let max_new = config.new_tokens_for(prompt.len());
        if max_new == 0 {
            return Err(Error::invalid("max_new_tokens must be at least 1"));
        }
        let eos = config.eos_ids();
        let mut criteria: Vec<Box<dyn StoppingCriteria + 'a>> =
            vec![Box::new(MaxLength::new(max_new))];
        if !eos.is_empty() {
            criteria.push(Box::new(EosToken::new(eos.clone())));
        }
        if let Some(stops) = &config.stop_strings {
            let Some(tok) = self.tokenizer else {
                return Err(Error::invalid(
                    "stop_strings need a tokenizer: build the batcher with with_tokenizer",
                ));
            };
            criteria.push(Box::new(StopStrings::new(stops.clone(), tok)));
        }
        let mut procs = processors::processors(config);
        procs.extend(processors::warpers(config));
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.push_back(Seq {
            id,
            prompt_len: prompt.len(),
            tokens: prompt,
            max_new,
            eos,
            processors: procs,
            criteria,
            do_sample: config.do_sample,
            rng: match config.seed {
                Some(s) => Rng::new(s),
                None => Rng::from_entropy(),
            },
            top_logprobs: options.top_logprobs,
        });
        Ok(id)
    }

    /// Drops a sequence wherever it is (queued, prefilling or running), freeing its
    /// cache rows. False when it is not there (finished, failed or unknown).
    pub fn cancel(&mut self, id: SeqId) -> bool {
        if let Some(i) = self.waiting.iter().position(|s| s.id == id) {
            self.waiting.remove(i);
            return true;
        }
        if self.prefill.as_ref().is_some_and(|p| p.seq.id == id) {
            self.prefill = None;
            return true;
        }
        let found = self
            .running
            .as_ref()
            .is_some_and(|r| r.rows.iter().any(|row| row.seq.id == id));
        if found {
            let mut events = Vec::new();
            self.retain_rows(&|row: &Row<'_>| row.seq.id != id, &mut events);
            // A failed regather fails the rows left (reported by the next `step`).
            self.failed_carry.extend(events);
        }
        found
    }

    /// Sequences queued, prefilling or running.
    pub fn len(&self) -> usize {
        self.waiting.len()
            + usize::from(self.prefill.is_some())
            + self.running.as_ref().map_or(0, |r| r.rows.len())
    }

    /// True when no sequence is left.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows in the running batch.
    pub fn running(&self) -> usize {
        self.running.as_ref().map_or(0, |r| r.rows.len())
    }

    /// Positions the running batch's cache holds (padding included).
    pub fn cache_len(&self) -> usize {
        self.running.as_ref().map_or(0, |r| r.cache.len())
    }

    /// One step: a decode step of the running batch (one token per row), then up to
    /// [`Self::prefill_chunk`] tokens of the waiting prompts. Failures come back as [`BatchEvent::Failed`] for the
    /// sequences they hit; the others go on.
    pub fn step(&mut self) -> Vec<BatchEvent> {
        let mut events = std::mem::take(&mut self.failed_carry);
        if self.running.is_some() {
            self.decode(&mut events);
        }
        // Prompt tokens: up to one chunk per step. A prompt in progress goes on first;
        // then whole waiting prompts that fit what is left run together as one padded
        // batch; a prompt longer than what is left starts in chunks.
        let mut budget = self.prefill_chunk;
        if let Some(p) = self.prefill.take() {
            let n = (p.seq.prompt_len - p.done).min(budget);
            budget -= n;
            let id = p.seq.id;
            if let Err(e) = self.prefill_step(p, n, &mut events) {
                events.push(BatchEvent::Failed {
                    id,
                    message: e.to_string(),
                });
            }
        }
        while budget > 0 && self.prefill.is_none() && !self.waiting.is_empty() {
            let room = self.max_batch.saturating_sub(self.running());
            if room == 0 {
                break;
            }
            let mut group: Vec<Seq<'a>> = Vec::new();
            let mut longest = 0;
            while group.len() < room {
                let Some(next) = self.waiting.front() else {
                    break;
                };
                let width = longest.max(next.prompt_len);
                if (group.len() + 1) * width > budget {
                    break;
                }
                longest = width;
                if let Some(seq) = self.waiting.pop_front() {
                    group.push(seq);
                }
            }
            if group.is_empty() {
                let Some(seq) = self.waiting.pop_front() else {
                    break;
                };
                let p = Prefill {
                    cache: self.model.new_cache(Some(seq.prompt_len)),
                    seq,
                    done: 0,
                };
                let id = p.seq.id;
                if let Err(e) = self.prefill_step(p, budget, &mut events) {
                    events.push(BatchEvent::Failed {
                        id,
                        message: e.to_string(),
                    });
                }
                break;
            }
            budget -= group.len() * longest;
            let ids: Vec<SeqId> = group.iter().map(|s| s.id).collect();
            if let Err(e) = self.prefill_group(group, &mut events) {
                for id in ids {
                    events.push(BatchEvent::Failed {
                        id,
                        message: e.to_string(),
                    });
                }
            }
        }
        events
    }

    /// Runs whole prompts as one left-padded batch, picks their first tokens and moves
    /// those that go on into the running batch.
    fn prefill_group(
        &mut self,
        mut group: Vec<Seq<'a>>,
        events: &mut Vec<BatchEvent>,
    ) -> Result<()> {
        let k = group.len();
        let longest = group.iter().map(|s| s.prompt_len).max().unwrap_or(0);
        let mask: Vec<Vec<u32>> = group
            .iter()
            .map(|s| {
                let mut m = vec![0u32; longest - s.prompt_len];
                m.resize(longest, 1);
                m
            })
            .collect();
        let ids: Vec<u32> = group
            .iter()
            .flat_map(|s| {
                std::iter::repeat_n(0u32, longest - s.prompt_len).chain(s.tokens.iter().copied())
            })
            .collect();
        let positions = position_ids_from_mask(&mask, &self.device)?;
        let flat: Vec<u32> = mask.into_iter().flatten().collect();
        let mask = Tensor::from_vec(flat, (k, longest), &self.device)?;
        let input = Tensor::from_vec(ids, (k, longest), &self.device)?;
        let mut cache = self.model.new_cache(Some(longest));
        let logits = self.model.forward(
            CausalLmInputs {
                input_ids: &input,
                attention_mask: Some(&mask),
                position_ids: Some(&positions),
            },
            Some(&mut cache),
            LogitsMode::Last,
        )?;
        let logits = logits.squeeze(1)?.to_vec2::<f32>()?;
        let mut joining = Vec::new();
        for (i, (mut seq, l)) in group.drain(..).zip(logits).enumerate() {
            match seq.choose(l) {
                Ok((token, logprobs, finished)) => {
                    events.push(BatchEvent::Token {
                        id: seq.id,
                        token,
                        logprobs,
                        finished,
                    });
                    if finished.is_none() {
                        let row = Row {
                            cached: seq.prompt_len,
                            pending: token,
                            seq,
                        };
                        joining.push((i, row));
                    }
                }
                Err(e) => events.push(BatchEvent::Failed {
                    id: seq.id,
                    message: e.to_string(),
                }),
            }
        }
        self.join(joining, &cache)
    }

    /// Runs the next `n` tokens of the prefilling prompt; once the prompt has run, picks
    /// the first token and moves the sequence into the batch.
    fn prefill_step(
        &mut self,
        mut p: Prefill<'a>,
        n: usize,
        events: &mut Vec<BatchEvent>,
    ) -> Result<()> {
        let end = (p.done + n).min(p.seq.prompt_len);
        let chunk = p.seq.tokens[p.done..end].to_vec();
        let n = chunk.len();
        let input = Tensor::from_vec(chunk, (1, n), &self.device)?;
        let logits = self.model.forward(
            CausalLmInputs::ids(&input),
            Some(&mut p.cache),
            LogitsMode::Last,
        )?;
        p.done = end;
        if p.done < p.seq.prompt_len {
            self.prefill = Some(p);
            return Ok(());
        }
        let logits = logits.squeeze(0)?.squeeze(0)?.to_vec1::<f32>()?;
        let (token, logprobs, finished) = p.seq.choose(logits)?;
        events.push(BatchEvent::Token {
            id: p.seq.id,
            token,
            logprobs,
            finished,
        });
        if finished.is_some() {
            return Ok(());
        }
        let joining = Row {
            cached: p.seq.prompt_len,
            pending: token,
            seq: p.seq,
        };
        self.join(vec![(0, joining)], &p.cache)
    }

    /// Adds `rows` (each at its index in `cache`) to the running batch.
    fn join(&mut self, rows: Vec<(usize, Row<'a>)>, cache: &KvCache) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut run = self.running.take().unwrap_or_else(|| Running {
            rows: Vec::new(),
            cache: KvCache::new(0, 0),
        });
        let sources: Vec<(&KvCache, usize, &Row<'_>)> = run
            .rows
            .iter()
            .enumerate()
            .map(|(i, r)| (&run.cache, i, r))
            .chain(rows.iter().map(|(i, r)| (cache, *i, r)))
            .collect();
        match gather(&sources) {
            Ok(merged) => {
                run.cache = merged;
                run.rows.extend(rows.into_iter().map(|(_, r)| r));
                self.running = Some(run);
                Ok(())
            }
            Err(e) => {
                if !run.rows.is_empty() {
                    self.running = Some(run);
                }
                Err(e)
            }
        }
    }

    /// One token for every running row.
    fn decode(&mut self, events: &mut Vec<BatchEvent>) {
        let Some(run) = self.running.as_mut() else {
            return;
        };
        let result = (|| -> Result<Vec<Vec<f32>>> {
            let b = run.rows.len();
            let len = run.cache.len();
            let mut mask = Vec::with_capacity(b * (len + 1));
            for r in &run.rows {
                mask.extend(std::iter::repeat_n(0u32, len - r.cached));
                mask.extend(std::iter::repeat_n(1u32, r.cached + 1));
            }
            let mask = Tensor::from_vec(mask, (b, len + 1), &self.device)?;
            let ids: Vec<u32> = run.rows.iter().map(|r| r.pending).collect();
            let pos: Vec<u32> = run.rows.iter().map(|r| r.cached as u32).collect();
            let ids = Tensor::from_vec(ids, (b, 1), &self.device)?;
            let pos = Tensor::from_vec(pos, (b, 1), &self.device)?;
            let logits = self.model.forward(
                CausalLmInputs {
                    input_ids: &ids,
                    attention_mask: Some(&mask),
                    position_ids: Some(&pos),
                },
                Some(&mut run.cache),
                LogitsMode::Last,
            )?;
            Ok(logits.squeeze(1)?.to_vec2::<f32>()?)
        })();
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                let message = e.to_string();
                for r in &run.rows {
                    events.push(BatchEvent::Failed {
                        id: r.seq.id,
                        message: message.clone(),
                    });
                }
                self.running = None;
                return;
            }
        };
        let mut done = Vec::new();
        for (r, l) in run.rows.iter_mut().zip(logits) {
            r.cached += 1;
            match r.seq.choose(l) {
                Ok((token, logprobs, finished)) => {
                    events.push(BatchEvent::Token {
                        id: r.seq.id,
                        token,
                        logprobs,
                        finished,
                    });
                    r.pending = token;
                    if finished.is_some() {
                        done.push(r.seq.id);
                    }
                }
                Err(e) => {
                    events.push(BatchEvent::Failed {
                        id: r.seq.id,
                        message: e.to_string(),
                    });
                    done.push(r.seq.id);
                }
            }
        }
        if !done.is_empty() {
            self.retain_rows(&|row: &Row<'_>| !done.contains(&row.seq.id), events);
        }
    }

    /// Keeps the running rows `keep` accepts (regathering the cache, which also drops
    /// padding no row needs); if that fails, the rows left fail.
    fn retain_rows(&mut self, keep: &dyn Fn(&Row<'_>) -> bool, events: &mut Vec<BatchEvent>) {
        let Some(run) = self.running.take() else {
            return;
        };
        let kept: Vec<(usize, Row<'a>)> = run
            .rows
            .into_iter()
            .enumerate()
            .filter(|(_, r)| keep(r))
            .collect();
        if kept.is_empty() {
            return;
        }
        let sources: Vec<(&KvCache, usize, &Row<'_>)> =
            kept.iter().map(|(i, r)| (&run.cache, *i, r)).collect();
        let cache = gather(&sources);
        let rows: Vec<Row<'a>> = kept.into_iter().map(|(_, r)| r).collect();
        match cache {
            Ok(cache) => self.running = Some(Running { rows, cache }),
            Err(e) => {
                let message = e.to_string();
                for r in &rows {
                    events.push(BatchEvent::Failed {
                        id: r.seq.id,
                        message: message.clone(),
                    });
                }
            }
        }
    }
}

/// A cache for `rows` (row `index` of its source cache each): every row's cached
/// positions, aligned at the end, with room for the longest remaining generation.
fn gather(rows: &[(&KvCache, usize, &Row<'_>)]) -> Result<KvCache> {
    let len = rows.iter().map(|(_, _, r)| r.cached).max().unwrap_or(0);
    let room = rows
        .iter()
        .map(|(_, _, r)| r.seq.max_new.saturating_sub(r.seq.generated()) + 1)
        .max()
        .unwrap_or(1);
    let spec: Vec<CacheRow<'_>> = rows
        .iter()
        .map(|&(cache, row, r)| CacheRow {
            cache,
            row,
            keep: r.cached,
        })
        .collect();
    KvCache::gather(&spec, len + room)
}
