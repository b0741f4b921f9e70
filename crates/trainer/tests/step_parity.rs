//! One optimizer step from the same weights and batch gives PyTorch's gradients and
//! updated weights, for every family and trainable head: sequence classification
//! (BERT, RoBERTa, DistilBERT, Llama, Qwen2), token classification and masked LM (BERT,
//! RoBERTa, DistilBERT), causal LM (Llama, Mistral, Qwen2, Qwen3, Gemma 2, Phi-3, GPT-2).
//! tests/fixtures/train, tools/golden/make_train_step.py: dropout off, clip_grad_norm_
//! 1.0, AdamW lr 1e-3, weight decay 0.1 with the Trainer's groups.
//!
//! Updated weights agree to 1e-5, except where a gradient is float noise on both sides
//! (|g| < 1e-7: the attention key biases, whose exact gradient is zero because softmax
//! ignores a constant added to a row). Adam's first step moves a weight by
//! `lr · g / (|g| + ε)`, so noise of 1e-9 there moves it by up to `lr` either way in
//! either implementation; those elements are held to Adam's step bound instead.

mod common;
use common::{load_for_training, max_diff, step_fixtures};

use rustformers_models::TrainLoad;
use rustformers_trainer::optim::gather;
use rustformers_trainer::{clip_grad_norm, AdamW};

#[test]
fn one_adamw_step_matches_pytorch() {
    let fixtures = step_fixtures();
    assert_eq!(fixtures.len(), 18);
    for f in &fixtures {
        let (name, exp, want) = (f.name.as_str(), &f.exp, &f.want);
        let model = load_for_training(name, &f.task, &TrainLoad::default());
        let (l, _) = model.loss(&f.batch).unwrap();
        let lv = l.to_scalar::<f32>().unwrap();
        let want_loss = exp["loss"].as_f64().unwrap() as f32;
        assert!(
            (lv - want_loss).abs() < 1e-5,
            "{name}: loss {lv} vs {want_loss}"
        );
        let store = model.backward(&l).unwrap();
        let params = model.parameters();
        let vars = &params;
        let torch_names: Vec<&String> = want.keys().filter(|k| k.starts_with("param.")).collect();
        assert_eq!(vars.len(), torch_names.len(), "{name}: parameter count");
        for (n, v) in vars {
            assert!(
                want.contains_key(&format!("param.{n}")),
                "{name}: PyTorch has no `{n}`"
            );
            let (g, w) = match (store.get(v.as_tensor()), want.get(&format!("grad.{n}"))) {
                (Some(g), Some(w)) => (g, w),
                // Unused by this forward on both sides.
                (None, None) => continue,
                (g, w) => panic!(
                    "{name}: gradient of {n}: ours {}, PyTorch {}",
                    g.is_some(),
                    w.is_some()
                ),
            };
            let (diff, scale) = max_diff(g, w);
            assert!(
                diff <= 1e-5 * (1.0 + scale),
                "{name}: grad {n}: {diff} (scale {scale})"
            );
        }
        let all: Vec<_> = vars.iter().map(|(_, v)| v.clone()).collect();
        let mut grads = gather(&store, &all);
        let norm = clip_grad_norm(&mut grads, 1.0).unwrap();
        let want_norm = exp["grad_norm"].as_f64().unwrap();
        assert!(
            (norm - want_norm).abs() < 1e-5 * want_norm,
            "{name}: norm {norm} vs {want_norm}"
        );
        let mut opt = AdamW::new(vars.to_vec(), 0.9, 0.999, 1e-8, 0.1).unwrap();
        let no_decay: Vec<String> = serde_json::from_value(exp["no_decay"].clone()).unwrap();
        for (n, decays) in opt.groups() {
            assert_eq!(!decays, no_decay.contains(&n), "{name}: decay group of {n}");
        }
        let before: Vec<Vec<f32>> = vars
            .iter()
            .map(|(_, v)| {
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .collect();
        let ours_g: Vec<Vec<f32>> = grads
            .iter()
            .map(|g| {
                g.as_ref()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .collect();
        opt.step(&grads, 1e-3).unwrap();
        let mut noise = 0;
        for (i, (n, v)) in vars.iter().enumerate() {
            let got = v
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let w = want[&format!("param.{n}")]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let g = match want.get(&format!("grad.{n}")) {
                Some(g) => g.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                None => vec![0.0; got.len()],
            };
            for j in 0..got.len() {
                let diff = (got[j] - w[j]).abs();
                let tiny = g[j].abs() < 1e-7 && ours_g[i][j].abs() < 1e-7;
                if tiny && (g[j] != 0.0 || ours_g[i][j] != 0.0) {
                    noise += 1;
                    assert!(
                        (got[j] - before[i][j]).abs() <= 1.01e-3,
                        "{name}: {n}[{j}] moved past lr"
                    );
                } else {
                    assert!(
                        diff <= 1e-5,
                        "{name}: updated {n}[{j}]: {} vs {}",
                        got[j],
                        w[j]
                    );
                }
            }
        }
        // Only a few elements (the key biases) are noise.
        assert!(noise <= 128, "{name}: {noise} noise-level gradients");
    }
}
