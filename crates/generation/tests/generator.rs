//! The step-by-step `Generator`: its token iterator gives exactly `generate()`'s tokens
//! (greedy over a padded batch where a row ends early on eos, seeded sampling with
//! several sequences per prompt, beam search at the end); the callback can stop a row;
//! stop strings end a row at the first token whose decoded text contains one.

use std::path::PathBuf;

use candle_core::Device;
use serde_json::{json, Value};

use rustformers_core::AutoTokenizer;
use rustformers_generation::{
    generate, GenerateOutput, GenerationConfig, Generator, StopStrings, StoppingCriteria,
};
use rustformers_models::{AutoModelForCausalLM, CausalLanguageModel, PreTrainedModel};

struct Tiny {
    model: PreTrainedModel<dyn CausalLanguageModel>,
    tokenizer: AutoTokenizer,
    base: GenerationConfig,
    prompts: Vec<Vec<u32>>,
    /// The fixture's expected.json (Python's recordings).
    expected: Value,
}

fn tiny(name: &str) -> Tiny {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name);
    let model = AutoModelForCausalLM::from_pretrained(dir.to_str().unwrap()).unwrap();
    let files = rustformers_core::ModelFiles::resolve(dir.to_str().unwrap()).unwrap();
    let base = GenerationConfig::from_files(&files, model.config.base()).unwrap();
    let tokenizer = AutoTokenizer::from_files(&files).unwrap();
    let exp: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let prompts = exp["greedy"]["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"].as_str().unwrap().starts_with("single"))
        .map(|c| {
            serde_json::from_value::<Vec<Vec<u32>>>(c["input_ids"].clone()).unwrap()[0].clone()
        })
        .collect();
    Tiny {
        model,
        tokenizer,
        base,
        prompts,
        expected: exp,
    }
}

fn with(base: &GenerationConfig, kwargs: Value) -> GenerationConfig {
    base.with_overrides(kwargs.as_object().unwrap()).unwrap()
}

/// Runs the iterator, gathering the tokens per row; then the output it ends with.
fn stream(t: &Tiny, config: &GenerationConfig) -> (Vec<Vec<u32>>, GenerateOutput) {
    let g = Generator::new(t.model.model.as_ref(), &t.prompts, config, &Device::Cpu).unwrap();
    let mut rows = vec![Vec::new(); g.num_rows()];
    let mut s = g.stream();
    for item in s.by_ref() {
        let (row, token) = item.unwrap();
        rows[row].push(token);
    }
    (rows, s.into_output().unwrap())
}

#[test]
fn stream_equals_generate() {
    let t = tiny("tiny-qwen2");
    // Python's greedy_eos: an eos id the second prompt really reaches before 12 tokens.
    let eos_run = &t.expected["greedy_eos"];
    let eos_kwargs = eos_run["kwargs"].clone();
    let single1 = eos_run["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "single-1")
        .unwrap();
    let prompt_len = single1["input_ids"][0].as_array().unwrap().len();
    let python_row: Vec<u32> = serde_json::from_value(single1["sequences"][0].clone()).unwrap();
    let configs = [
        // Greedy: the second prompt reaches the eos id early (greedy_eos).
        eos_kwargs.clone(),
        json!({"do_sample": true, "max_new_tokens": 10, "num_return_sequences": 3,
               "temperature": 1.3, "top_k": 0, "seed": 17}),
    ];
    for kwargs in configs {
        let config = with(&t.base, kwargs.clone());
        let want = generate(
            t.model.model.as_ref(),
            &t.prompts,
            &config,
            &Device::Cpu,
            None,
        )
        .unwrap();
        let (rows, out) = stream(&t, &config);
        assert_eq!(rows, want.new_tokens, "{kwargs}");
        assert_eq!(out, want, "{kwargs}");
        // The callback sees the same tokens.
        let mut seen = vec![Vec::new(); want.new_tokens.len()];
        let mut cb = |row: usize, token: u32| {
            seen[row].push(token);
            true
        };
        let again = generate(
            t.model.model.as_ref(),
            &t.prompts,
            &config,
            &Device::Cpu,
            Some(&mut cb),
        )
        .unwrap();
        assert_eq!(again, want, "{kwargs}");
        assert_eq!(seen, want.new_tokens, "{kwargs}");
    }
    let greedy = with(&t.base, eos_kwargs);
    let out = generate(
        t.model.model.as_ref(),
        &t.prompts,
        &greedy,
        &Device::Cpu,
        None,
    )
    .unwrap();
    let want_row = &python_row[prompt_len..];
    assert!(want_row.len() < 12, "the fixture's eos row must end early");
    assert_eq!(out.new_tokens[1], want_row, "the eos row ends early");
    assert_eq!(out.new_tokens[0].len(), 12);
}

#[test]
fn stream_with_beam_search_gives_the_sequences_at_the_end() {
    let t = tiny("tiny-llama");
    let config = with(
        &t.base,
        json!({"num_beams": 3, "num_return_sequences": 2, "max_new_tokens": 6}),
    );
    let want = generate(
        t.model.model.as_ref(),
        &t.prompts,
        &config,
        &Device::Cpu,
        None,
    )
    .unwrap();
    assert_eq!(want.sequences.len(), 4);
    let (rows, out) = stream(&t, &config);
    assert_eq!(rows, want.new_tokens);
    assert_eq!(out, want);
}

#[test]
fn callback_stops_a_row() {
    let t = tiny("tiny-llama");
    let config = with(&t.base, json!({"max_new_tokens": 8}));
    let full = generate(
        t.model.model.as_ref(),
        &t.prompts,
        &config,
        &Device::Cpu,
        None,
    )
    .unwrap();
    let mut cb = |row: usize, _token: u32| -> bool { row != 0 };
    // Row 0 stops after its first token; row 1 runs to the end.
    let out = generate(
        t.model.model.as_ref(),
        &t.prompts,
        &config,
        &Device::Cpu,
        Some(&mut cb),
    )
    .unwrap();
    assert_eq!(out.new_tokens[0], full.new_tokens[0][..1]);
    assert_eq!(out.new_tokens[1], full.new_tokens[1]);
    // Through the iterator: stop row 1 after three tokens.
    let g = Generator::new(t.model.model.as_ref(), &t.prompts, &config, &Device::Cpu).unwrap();
    let mut s = g.stream();
    let mut count = 0;
    while let Some(item) = s.next() {
        if item.unwrap().0 == 1 {
            count += 1;
            if count == 3 {
                s.stop_row(1);
            }
        }
    }
    let out = s.into_output().unwrap();
    assert_eq!(out.new_tokens[1], full.new_tokens[1][..3]);
    assert_eq!(out.new_tokens[0], full.new_tokens[0]);
}

#[test]
fn stop_strings_end_rows() {
    let t = tiny("tiny-llama");
    let config = with(&t.base, json!({"max_new_tokens": 12}));
    let full = generate(
        t.model.model.as_ref(),
        &t.prompts,
        &config,
        &Device::Cpu,
        None,
    )
    .unwrap();
    let decode = |ids: &[u32]| t.tokenizer.decode(ids, false).unwrap();
    // A stop string from the middle of row 0's text: the last two characters of its
    // first five tokens' text (non-blank).
    let text5 = decode(&full.new_tokens[0][..5]);
    let chars: Vec<char> = text5.trim_end().chars().collect();
    assert!(chars.len() >= 2, "{text5:?}");
    let stop: String = chars[chars.len() - 2..].iter().collect();
    // Each row ends at its first token whose text contains the stop string.
    let expect: Vec<Vec<u32>> = full
        .new_tokens
        .iter()
        .map(|row| {
            let k = (1..=row.len())
                .find(|&k| decode(&row[..k]).contains(&stop))
                .unwrap_or(row.len());
            row[..k].to_vec()
        })
        .collect();
    assert!(expect[0].len() <= 5);
    let stopping = with(
        &t.base,
        json!({"max_new_tokens": 12, "stop_strings": [stop.clone(), "never appears ☃"]}),
    );
    // Without a tokenizer: a clear error, as Python's.
    let err = generate(
        t.model.model.as_ref(),
        &t.prompts,
        &stopping,
        &Device::Cpu,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("stop_strings") && err.contains("tokenizer"),
        "{err}"
    );
    let out = Generator::new(t.model.model.as_ref(), &t.prompts, &stopping, &Device::Cpu)
        .unwrap()
        .with_tokenizer(&t.tokenizer)
        .finish()
        .unwrap();
    assert_eq!(out.new_tokens, expect, "stop string {stop:?}");
    assert!(decode(&out.new_tokens[0]).contains(&stop));

    // The same as an explicit criterion.
    let criterion = StopStrings::new(vec![stop.clone()], &t.tokenizer);
    let out = Generator::new(t.model.model.as_ref(), &t.prompts, &config, &Device::Cpu)
        .unwrap()
        .with_stopping_criteria(Box::new(criterion))
        .finish()
        .unwrap();
    assert_eq!(out.new_tokens, expect);
}

#[test]
fn stop_strings_with_a_custom_decoder() {
    // Token i decodes to the letter 'a' + i.
    let s = StopStrings::with_decoder(vec!["cd".into()], |ids: &[u32]| {
        Ok(ids.iter().map(|&i| char::from(b'a' + i as u8)).collect())
    });
    // Prompt "cd" (tokens 2, 3) does not count; new tokens "bc" then "bcd".
    assert!(!s.should_stop(&[2, 3, 1, 2], 2).unwrap());
    assert!(s.should_stop(&[2, 3, 1, 2, 3], 3).unwrap());
    assert!(!s.should_stop(&[2, 3], 0).unwrap());
}

/// A custom logits processor runs (here: it bans the token greedy search picks first,
/// so the first token changes and is never that token).
#[test]
fn custom_logits_processor() {
    #[derive(Debug)]
    struct Ban(u32);
    impl rustformers_generation::processors::LogitsProcessor for Ban {
        fn process(&self, _tokens: &[u32], _new: usize, scores: &mut [f32]) {
            scores[self.0 as usize] = f32::NEG_INFINITY;
        }
    }
    let t = tiny("tiny-llama");
    let config = with(&t.base, json!({"max_new_tokens": 4}));
    let full = generate(
        t.model.model.as_ref(),
        &t.prompts,
        &config,
        &Device::Cpu,
        None,
    )
    .unwrap();
    let banned = full.new_tokens[0][0];
    let out = Generator::new(t.model.model.as_ref(), &t.prompts, &config, &Device::Cpu)
        .unwrap()
        .with_logits_processor(Box::new(Ban(banned)))
        .finish()
        .unwrap();
    assert!(out.new_tokens.iter().flatten().all(|&x| x != banned));
}
