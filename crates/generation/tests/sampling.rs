//! Sampling statistics: with temperature, top_k, top_p and min_p, only the tokens the
//! warpers keep are drawn, and each token's frequency over N draws is within 5 binomial
//! standard deviations of its probability after filtering — on fixed logits (the
//! expected distribution from Python's recorded processor chains, or computed here
//! independently) and through `generate()` on a tiny model. A seed reproduces the same
//! tokens; another seed gives others.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use serde_json::Value;

use rustformers_generation::processors::{self, softmax};
use rustformers_generation::sampling::{sample, Rng};
use rustformers_generation::{generate, GenerationConfig};
use rustformers_models::{
    AutoModelForCausalLM, CausalLanguageModel, CausalLmInputs, LogitsMode, PreTrainedModel,
};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn float(v: &Value) -> f32 {
    match v {
        Value::Number(n) => n.as_f64().unwrap() as f32,
        Value::String(s) if s == "-inf" => f32::NEG_INFINITY,
        other => panic!("not a float: {other}"),
    }
}

fn config(kwargs: Value) -> GenerationConfig {
    GenerationConfig::default()
        .with_overrides(kwargs.as_object().unwrap())
        .unwrap()
}

/// Probabilities in f64 of `logits` where finite (softmax), zero where `-inf`.
fn probabilities(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = logits
        .iter()
        .map(|&l| {
            if l == f32::NEG_INFINITY {
                0.0
            } else {
                (l as f64 - max).exp()
            }
        })
        .collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

/// Every count is of an allowed token (p > 0) and within 5 sd of n·p.
fn check_counts(what: &str, counts: &[usize], expected: &[f64]) {
    let n: usize = counts.iter().sum();
    let nf = n as f64;
    for (t, (&c, &p)) in counts.iter().zip(expected).enumerate() {
        if p == 0.0 {
            assert_eq!(
                c, 0,
                "{what}: token {t} is filtered out but was drawn {c} times"
            );
            continue;
        }
        let f = c as f64 / nf;
        let sd = (p * (1.0 - p) / nf).sqrt();
        assert!(
            (f - p).abs() <= 5.0 * sd + 1e-9,
            "{what}: token {t} drawn with frequency {f}, probability {p} (5 sd = {})",
            5.0 * sd
        );
    }
}

/// Draws `n` tokens from `logits` through the config's processors.
fn draw(
    config: &GenerationConfig,
    tokens: &[u32],
    logits: &[f32],
    n: usize,
    seed: u64,
) -> Vec<usize> {
    let list = processors::from_config(config);
    let mut scores = logits.to_vec();
    processors::apply(&list, tokens, 0, &mut scores);
    let probs = softmax(&scores);
    let mut rng = Rng::new(seed);
    let mut counts = vec![0usize; logits.len()];
    for _ in 0..n {
        counts[sample(&probs, &mut rng)] += 1;
    }
    counts
}

#[test]
fn draws_follow_pythons_filtered_distributions() {
    let f: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("logits-processors.json")).unwrap(),
    )
    .unwrap();
    let input: Vec<Vec<u32>> = serde_json::from_value(f["input_ids"].clone()).unwrap();
    let mut checked = 0;
    for chain in f["chains"].as_array().unwrap() {
        let mut kwargs = chain["generation_config"].clone();
        if kwargs["num_beams"].as_u64().unwrap_or(1) > 1 {
            continue; // beam sampling draws over all beams (tests/beam_search.rs)
        }
        kwargs["eos_token_id"] = 2.into();
        let cfg = config(kwargs.clone());
        for (r, row) in f["scores"].as_array().unwrap().iter().enumerate() {
            let logits: Vec<f32> = row.as_array().unwrap().iter().map(float).collect();
            let python: Vec<f32> = chain["output"][r]
                .as_array()
                .unwrap()
                .iter()
                .map(float)
                .collect();
            let counts = draw(&cfg, &input[r], &logits, 100_000, 11 + r as u64);
            check_counts(
                &format!("{kwargs} row {r}"),
                &counts,
                &probabilities(&python),
            );
            checked += 1;
        }
    }
    assert!(checked >= 6);
}

/// The filtered distributions computed here from the definitions (f64, sorted lists),
/// independently of the processors.
#[test]
fn top_k_top_p_min_p_alone() {
    let logits = [2.0f32, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0, 0.75, 1.25];
    let order = {
        let mut o: Vec<usize> = (0..logits.len()).collect();
        o.sort_by(|a, b| logits[*b].total_cmp(&logits[*a]));
        o
    };
    let keep_only = |keep: &[usize], temperature: f32| -> Vec<f64> {
        let l: Vec<f32> = logits
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                if keep.contains(&i) {
                    x / temperature
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
        probabilities(&l)
    };
    let full = probabilities(&logits);
    // top_k 3: the three largest.
    let cases: Vec<(Value, Vec<f64>)> = vec![
        (
            serde_json::json!({"do_sample": true, "top_k": 3}),
            keep_only(&order[..3], 1.0),
        ),
        // top_p 0.7 (top_k off): the smallest prefix by probability reaching 0.7.
        (
            serde_json::json!({"do_sample": true, "top_k": 0, "top_p": 0.7}),
            {
                let mut cum = 0.0;
                let n = order
                    .iter()
                    .position(|&i| {
                        cum += full[i];
                        cum >= 0.7
                    })
                    .unwrap()
                    + 1;
                keep_only(&order[..n], 1.0)
            },
        ),
        // min_p 0.3: tokens with at least 0.3 × the top probability.
        (
            serde_json::json!({"do_sample": true, "top_k": 0, "min_p": 0.3}),
            {
                let top = full[order[0]];
                let keep: Vec<usize> = (0..logits.len())
                    .filter(|&i| full[i] >= 0.3 * top)
                    .collect();
                keep_only(&keep, 1.0)
            },
        ),
        // temperature 0.5 then top_k 4: the four largest, sharpened.
        (
            serde_json::json!({"do_sample": true, "temperature": 0.5, "top_k": 4}),
            keep_only(&order[..4], 0.5),
        ),
        // temperature 2 alone (top_k 0): every token, flattened.
        (
            serde_json::json!({"do_sample": true, "temperature": 2.0, "top_k": 0}),
            keep_only(&order, 2.0),
        ),
    ];
    for (i, (kwargs, expected)) in cases.into_iter().enumerate() {
        let counts = draw(
            &config(kwargs.clone()),
            &[1],
            &logits,
            200_000,
            100 + i as u64,
        );
        check_counts(&kwargs.to_string(), &counts, &expected);
    }
}

#[test]
fn seeds_reproduce_draws() {
    let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
    let cfg = config(serde_json::json!({"do_sample": true, "top_k": 0}));
    let seq = |seed: u64| -> Vec<usize> {
        let probs = softmax(&logits);
        let mut rng = Rng::new(seed);
        (0..64).map(|_| sample(&probs, &mut rng)).collect()
    };
    assert_eq!(seq(5), seq(5));
    assert_ne!(seq(5), seq(6));
    assert_eq!(
        draw(&cfg, &[], &logits, 1000, 9),
        draw(&cfg, &[], &logits, 1000, 9)
    );
}

fn tiny_llama() -> (PreTrainedModel<dyn CausalLanguageModel>, Vec<u32>) {
    let dir = fixtures().join("tiny-llama");
    let model = AutoModelForCausalLM::from_pretrained(dir.to_str().unwrap()).unwrap();
    let exp: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let case = &exp["greedy"]["cases"][1];
    let prompt: Vec<u32> = serde_json::from_value(case["input_ids"][0].clone()).unwrap();
    (model, prompt)
}

/// `generate()` with sampling: the first new token of many copies of one prompt
/// (num_return_sequences) follows the model's next-token distribution after
/// temperature, top_k and top_p.
#[test]
fn generate_samples_the_filtered_distribution() {
    let (model, prompt) = tiny_llama();
    let n = 4000;
    let cfg = config(serde_json::json!({
        "do_sample": true, "temperature": 0.8, "top_k": 20, "top_p": 0.9,
        "max_new_tokens": 1, "num_return_sequences": n, "seed": 3
    }));
    let out = generate(
        model.model.as_ref(),
        std::slice::from_ref(&prompt),
        &cfg,
        &Device::Cpu,
        None,
    )
    .unwrap();
    assert_eq!(out.new_tokens.len(), n);
    let t = Tensor::from_vec(prompt.clone(), (1, prompt.len()), &Device::Cpu).unwrap();
    let mut logits = model
        .model
        .forward(CausalLmInputs::ids(&t), None, LogitsMode::Last)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    processors::apply(&processors::from_config(&cfg), &prompt, 0, &mut logits);
    let expected = probabilities(&logits);
    assert!(expected.iter().filter(|p| **p > 0.0).count() >= 3);
    let mut counts = vec![0usize; logits.len()];
    for t in &out.new_tokens {
        counts[t[0] as usize] += 1;
    }
    check_counts("generate", &counts, &expected);
}

#[test]
fn generate_seed_reproduces_tokens() {
    let (model, prompt) = tiny_llama();
    let run = |seed: u64| {
        let cfg = config(serde_json::json!({
            "do_sample": true, "temperature": 1.5, "top_k": 0,
            "max_new_tokens": 12, "seed": seed
        }));
        generate(
            model.model.as_ref(),
            std::slice::from_ref(&prompt),
            &cfg,
            &Device::Cpu,
            None,
        )
        .unwrap()
        .new_tokens
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43));
}
