//! Sequence classification with every decoder family, parity with transformers 5.25
//! (tools/golden/make_decoders.py, `seqcls` fixtures): `AutoModelForSequenceClassification`
//! loads the generic head (`heads::ForSequenceClassification`), whose `score` reads the
//! rightmost non-pad token of each row. Logits ≤1e-4 for a right-padded batch, each text
//! alone, a left-padded batch, and a row with a non-pad id after its padding.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use serde_json::Value;

use rustformers_models::{AutoModelForSequenceClassification, EncoderInputs};

fn fixture(name: &str) -> (PathBuf, Value) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(dir.join("expected.json"))
        .unwrap_or_else(|e| panic!("fixture {name}: {e}"));
    (dir, serde_json::from_str(&text).unwrap())
}

fn u32s(v: &Value) -> Vec<Vec<u32>> {
    serde_json::from_value(v.clone()).unwrap()
}

fn f32s(v: &Value) -> Vec<Vec<f32>> {
    serde_json::from_value(v.clone()).unwrap()
}

fn matrix(rows: &[Vec<u32>]) -> Tensor {
    let (b, s) = (rows.len(), rows[0].len());
    Tensor::from_vec(rows.concat(), (b, s), &Device::Cpu).unwrap()
}

fn max_diff(got: &[Vec<f32>], want: &[Vec<f32>]) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .flat_map(|(g, w)| {
            assert_eq!(g.len(), w.len());
            g.iter().zip(w).map(|(a, b)| (a - b).abs())
        })
        .fold(0f32, f32::max)
}

fn check(name: &str, architecture: &str) {
    let (dir, exp) = fixture(name);
    let model = AutoModelForSequenceClassification::from_pretrained(dir.to_str().unwrap())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(model.architecture(), architecture);
    let s = &exp["seqcls"];

    let batch = &s["batch"];
    assert_eq!(batch["padding_side"], "right");
    let ids = matrix(&u32s(&batch["input_ids"]));
    let mask = matrix(&u32s(&batch["attention_mask"]));
    let logits = model
        .model
        .forward(EncoderInputs {
            input_ids: &ids,
            attention_mask: Some(&mask),
            token_type_ids: None,
        })
        .unwrap();
    let want = f32s(&batch["logits"]);
    assert_eq!(logits.dims(), &[want.len(), want[0].len()], "{name}");
    let d = max_diff(&logits.to_vec2::<f32>().unwrap(), &want);
    assert!(d <= 1e-4, "{name}: batch logits differ by {d}");

    let singles = s["singles"].as_array().unwrap();
    assert!(!singles.is_empty());
    for single in singles {
        let ids = matrix(&u32s(&single["input_ids"]));
        let logits = model.model.forward(EncoderInputs::ids(&ids)).unwrap();
        let d = max_diff(&logits.to_vec2::<f32>().unwrap(), &f32s(&single["logits"]));
        assert!(d <= 1e-4, "{name} {}: logits differ by {d}", single["text"]);
    }

    // 5.x pools the rightmost non-pad token, whatever the padding side.
    for case in ["left_padded", "trailing_token"] {
        let c = &s["pooling"][case];
        let logits = model
            .model
            .forward(EncoderInputs {
                input_ids: &matrix(&u32s(&c["input_ids"])),
                attention_mask: Some(&matrix(&u32s(&c["attention_mask"]))),
                token_type_ids: None,
            })
            .unwrap();
        let d = max_diff(&logits.to_vec2::<f32>().unwrap(), &f32s(&c["logits"]));
        assert!(d <= 1e-4, "{name} {case}: logits differ by {d}");
    }
}

macro_rules! seqcls_tests {
    ($($test:ident => $fixture:literal, $arch:literal),* $(,)?) => {$(
        #[test]
        fn $test() {
            check($fixture, $arch);
        }
    )*};
}

seqcls_tests! {
    llama => "tiny-llama-seqcls", "LlamaForSequenceClassification",
    mistral => "tiny-mistral-seqcls", "MistralForSequenceClassification",
    qwen2 => "tiny-qwen2-seqcls", "Qwen2ForSequenceClassification",
    qwen3 => "tiny-qwen3-seqcls", "Qwen3ForSequenceClassification",
    // The class logits are not soft-capped (final_logit_softcapping is the LM head's).
    gemma2 => "tiny-gemma2-seqcls", "Gemma2ForSequenceClassification",
    phi3 => "tiny-phi3-seqcls", "Phi3ForSequenceClassification",
    gpt2 => "tiny-gpt2-seqcls", "GPT2ForSequenceClassification",
}
