//! Beam search beyond the recorded Python cases (decoder_parity.rs checks `beam` and
//! `beam_eos` of every family): for every early_stopping mode and several
//! length_penalty values, each returned sequence's score is its new tokens'
//! log-probabilities (recomputed with a full forward pass) summed and divided by
//! (new tokens) ^ length_penalty; sequences come best first; searching longer never
//! gives a worse best hypothesis (true ≤ false ≤ "never" with length_penalty > 0); beam
//! sampling is reproducible with a seed.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use serde_json::{json, Value};

use rustformers_generation::processors::log_softmax;
use rustformers_generation::{generate, GenerateOutput, GenerationConfig};
use rustformers_models::{
    AutoModelForCausalLM, CausalLanguageModel, CausalLmInputs, LogitsMode, PreTrainedModel,
};

struct Tiny {
    model: PreTrainedModel<dyn CausalLanguageModel>,
    base: GenerationConfig,
    prompts: Vec<Vec<u32>>,
    /// An eos the model produces for prompt 1 (the fixture's `beam_eos`).
    eos: u32,
}

fn tiny(name: &str) -> Tiny {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name);
    let model = AutoModelForCausalLM::from_pretrained(dir.to_str().unwrap()).unwrap();
    let files = rustformers_core::ModelFiles::resolve(dir.to_str().unwrap()).unwrap();
    let base = GenerationConfig::from_files(&files, model.config.base()).unwrap();
    let exp: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let prompts = exp["beam"]["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"].as_str().unwrap().starts_with("single"))
        .map(|c| {
            serde_json::from_value::<Vec<Vec<u32>>>(c["input_ids"].clone()).unwrap()[0].clone()
        })
        .collect();
    let eos = exp["beam_eos"]["kwargs"]["eos_token_id"].as_u64().unwrap() as u32;
    Tiny {
        model,
        base,
        prompts,
        eos,
    }
}

fn run(t: &Tiny, kwargs: Value) -> (GenerationConfig, GenerateOutput) {
    let config = t.base.with_overrides(kwargs.as_object().unwrap()).unwrap();
    let out = generate(
        t.model.model.as_ref(),
        &t.prompts,
        &config,
        &Device::Cpu,
        None,
    )
    .unwrap();
    (config, out)
}

/// Sum of log-probabilities of the new tokens of `sequence` after `prompt_len`.
fn log_prob(model: &dyn CausalLanguageModel, sequence: &[u32], prompt_len: usize) -> f64 {
    let ids = Tensor::from_vec(sequence.to_vec(), (1, sequence.len()), &Device::Cpu).unwrap();
    let logits = model
        .forward(CausalLmInputs::ids(&ids), None, LogitsMode::All)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    (prompt_len..sequence.len())
        .map(|i| log_softmax(&logits[i - 1])[sequence[i] as usize] as f64)
        .sum()
}

#[test]
fn scores_are_length_penalised_log_probabilities() {
    let t = tiny("tiny-llama");
    let mut finished_early = 0;
    for early in [json!(true), json!(false), json!("never")] {
        for lp in [1.0, 2.0, -0.5, 0.0] {
            let (config, out) = run(
                &t,
                json!({"num_beams": 4, "num_return_sequences": 3, "max_new_tokens": 8,
                       "length_penalty": lp, "early_stopping": early, "eos_token_id": t.eos}),
            );
            let what = format!("early_stopping {early} length_penalty {lp}");
            assert_eq!(out.sequences.len(), t.prompts.len() * 3, "{what}");
            let scores = out.sequences_scores.as_ref().unwrap();
            for (i, seq) in out.sequences.iter().enumerate() {
                let p = i / 3;
                let new = &out.new_tokens[i];
                assert_eq!(seq[..t.prompts[p].len()], t.prompts[p][..], "{what}");
                assert!(!new.is_empty() && new.len() <= 8, "{what}");
                // eos only at the end, and only then may a sequence be short.
                let ends_on_eos = new.last() == Some(&t.eos);
                assert!(!new[..new.len() - 1].contains(&t.eos), "{what}");
                assert!(ends_on_eos || new.len() == 8, "{what}: {new:?}");
                finished_early += usize::from(ends_on_eos && new.len() < 8);
                let want = log_prob(t.model.model.as_ref(), seq, t.prompts[p].len())
                    / (new.len() as f64).powf(config.length_penalty);
                assert!(
                    (scores[i] as f64 - want).abs() <= 1e-4,
                    "{what}: row {i} score {} vs recomputed {want}",
                    scores[i]
                );
                if i % 3 > 0 {
                    assert!(scores[i] <= scores[i - 1], "{what}: best first");
                }
            }
        }
    }
    assert!(finished_early > 0, "some hypotheses end on eos");
}

#[test]
fn searching_longer_never_finds_worse() {
    let mut strict = 0;
    for name in ["tiny-qwen3", "tiny-gpt2", "tiny-llama-rope-dynamic"] {
        let t = tiny(name);
        let best = |early: Value| -> Vec<f32> {
            let (_, out) = run(
                &t,
                json!({"num_beams": 3, "max_new_tokens": 16, "length_penalty": 2.0,
                       "early_stopping": early, "eos_token_id": t.eos}),
            );
            out.sequences_scores.unwrap()
        };
        let (a, b, c) = (best(json!(true)), best(json!(false)), best(json!("never")));
        for p in 0..a.len() {
            assert!(a[p] <= b[p] && b[p] <= c[p], "{name}: {a:?} {b:?} {c:?}");
            strict += usize::from(a[p] < b[p]);
        }
    }
    // early_stopping=true stops with worse hypotheses at least once here.
    assert!(strict > 0);
}

#[test]
fn beam_sampling_is_seeded() {
    let t = tiny("tiny-llama");
    let kwargs = |seed: u64| {
        json!({"num_beams": 3, "num_return_sequences": 2, "do_sample": true,
               "max_new_tokens": 8, "top_k": 0, "temperature": 1.5, "seed": seed})
    };
    let (_, a) = run(&t, kwargs(1));
    let (_, b) = run(&t, kwargs(1));
    let (_, c) = run(&t, kwargs(2));
    assert_eq!(a, b);
    assert_ne!(a.sequences, c.sequences);
    assert_eq!(a.sequences.len(), 4);
    let scores = a.sequences_scores.unwrap();
    assert!(
        scores.iter().all(|s| s.is_finite() && *s < 0.0),
        "{scores:?}"
    );
}

#[test]
fn invalid_beam_options_are_errors() {
    let t = tiny("tiny-llama");
    for (kwargs, needle) in [
        (
            json!({"num_beams": 2, "num_return_sequences": 3}),
            "num_return_sequences",
        ),
        (
            json!({"num_beams": 2, "early_stopping": "sometimes"}),
            "early_stopping",
        ),
    ] {
        let config = t.base.with_overrides(kwargs.as_object().unwrap()).unwrap();
        let err = generate(
            t.model.model.as_ref(),
            &t.prompts,
            &config,
            &Device::Cpu,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(needle), "{err}");
    }
}
