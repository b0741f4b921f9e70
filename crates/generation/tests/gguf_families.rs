//! Tiny GGUF files of every mapped family (tests/fixtures/gguf/, written by
//! tools/golden/make_gguf.py from the tiny HF fixtures with llama.cpp's conventions):
//! dequantized to f32 they give Python's last-position logits and greedy ids; the
//! quantized tiny-llama copies run quantized close to the f32 model; the
//! sentencepiece-style (`tokenizer.ggml.model = "llama"`) tokenizer gives Python's ids
//! and decodes.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use rustformers_core::gguf::GgufFile;
use rustformers_core::{AutoTokenizer, EncodeOptions, TextInput};
use rustformers_models::{
    AutoModelForCausalLM, CausalLanguageModel, CausalLmInputs, LoadOptions, LogitsMode,
};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf")
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("expected.json")).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    serde_json::from_value(v.clone()).unwrap()
}

fn load(name: &str, dtype: Option<DType>) -> Box<dyn CausalLanguageModel> {
    let opts = LoadOptions {
        dtype,
        ..Default::default()
    };
    let path = dir().join(name);
    AutoModelForCausalLM::from_pretrained_with(path.to_str().unwrap(), &opts)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .model
}

fn last_logits(model: &dyn CausalLanguageModel, input: &[u32]) -> Vec<f32> {
    let t = Tensor::from_vec(input.to_vec(), (1, input.len()), &Device::Cpu).unwrap();
    model
        .forward(CausalLmInputs::ids(&t), None, LogitsMode::Last)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

/// Greedy decoding by full recomputation, as the Python script records it.
fn greedy(model: &dyn CausalLanguageModel, prompt: &[u32], new: usize) -> Vec<u32> {
    let mut seq = prompt.to_vec();
    for _ in 0..new {
        let l = last_logits(model, &seq);
        let (best, _) = l
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |acc, (i, v)| {
                if *v > acc.1 {
                    (i, *v)
                } else {
                    acc
                }
            });
        seq.push(best as u32);
    }
    seq
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn range(a: &[f32]) -> f32 {
    let max = a.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let min = a.iter().copied().fold(f32::INFINITY, f32::min);
    max - min
}

/// Dequantized to f32, the file gives Python's logits (≤ 1e-4) and greedy ids.
fn check_dequantized(name: &str) {
    let exp = expected();
    let entry = &exp["files"][name];
    assert!(entry.is_object(), "{name} not in expected.json");
    let model = load(name, Some(DType::F32));
    for case in entry["cases"].as_array().unwrap() {
        let prompt = ids(&case["input_ids"]);
        let got = last_logits(model.as_ref(), &prompt);
        let d = max_diff(&got, &floats(&case["last_logits"]));
        assert!(d <= 1e-4, "{name} {prompt:?}: logits differ by {d}");
        let want = ids(&case["greedy_ids"]);
        let new = want.len() - prompt.len();
        assert_eq!(greedy(model.as_ref(), &prompt, new), want, "{name}");
    }
}

#[test]
fn llama_f32_matches_python() {
    check_dequantized("tiny-llama.gguf");
}

#[test]
fn qwen2_f32_matches_python() {
    check_dequantized("tiny-qwen2.gguf");
}

#[test]
fn gemma2_f32_matches_python() {
    check_dequantized("tiny-gemma2.gguf");
}

#[test]
fn phi3_f32_matches_python() {
    check_dequantized("tiny-phi3.gguf");
}

/// F16 matrices (norms F32), upcast to f32.
#[test]
fn llama_f16_with_sentencepiece_vocab_matches_python() {
    check_dequantized("tiny-llama-spm.gguf");
}

/// (format, bound on max |Δlogit| / logit range against the f32 model, bound against
/// Python's dequantized model of the same file). Running quantized also rounds the
/// activations to 8 bits inside the matmul (as llama.cpp does), hence the second bound.
/// Measured (debug build): q8_0 ≤ 0.020 / 0.011, q5_1 ≤ 0.075, q5_0 ≤ 0.095,
/// q4_1 ≤ 0.21, q4_0 ≤ 0.21 / 0.012.
const QUANTS: &[(&str, f32, f32)] = &[
    ("q8_0", 0.03, 0.02),
    ("q5_1", 0.12, 0.04),
    ("q5_0", 0.12, 0.04),
    ("q4_1", 0.25, 0.06),
    ("q4_0", 0.25, 0.06),
];

#[test]
fn quantized_llama_dequantized_matches_python() {
    for (q, _, _) in QUANTS {
        check_dequantized(&format!("tiny-llama-{q}.gguf"));
    }
}

#[test]
fn quantized_llama_runs_quantized_close_to_f32() {
    let exp = expected();
    let reference = &exp["files"]["tiny-llama.gguf"]["cases"];
    for (q, vs_f32, vs_deq) in QUANTS {
        let name = format!("tiny-llama-{q}.gguf");
        let model = load(&name, None);
        let deq = &exp["files"][&name]["cases"];
        for (i, case) in reference.as_array().unwrap().iter().enumerate() {
            let prompt = ids(&case["input_ids"]);
            let got = last_logits(model.as_ref(), &prompt);
            let f32_logits = floats(&case["last_logits"]);
            let r = range(&f32_logits);
            let d = max_diff(&got, &f32_logits) / r;
            assert!(d <= *vs_f32, "{name} {prompt:?}: {d} of the range from f32");
            let d2 = max_diff(&got, &floats(&deq[i]["last_logits"])) / r;
            assert!(
                d2 <= *vs_deq,
                "{name} {prompt:?}: {d2} of the range from dequantized"
            );
            eprintln!("{name} prompt {i}: vs f32 {d:.4}, vs dequantized {d2:.4} of range");
            // Q8_0 / Q4_0 always take candle's quantized matmul (activations rounded to
            // 8 bits), so they cannot equal the dequantized model; Q4_1 / Q5_x do too in
            // release builds (see `runs_quantized` in core's gguf.rs).
            if matches!(*q, "q8_0" | "q4_0") {
                assert!(d2 > 0.0, "{name} did not run quantized");
            }
        }
    }
}

#[test]
fn sentencepiece_tokenizer_matches_python() {
    let exp = expected();
    let t = &exp["files"]["tiny-llama-spm.gguf"]["tokenizer"];
    let g = GgufFile::open(&dir().join("tiny-llama-spm.gguf")).unwrap();
    let tok = AutoTokenizer::from_gguf(&g).unwrap();
    let cases = t["cases"].as_array().unwrap();
    assert!(cases.len() >= 50, "{} cases", cases.len());
    for c in cases {
        let text = c["text"].as_str().unwrap();
        for (special, key) in [(false, "ids"), (true, "ids_with_special")] {
            let enc = tok
                .encode(
                    TextInput::Single(text),
                    &EncodeOptions {
                        add_special_tokens: special,
                        ..Default::default()
                    },
                )
                .unwrap();
            assert_eq!(enc.input_ids[0], ids(&c[key]), "{text:?} {key}");
        }
        let plain = ids(&c["ids"]);
        let with = ids(&c["ids_with_special"]);
        assert_eq!(
            tok.decode(&plain, false).unwrap(),
            c["decoded"].as_str().unwrap(),
            "{text:?}"
        );
        assert_eq!(
            tok.decode(&with, false).unwrap(),
            c["decoded_with_special"].as_str().unwrap(),
            "{text:?}"
        );
        assert_eq!(
            tok.decode(&with, true).unwrap(),
            c["decoded_skip_special"].as_str().unwrap(),
            "{text:?}"
        );
    }
}
