//! Continuous batching: sequences that join a running batch at different steps, with
//! prompts of different lengths run in chunks, each get the tokens `generate()` gives
//! their prompt alone (greedy and seeded sampling); a long prompt runs one chunk per step
//! while the running rows keep getting a token every step, and short prompts share a
//! step's chunk; cancelled and finished rows
//! leave the batch; log-probabilities are the model's; bad requests are errors.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use serde_json::{json, Value};

use rustformers_generation::processors::log_softmax;
use rustformers_generation::{
    generate, BatchEvent, ContinuousBatcher, FinishReason, GenerationConfig, SeqId, SequenceOptions,
};
use rustformers_models::{
    AutoModelForCausalLM, CausalLanguageModel, CausalLmInputs, LogitsMode, PreTrainedModel,
};

fn tiny() -> (PreTrainedModel<dyn CausalLanguageModel>, GenerationConfig) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama");
    let model = AutoModelForCausalLM::from_pretrained(dir.to_str().unwrap()).unwrap();
    let files = rustformers_core::ModelFiles::resolve(dir.to_str().unwrap()).unwrap();
    let base = GenerationConfig::from_files(&files, model.config.base()).unwrap();
    (model, base)
}

fn with(base: &GenerationConfig, kwargs: Value) -> GenerationConfig {
    base.with_overrides(kwargs.as_object().unwrap()).unwrap()
}

/// A prompt of `n` ids spread over the vocabulary (skipping the special ids below 3).
fn prompt(n: usize, salt: u32, vocab: usize) -> Vec<u32> {
    (0..n as u32)
        .map(|i| 3 + (i * 37 + salt * 101) % (vocab as u32 - 3))
        .collect()
}

/// Steps until every sequence finished, collecting each one's tokens; `before_step` may
/// add or cancel sequences before step `i`.
fn drive(
    b: &mut ContinuousBatcher<'_>,
    tokens: &mut HashMap<SeqId, Vec<u32>>,
    mut before_step: impl FnMut(usize, &mut ContinuousBatcher<'_>),
) {
    for i in 0..10_000 {
        before_step(i, b);
        if b.is_empty() && i > 12 {
            return;
        }
        for e in b.step() {
            match e {
                BatchEvent::Token { id, token, .. } => tokens.entry(id).or_default().push(token),
                BatchEvent::Failed { id, message } => panic!("{id}: {message}"),
            }
        }
    }
    panic!("the batch never emptied");
}

#[test]
fn sequences_joining_at_different_steps_get_their_generate_tokens() {
    let (model, base) = tiny();
    let m = model.model.as_ref();
    let vocab = m.vocab_size();
    let dev = Device::Cpu;
    // (prompt length, config, step at which it joins)
    let cases: Vec<(usize, GenerationConfig, usize)> = vec![
        (
            5,
            with(&base, json!({"max_new_tokens": 12, "do_sample": false})),
            0,
        ),
        (
            17,
            with(&base, json!({"max_new_tokens": 5, "do_sample": false})),
            0,
        ),
        (
            9,
            with(
                &base,
                json!({"max_new_tokens": 9, "do_sample": true, "temperature": 0.8, "top_k": 20, "seed": 7}),
            ),
            2,
        ),
        (
            23,
            with(
                &base,
                json!({"max_new_tokens": 7, "do_sample": false, "repetition_penalty": 1.3}),
            ),
            3,
        ),
        (
            2,
            with(&base, json!({"max_new_tokens": 10, "do_sample": false})),
            11,
        ),
    ];
    let prompts: Vec<Vec<u32>> = cases
        .iter()
        .enumerate()
        .map(|(i, (n, _, _))| prompt(*n, i as u32, vocab))
        .collect();
    let mut b = ContinuousBatcher::new(m, &dev, 8).with_prefill_chunk(4);
    let mut ids = vec![None; cases.len()];
    let mut tokens = HashMap::new();
    let mut most = 0;
    drive(&mut b, &mut tokens, |step, b| {
        for (i, (_, config, at)) in cases.iter().enumerate() {
            if *at == step {
                ids[i] = Some(
                    b.add(prompts[i].clone(), config, SequenceOptions::default())
                        .unwrap(),
                );
            }
        }
        most = most.max(b.running());
    });
    assert!(most >= 3, "at most {most} rows ran together");
    for (i, (_, config, _)) in cases.iter().enumerate() {
        let alone = generate(m, std::slice::from_ref(&prompts[i]), config, &dev, None).unwrap();
        let got = &tokens[&ids[i].unwrap()];
        assert_eq!(got, &alone.new_tokens[0], "sequence {i}");
    }
    // Everything left the batch.
    assert_eq!((b.running(), b.cache_len()), (0, 0));
}

#[test]
fn a_long_prompt_runs_one_chunk_per_step_while_the_batch_streams() {
    let (model, base) = tiny();
    let m = model.model.as_ref();
    let dev = Device::Cpu;
    let vocab = m.vocab_size();
    let greedy = with(
        &base,
        json!({"max_new_tokens": 40, "do_sample": false, "eos_token_id": []}),
    );
    let mut b = ContinuousBatcher::new(m, &dev, 4).with_prefill_chunk(8);
    let a = b
        .add(prompt(6, 1, vocab), &greedy, SequenceOptions::default())
        .unwrap();
    // A's prompt is one chunk: its first token comes with the first step.
    let first = b.step();
    assert!(matches!(first[..], [BatchEvent::Token { id, .. }] if id == a));
    let long = b
        .add(prompt(61, 2, vocab), &greedy, SequenceOptions::default())
        .unwrap();
    // 61 prompt tokens: 8 chunks of 8; A gets a token in each of those steps, and the
    // long prompt's first token comes with the eighth.
    for step in 1..=8 {
        let events = b.step();
        let a_tokens = events
            .iter()
            .filter(|e| matches!(e, BatchEvent::Token { id, .. } if *id == a))
            .count();
        assert_eq!(a_tokens, 1, "step {step}");
        let long_tokens = events
            .iter()
            .filter(|e| matches!(e, BatchEvent::Token { id, .. } if *id == long))
            .count();
        assert_eq!(long_tokens, usize::from(step == 8), "step {step}");
    }
    assert_eq!(b.running(), 2);
    // Short prompts share a step's chunk: three of 2 tokens all start in the next step
    // (and the batch's cap of 4 holds the last one back).
    let short: Vec<SeqId> = (0..3)
        .map(|i| {
            b.add(
                prompt(2, 10 + i, vocab),
                &greedy,
                SequenceOptions::default(),
            )
            .unwrap()
        })
        .collect();
    let events = b.step();
    let started = |id: SeqId| {
        events
            .iter()
            .any(|e| matches!(e, BatchEvent::Token { id: x, .. } if *x == id))
    };
    assert!(started(short[0]) && started(short[1]) && !started(short[2]));
    assert_eq!(b.running(), 4);
}

#[test]
fn cancelled_and_finished_rows_leave_the_batch() {
    let (model, base) = tiny();
    let m = model.model.as_ref();
    let dev = Device::Cpu;
    let vocab = m.vocab_size();
    let config = with(
        &base,
        json!({"max_new_tokens": 20, "do_sample": false, "eos_token_id": []}),
    );
    let short = with(
        &base,
        json!({"max_new_tokens": 3, "do_sample": false, "eos_token_id": []}),
    );
    let mut b = ContinuousBatcher::new(m, &dev, 2).with_prefill_chunk(64);
    let opts = SequenceOptions::default();
    let p: Vec<Vec<u32>> = (0..4).map(|i| prompt(4 + 3 * i, i as u32, vocab)).collect();
    let keep = b.add(p[0].clone(), &config, opts).unwrap();
    let gone = b.add(p[1].clone(), &config, opts).unwrap();
    let quick = b.add(p[2].clone(), &short, opts).unwrap();
    let last = b.add(p[3].clone(), &config, opts).unwrap();
    let mut tokens: HashMap<SeqId, Vec<u32>> = HashMap::new();
    let mut finish = HashMap::new();
    for step in 0..200 {
        if step == 4 {
            assert!(b.cancel(gone));
            assert!(!b.cancel(gone));
        }
        assert!(b.running() <= 2, "max_batch is 2");
        for e in b.step() {
            if let BatchEvent::Token {
                id,
                token,
                finished,
                ..
            } = e
            {
                tokens.entry(id).or_default().push(token);
                if let Some(f) = finished {
                    finish.insert(id, f);
                }
            }
        }
        if b.is_empty() {
            break;
        }
    }
    assert!(b.is_empty());
    // Its prompt ran in step 0 (with the first one: both fit the chunk), then it decoded
    // in steps 1 to 3: four tokens before the cancel.
    assert_eq!(tokens[&gone].len(), 4, "cancelled after its fourth token");
    assert_eq!(finish[&quick], FinishReason::Length);
    assert_eq!(tokens[&quick].len(), 3);
    for (id, i, c) in [(keep, 0, &config), (quick, 2, &short), (last, 3, &config)] {
        let alone = generate(m, std::slice::from_ref(&p[i]), c, &dev, None).unwrap();
        assert_eq!(tokens[&id], alone.new_tokens[0], "sequence {i}");
        assert!(finish.contains_key(&id));
    }
}

#[test]
fn logprobs_are_the_models_log_softmax() {
    let (model, base) = tiny();
    let m = model.model.as_ref();
    let dev = Device::Cpu;
    let p = prompt(7, 3, m.vocab_size());
    let config = with(&base, json!({"max_new_tokens": 1, "do_sample": false}));
    let mut b = ContinuousBatcher::new(m, &dev, 2);
    let id = b
        .add(
            p.clone(),
            &config,
            SequenceOptions {
                top_logprobs: Some(4),
            },
        )
        .unwrap();
    let events = b.step();
    let [BatchEvent::Token {
        id: got,
        token,
        logprobs: Some(lp),
        finished: Some(FinishReason::Length),
    }] = &events[..]
    else {
        panic!("{events:?}");
    };
    assert_eq!(*got, id);
    let input = Tensor::new(p.as_slice(), &dev)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = m
        .forward(CausalLmInputs::ids(&input), None, LogitsMode::Last)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let want = log_softmax(&logits);
    assert!((lp.logprob - want[*token as usize]).abs() < 1e-5);
    assert_eq!(lp.top.len(), 4);
    assert_eq!(lp.top[0].0, *token, "greedy picks the most likely");
    let mut sorted: Vec<(usize, f32)> = want.iter().copied().enumerate().collect();
    sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
    for ((t, l), (wt, wl)) in lp.top.iter().zip(&sorted) {
        assert_eq!(*t as usize, *wt);
        assert!((l - wl).abs() < 1e-5);
    }
}

#[test]
fn bad_requests_are_errors() {
    let (model, base) = tiny();
    let m = model.model.as_ref();
    let mut b = ContinuousBatcher::new(m, &Device::Cpu, 2);
    let opts = SequenceOptions::default();
    let beams = with(&base, json!({"num_beams": 2}));
    assert!(b.add(vec![5, 6], &beams, opts).is_err());
    let n2 = with(&base, json!({"num_return_sequences": 2, "do_sample": true}));
    assert!(b.add(vec![5, 6], &n2, opts).is_err());
    assert!(b.add(Vec::new(), &base, opts).is_err());
    let too_long = vec![5u32; m.max_context()];
    assert!(b.add(too_long, &base, opts).is_err());
    let stops = with(&base, json!({"stop_strings": ["x"]}));
    assert!(
        b.add(vec![5, 6], &stops, opts).is_err(),
        "stop strings without a tokenizer"
    );
    assert!(b.is_empty());
    assert!(b.step().is_empty());
}
