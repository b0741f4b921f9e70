//! LoRA: one step from a PEFT adapter equals PEFT's (tests/fixtures/train-lora,
//! tools/golden/make_lora_step.py: peft 0.22.0; Llama, GPT-2's Conv1D, BERT), only the
//! adapters and the `modules_to_save` train, and a saved adapter loads back on its base
//! model with the trained model's outputs, merged (as `from_pretrained(adapter_dir)`
//! does) or not (`LoadOptions::merge_adapter = false`).

mod common;
use common::{fixtures, matrix, max_diff};

use candle_core::{Device, Tensor};
use serde_json::Value;

use rustformers_models::{
    AutoModelForCausalLM, AutoModelForSequenceClassification, LoadOptions, TrainLoad,
};
use rustformers_trainer::optim::gather;
use rustformers_trainer::trainer::Batch;
use rustformers_trainer::{clip_grad_norm, AdamW, TrainModel};

#[test]
fn a_lora_step_matches_peft_and_the_adapter_round_trips() {
    for name in ["tiny-llama", "tiny-gpt2", "tiny-bert-seqcls"] {
        let dir = fixtures().join("train-lora").join(name);
        let exp: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("step.json")).unwrap()).unwrap();
        let want =
            candle_core::safetensors::load(dir.join("step.safetensors"), &Device::Cpu).unwrap();
        let base = fixtures().join(name);
        let train = TrainLoad {
            lora_from: Some(dir.join("initial")),
            ..Default::default()
        };
        let opts = LoadOptions::default();
        let model: Box<dyn TrainModel> = if exp["task"] == "CAUSAL_LM" {
            Box::new(
                AutoModelForCausalLM::for_training(base.to_str().unwrap(), &opts, &train).unwrap(),
            )
        } else {
            Box::new(
                AutoModelForSequenceClassification::for_training(
                    base.to_str().unwrap(),
                    &opts,
                    &train,
                )
                .unwrap(),
            )
        };
        let params = model.parameters();
        let mut names: Vec<String> = params.iter().map(|(n, _)| n.clone()).collect();
        names.sort();
        let trainable: Vec<String> = serde_json::from_value(exp["trainable"].clone()).unwrap();
        assert_eq!(
            names, trainable,
            "{name}: only the adapters and modules_to_save train"
        );
        let ids = matrix(&exp["input_ids"]);
        let labels = if exp["task"] == "CAUSAL_LM" {
            matrix(&exp["labels"])
        } else {
            let l: Vec<u32> = serde_json::from_value(exp["labels"].clone()).unwrap();
            Tensor::new(l.as_slice(), &Device::Cpu).unwrap()
        };
        let batch = Batch {
            token_type_ids: ids.zeros_like().unwrap(),
            input_ids: ids,
            attention_mask: matrix(&exp["attention_mask"]),
            labels,
        };
        let (loss, _) = model.loss(&batch).unwrap();
        let lv = loss.to_scalar::<f32>().unwrap();
        assert!(
            (lv - exp["loss"].as_f64().unwrap() as f32).abs() < 1e-5,
            "{name}: loss {lv}"
        );
        let store = model.backward(&loss).unwrap();
        let vars: Vec<_> = params.iter().map(|(_, v)| v.clone()).collect();
        let mut grads = gather(&store, &vars);
        for ((n, _), g) in params.iter().zip(&grads) {
            let (d, s) = max_diff(g.as_ref().unwrap(), &want[&format!("grad.{n}")]);
            assert!(d <= 1e-5 * (1.0 + s), "{name}: grad {n}: {d}");
        }
        let norm = clip_grad_norm(&mut grads, 1.0).unwrap();
        assert!((norm - exp["grad_norm"].as_f64().unwrap()).abs() < 1e-5 * norm);
        let mut opt = AdamW::new(params.clone(), 0.9, 0.999, 1e-8, 0.1).unwrap();
        opt.step(&grads, 1e-3).unwrap();
        for (n, v) in &params {
            let (d, _) = max_diff(v.as_tensor(), &want[&format!("param.{n}")]);
            assert!(d <= 1e-5, "{name}: updated {n}: {d}");
        }
        // Save as a PEFT adapter; from_pretrained(adapter dir) loads base + adapter
        // (merged) with the trained model's outputs.
        let out = tempfile::tempdir().unwrap();
        model.save(out.path()).unwrap();
        assert!(out.path().join("adapter_model.safetensors").is_file());
        let mut acfg: Value = serde_json::from_str(
            &std::fs::read_to_string(out.path().join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(acfg["peft_type"], "LORA");
        // The saved base path is the fixture's relative one; point it at the fixture.
        acfg["base_model_name_or_path"] = Value::String(base.to_str().unwrap().into());
        std::fs::write(out.path().join("adapter_config.json"), acfg.to_string()).unwrap();
        let (_, trained) = model.loss(&batch).unwrap();
        let back: Box<dyn TrainModel> = if exp["task"] == "CAUSAL_LM" {
            let m = AutoModelForCausalLM::from_pretrained(out.path().to_str().unwrap()).unwrap();
            assert!(m.trainable_parameters().is_empty());
            Box::new(m)
        } else {
            let m =
                AutoModelForSequenceClassification::from_pretrained(out.path().to_str().unwrap())
                    .unwrap();
            Box::new(m)
        };
        let (_, loaded) = back.loss(&batch).unwrap();
        let (d, s) = max_diff(&loaded, &trained.detach());
        assert!(
            d <= 1e-5 * (1.0 + s),
            "{name}: reloaded adapter differs by {d}"
        );
        // Unmerged (adapter layers beside the base weights): the same outputs, and a
        // save writes the adapter again rather than full weights.
        let files = rustformers_core::ModelFiles::resolve(out.path().to_str().unwrap()).unwrap();
        let unmerged = LoadOptions {
            merge_adapter: false,
            ..Default::default()
        };
        let back: Box<dyn TrainModel> = if exp["task"] == "CAUSAL_LM" {
            Box::new(AutoModelForCausalLM::from_files(files, &unmerged).unwrap())
        } else {
            Box::new(AutoModelForSequenceClassification::from_files(files, &unmerged).unwrap())
        };
        let (_, loaded) = back.loss(&batch).unwrap();
        let (d, s) = max_diff(&loaded, &trained.detach());
        assert!(
            d <= 1e-5 * (1.0 + s),
            "{name}: unmerged adapter differs by {d}"
        );
        let again = tempfile::tempdir().unwrap();
        back.save(again.path()).unwrap();
        assert!(again.path().join("adapter_model.safetensors").is_file());
        assert!(!again.path().join("model.safetensors").exists());
    }
}
