//! Checks beyond the shared macro for the RoBERTa and DistilBERT families:
//! XLM-RoBERTa dispatch, model_type inference, length limits, DistilBERT's
//! sinusoidal positions and ignored token types, half precision.

mod common;

use candle_core::{DType, Device, Tensor};
use rustformers_models::{
    AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification, EncoderInputs,
    LoadOptions, ModelConfig,
};

#[test]
fn xlm_roberta_runs_the_roberta_code_under_its_own_names() {
    let dir = common::fixture("tiny-roberta-seqcls");
    let expected = common::load_expected(&dir);
    let roberta =
        AutoModelForSequenceClassification::from_pretrained(dir.to_str().unwrap()).unwrap();
    let tmp = common::copy_fixture_with("tiny-roberta-seqcls", |c| {
        c.insert("model_type".into(), "xlm-roberta".into());
        c.insert(
            "architectures".into(),
            serde_json::json!(["XLMRobertaForSequenceClassification"]),
        );
    });
    let xlmr =
        AutoModelForSequenceClassification::from_pretrained(tmp.path().to_str().unwrap()).unwrap();
    assert_eq!(xlmr.architecture(), "XLMRobertaForSequenceClassification");
    assert_eq!(xlmr.config.model_type(), "xlm-roberta");
    assert_eq!(xlmr.config.base_model_prefix(), "roberta");
    for case in &expected.cases {
        let a = roberta.model.forward(case.inputs()).unwrap();
        let b = xlmr.model.forward(case.inputs()).unwrap();
        assert_eq!(common::max_abs_diff(&a, &b), 0.0);
    }
    let out = tempfile::tempdir().unwrap();
    xlmr.save_pretrained(out.path()).unwrap();
    let saved = std::fs::read_to_string(out.path().join("config.json")).unwrap();
    assert!(saved.contains("\"model_type\": \"xlm-roberta\""), "{saved}");
}

#[test]
fn model_type_is_inferred_from_architectures() {
    for (arch, want) in [
        ("XLMRobertaForMaskedLM", "xlm-roberta"),
        ("RobertaModel", "roberta"),
        ("DistilBertForSequenceClassification", "distilbert"),
        ("BertForMaskedLM", "bert"),
    ] {
        let text = format!(r#"{{"architectures": ["{arch}"]}}"#);
        let c = ModelConfig::from_json_str(&text, std::path::Path::new("config.json")).unwrap();
        assert_eq!(c.model_type(), want, "{arch}");
    }
}

#[test]
fn config_defaults_and_limits() {
    let p = std::path::Path::new("config.json");
    let c = ModelConfig::from_json_str(
        r#"{"model_type":"roberta","max_position_embeddings":514}"#,
        p,
    )
    .unwrap();
    assert_eq!(c.max_position_embeddings(), 512);
    assert_eq!(c.base().pad_token_id, Some(1));
    let c = ModelConfig::from_json_str(r#"{"model_type":"xlm-roberta"}"#, p).unwrap();
    assert!(matches!(&c, ModelConfig::Roberta(r) if r.vocab_size == 30522));
    let c = ModelConfig::from_json_str(r#"{"model_type":"distilbert"}"#, p).unwrap();
    assert_eq!((c.hidden_size(), c.max_position_embeddings()), (768, 512));
    assert_eq!(c.base_model_prefix(), "distilbert");
    let err = ModelConfig::from_json_str(r#"{"model_type":"distilbert","dim":30,"n_heads":4}"#, p)
        .unwrap_err();
    assert!(err.to_string().contains("n_heads"), "{err}");
}

fn ids(n: usize) -> Tensor {
    let v: Vec<u32> = (0..n).map(|i| 5 + (i as u32 % 50)).collect();
    Tensor::from_vec(v, (1, n), &Device::Cpu).unwrap()
}

#[test]
fn roberta_length_limit_counts_from_the_padding_index() {
    // max_position_embeddings 130, pad_token_id 1: 128 tokens fit, 129 do not.
    let dir = common::fixture("tiny-roberta-base");
    let model = AutoModel::from_pretrained(dir.to_str().unwrap()).unwrap();
    assert_eq!(model.config.max_position_embeddings(), 128);
    model.model.forward(EncoderInputs::ids(&ids(128))).unwrap();
    let err = model
        .model
        .forward(EncoderInputs::ids(&ids(129)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("129 tokens is longer"), "{err}");
    let bad = Tensor::new(&[[0u32, 400, 2]], &Device::Cpu).unwrap();
    let err = model
        .model
        .forward(EncoderInputs::ids(&bad))
        .unwrap_err()
        .to_string();
    assert!(err.contains("id 400"), "{err}");
}

#[test]
fn distilbert_ignores_token_type_ids() {
    let dir = common::fixture("tiny-distilbert-seqcls");
    let model = AutoModelForSequenceClassification::from_pretrained(dir.to_str().unwrap()).unwrap();
    let x = ids(10);
    let types = x.ones_like().unwrap();
    let a = model.model.forward(EncoderInputs::ids(&x)).unwrap();
    let b = model
        .model
        .forward(EncoderInputs {
            input_ids: &x,
            attention_mask: None,
            token_type_ids: Some(&types),
        })
        .unwrap();
    assert_eq!(common::max_abs_diff(&a, &b), 0.0);
}

#[test]
fn distilbert_sinusoidal_positions() {
    let dir = common::fixture("tiny-distilbert-base");
    let expected = common::load_expected(&dir);
    let case = &expected.cases[0];
    let base = AutoModel::from_pretrained(dir.to_str().unwrap()).unwrap();
    let want = base.model.forward(case.inputs()).unwrap().last_hidden_state;

    // The flag with the table in the checkpoint: the stored table is used.
    let tmp = common::copy_fixture_with("tiny-distilbert-base", |c| {
        c.insert("sinusoidal_pos_embds".into(), true.into());
    });
    let m = AutoModel::from_pretrained(tmp.path().to_str().unwrap()).unwrap();
    let got = m.model.forward(case.inputs()).unwrap().last_hidden_state;
    assert_eq!(common::max_abs_diff(&got, &want), 0.0);

    // Without the table: computed, not reported missing.
    let path = tmp.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    assert!(tensors
        .remove("embeddings.position_embeddings.weight")
        .is_some());
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let m = AutoModel::from_pretrained(tmp.path().to_str().unwrap()).unwrap();
    let got = m.model.forward(case.inputs()).unwrap().last_hidden_state;
    assert_eq!(got.dims(), want.dims());
    assert!(common::max_abs_diff(&got, &want) > 0.0);

    // And without the flag the missing table is an error.
    let tmp2 = common::copy_fixture_with("tiny-distilbert-base", |_| {});
    candle_core::safetensors::save(&tensors, tmp2.path().join("model.safetensors")).unwrap();
    let err = AutoModel::from_pretrained(tmp2.path().to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("embeddings.position_embeddings.weight"),
        "{err}"
    );
}

#[test]
fn half_precision_stays_close_to_f32() {
    for name in ["tiny-roberta-mlm", "tiny-distilbert-mlm"] {
        let dir = common::fixture(name);
        let expected = common::load_expected(&dir);
        let case = &expected.cases[0];
        let f32_model = AutoModelForMaskedLM::from_pretrained(dir.to_str().unwrap()).unwrap();
        let want = f32_model.model.forward(case.inputs()).unwrap();
        // candle has no bf16 matmul on CPU; f16 exercises the half-precision paths.
        let opts = LoadOptions {
            dtype: Some(DType::F16),
            device: Device::Cpu,
            ..Default::default()
        };
        let m = AutoModelForMaskedLM::from_pretrained_with(dir.to_str().unwrap(), &opts).unwrap();
        let got = m.model.forward(case.inputs()).unwrap();
        assert_eq!(got.dtype(), DType::F16);
        let d = common::max_abs_diff(&got, &want);
        assert!(d < 0.15, "{name} f16: max diff {d}");
    }
}

#[test]
fn empty_input_is_not_a_panic() {
    for name in ["tiny-roberta-base", "tiny-distilbert-base"] {
        let dir = common::fixture(name);
        let model = AutoModel::from_pretrained(dir.to_str().unwrap()).unwrap();
        let empty = Tensor::zeros((1, 0), DType::U32, &Device::Cpu).unwrap();
        // Either an error or an empty output is fine; a panic is not.
        if let Ok(out) = model.model.forward(EncoderInputs::ids(&empty)) {
            assert_eq!(out.last_hidden_state.dims()[1], 0);
        }
    }
}

#[test]
fn base_model_from_a_checkpoint_without_pooler_has_no_pooler_output() {
    for name in ["tiny-bert-mlm", "tiny-roberta-mlm", "tiny-bert-tokcls"] {
        let dir = common::fixture(name);
        let model = AutoModel::from_pretrained(dir.to_str().unwrap()).unwrap();
        let out = model.model.forward(EncoderInputs::ids(&ids(5))).unwrap();
        assert!(out.pooler_output.is_none(), "{name}");
        assert_eq!(out.last_hidden_state.dims(), &[1, 5, 32]);
    }
    // A checkpoint with a pooler keeps it.
    let dir = common::fixture("tiny-bert-base");
    let model = AutoModel::from_pretrained(dir.to_str().unwrap()).unwrap();
    let out = model.model.forward(EncoderInputs::ids(&ids(5))).unwrap();
    assert_eq!(out.pooler_output.unwrap().dims(), &[1, 32]);
}

/// `dtype = bf16` on CPU: linear weights in bf16 run by the bf16 kernel, everything else
/// in f32. Hidden states stay within bf16 rounding of the f32 model's, and a save writes
/// a bf16 checkpoint.
#[test]
fn bf16_on_cpu_runs_close_to_f32() {
    for name in [
        "tiny-bert-base",
        "tiny-roberta-base",
        "tiny-distilbert-base",
    ] {
        let dir = common::fixture(name);
        let reference = dir.to_str().unwrap();
        let opts = LoadOptions {
            dtype: Some(DType::BF16),
            device: Device::Cpu,
            ..Default::default()
        };
        let f32_model = AutoModel::from_pretrained(reference).unwrap();
        let bf16_model = AutoModel::from_pretrained_with(reference, &opts).unwrap();
        // 20 rows: the AMX path where the CPU has it.
        let input = Tensor::new(
            &[
                [1u32, 5, 9, 17, 3, 2, 8, 11, 4, 6],
                [7, 3, 2, 9, 12, 14, 5, 1, 2, 3],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let run = |m: &dyn rustformers_models::traits::EncoderModel| {
            m.forward(EncoderInputs::ids(&input))
                .unwrap()
                .last_hidden_state
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let (a, b) = (
            run(f32_model.model.as_ref()),
            run(bf16_model.model.as_ref()),
        );
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(diff > 0.0, "{name}: bf16 gave exactly the f32 output");
        assert!(diff < 0.05, "{name}: bf16 differs from f32 by {diff}");
        let out = tempfile::tempdir().unwrap();
        bf16_model.save_pretrained(out.path()).unwrap();
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap())
                .unwrap();
        // 5.x writes `dtype` (4.x's `torch_dtype` is read, not written).
        assert_eq!(cfg["dtype"], "bfloat16", "{name}");
        assert!(cfg.get("torch_dtype").is_none(), "{name}");
    }
}

#[test]
fn out_of_range_ids_are_errors() {
    let dir = common::fixture("tiny-bert-base");
    let model = AutoModel::from_pretrained(dir.to_str().unwrap()).unwrap();
    let big = Tensor::new(&[[1u32, 100_000]], &Device::Cpu).unwrap();
    let err = model
        .model
        .forward(EncoderInputs::ids(&big))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("out of range for `embeddings.word_embeddings`"),
        "{err}"
    );
}

#[test]
fn bf16_and_f16_checkpoints_run_on_cpu_in_f32() {
    let src = common::fixture("tiny-bert-base");
    let reference = AutoModel::from_pretrained(src.to_str().unwrap()).unwrap();
    let x = ids(6);
    let want = reference
        .model
        .forward(EncoderInputs::ids(&x))
        .unwrap()
        .last_hidden_state;
    for dtype in [DType::BF16, DType::F16] {
        let tmp = tempfile::tempdir().unwrap();
        for f in ["config.json", "tokenizer.json"] {
            std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
        }
        let tensors =
            candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
        let cast: std::collections::BTreeMap<String, Tensor> = tensors
            .into_iter()
            .map(|(k, t)| (k, t.to_dtype(dtype).unwrap()))
            .collect();
        rustformers_core::weights::save_safetensors(&cast, &tmp.path().join("model.safetensors"))
            .unwrap();
        let model = AutoModel::from_pretrained(tmp.path().to_str().unwrap()).unwrap();
        assert_eq!(model.dtype, DType::F32);
        let got = model
            .model
            .forward(EncoderInputs::ids(&x))
            .unwrap()
            .last_hidden_state;
        let diff = (got - &want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // Only the weights were rounded: bf16 keeps 8 bits of mantissa, f16 11.
        let bound = if dtype == DType::BF16 { 0.1 } else { 0.01 };
        assert!(diff < bound, "{dtype:?}: {diff}");
        assert!(diff > 0.0, "{dtype:?}: the weights were not rounded");
    }
}

#[test]
fn roberta_mlm_saves_its_tied_bias_under_both_names() {
    let dir = common::fixture("tiny-roberta-mlm");
    let model = AutoModelForMaskedLM::from_pretrained(dir.to_str().unwrap()).unwrap();
    let out = tempfile::tempdir().unwrap();
    model.save_pretrained(out.path()).unwrap();
    let saved =
        candle_core::safetensors::load(out.path().join("model.safetensors"), &Device::Cpu).unwrap();
    let a = saved["lm_head.bias"].to_vec1::<f32>().unwrap();
    let b = saved["lm_head.decoder.bias"].to_vec1::<f32>().unwrap();
    assert_eq!(a, b);
    assert!(a.iter().any(|x| *x != 0.0));
}

#[test]
fn decoder_token_ids_outside_the_vocabulary_are_errors() {
    for name in [
        "tiny-llama",
        "tiny-qwen2",
        "tiny-gemma2",
        "tiny-phi3",
        "tiny-mistral",
        "tiny-qwen3",
    ] {
        let dir = common::fixture(name);
        let model =
            rustformers_models::AutoModelForCausalLM::from_pretrained(dir.to_str().unwrap())
                .unwrap();
        let big = Tensor::new(&[[1u32, 100_000]], &Device::Cpu).unwrap();
        let err = model
            .model
            .forward(
                rustformers_models::CausalLmInputs::ids(&big),
                None,
                rustformers_models::LogitsMode::All,
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("out of range for `model.embed_tokens`"),
            "{name}: {err}"
        );
    }
}
