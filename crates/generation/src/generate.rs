//! `generate()`: greedy search and sampling over a batch of prompts of different
//! lengths (left padding, position ids from the mask as Python computes them), with the
//! KV cache: the prompt is run once, then one token per step.

use candle_core::{Device, Tensor};

use rustformers_core::rotary::position_ids_from_mask;
use rustformers_core::{Error, Result};
use rustformers_models::{CausalLanguageModel, CausalLmInputs, LogitsMode};

use crate::config::GenerationConfig;
use crate::processors::{self, softmax, LogitsProcessor};
use crate::sampling::{sample, Rng};

/// What `generate` returns, one entry per prompt (× `num_return_sequences`).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOutput {
    /// Prompt tokens (no padding) followed by the generated tokens (through eos).
    pub sequences: Vec<Vec<u32>>,
    /// The generated tokens alone.
    pub new_tokens: Vec<Vec<u32>>,
}

/// Called after each step with (row, token); returning `false` stops that row.
pub type TokenCallback<'a> = dyn FnMut(usize, u32) -> bool + 'a;

/// Generates continuations of `prompts` with `config` (validated first).
pub fn generate(
    model: &dyn CausalLanguageModel,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
    device: &Device,
    mut on_token: Option<&mut TokenCallback<'_>>,
) -> Result<GenerateOutput> {
    config.validate()?;
    if config.num_beams > 1 {
        return Err(Error::Unsupported(
            "beam search is not implemented yet (num_beams > 1)".into(),
        ));
    }
    if prompts.is_empty() {
        return Ok(GenerateOutput {
            sequences: vec![],
            new_tokens: vec![],
        });
    }
    if prompts.iter().any(Vec::is_empty) {
        return Err(Error::invalid("every prompt needs at least one token"));
    }
    // num_return_sequences with sampling: each prompt repeated.
    let copies = if config.do_sample {
        config.num_return_sequences
    } else {
        1
    };
    let rows: Vec<Vec<u32>> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.clone(), copies))
        .collect();
    let b = rows.len();
    let longest = rows.iter().map(Vec::len).max().unwrap_or(0);
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
    let eos = config.eos_ids();
    let pad = config.pad_id().unwrap_or(0);
    let processors: Vec<Box<dyn LogitsProcessor>> = processors::from_config(config);
    let mut rng = match config.seed {
        Some(s) => Rng::new(s),
        None => Rng::from_entropy(),
    };

    // Left-padded prompt batch.
    let mut mask: Vec<Vec<u32>> = rows
        .iter()
        .map(|r| {
            let mut m = vec![0u32; longest - r.len()];
            m.extend(std::iter::repeat_n(1, r.len()));
            m
        })
        .collect();
    let ids: Vec<u32> = rows
        .iter()
        .flat_map(|r| std::iter::repeat_n(pad, longest - r.len()).chain(r.iter().copied()))
        .collect();
    let mut input = Tensor::from_vec(ids, (b, longest), device)?;
    let mut positions = position_ids_from_mask(&mask, device)?;
    let mut next_pos: Vec<u32> = rows.iter().map(|r| r.len() as u32).collect();
    let mut cache = model.new_cache(Some(longest + max_new));
    let mut tokens: Vec<Vec<u32>> = rows.clone();
    let mut generated: Vec<Vec<u32>> = vec![Vec::new(); b];
    let mut finished = vec![false; b];

    for step in 0..max_new {
        let flat: Vec<u32> = mask.iter().flatten().copied().collect();
        let mask_t = Tensor::from_vec(flat, (b, mask[0].len()), device)?;
        let logits = model.forward(
            CausalLmInputs {
                input_ids: &input,
                attention_mask: Some(&mask_t),
                position_ids: Some(&positions),
            },
            Some(&mut cache),
            LogitsMode::Last,
        )?;
        let logits = logits.squeeze(1)?.to_vec2::<f32>()?;
        let mut next = Vec::with_capacity(b);
        for (row, mut scores) in logits.into_iter().enumerate() {
            if finished[row] {
                next.push(pad);
                continue;
            }
            for p in &processors {
                p.process(&tokens[row], step, &mut scores);
            }
            let t = if config.do_sample {
                sample(&softmax(&scores), &mut rng)
            } else {
                crate::argmax(&scores)
            } as u32;
            next.push(t);
            tokens[row].push(t);
            generated[row].push(t);
            let mut stop = eos.contains(&t);
            if let Some(cb) = on_token.as_deref_mut() {
                if !cb(row, t) {
                    stop = true;
                }
            }
            if stop {
                finished[row] = true;
            }
        }
        if finished.iter().all(|f| *f) {
            break;
        }
        for m in mask.iter_mut() {
            m.push(1);
        }
        input = Tensor::from_vec(next, (b, 1), device)?;
        positions = Tensor::from_vec(next_pos.clone(), (b, 1), device)?;
        for p in next_pos.iter_mut() {
            *p += 1;
        }
    }
    Ok(GenerateOutput {
        sequences: tokens,
        new_tokens: generated,
    })
}
