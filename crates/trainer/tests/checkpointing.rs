//! Gradient checkpointing (`TrainLoad::gradient_checkpointing`,
//! `TrainingArguments.gradient_checkpointing`): every layer is recomputed in the backward
//! pass, and the gradients are the ones without checkpointing, for every family and head
//! of the step fixtures; with dropout on, the recomputation draws the same masks.

mod common;
use common::{load_for_training, max_diff, step_fixtures};

use candle_core::Tensor;

use rustformers_models::TrainLoad;
use rustformers_trainer::optim::gather;
use rustformers_trainer::TrainModel;

fn grads(model: &dyn TrainModel, batch: &rustformers_trainer::trainer::Batch) -> Vec<Tensor> {
    let params = model.parameters();
    let (loss, _) = model.loss(batch).unwrap();
    let store = model.backward(&loss).unwrap();
    let vars: Vec<_> = params.iter().map(|(_, v)| v.clone()).collect();
    gather(&store, &vars)
        .into_iter()
        .zip(&params)
        .map(|(g, (n, _))| g.unwrap_or_else(|| panic!("no gradient for {n}")))
        .collect()
}

#[test]
fn checkpointed_gradients_equal_the_plain_ones() {
    let fixtures = step_fixtures();
    assert_eq!(fixtures.len(), 18);
    for f in &fixtures {
        let load = |gradient_checkpointing: bool| {
            let t = TrainLoad {
                gradient_checkpointing,
                ..Default::default()
            };
            load_for_training(&f.name, &f.task, &t)
        };
        let (plain, ckpt) = (load(false), load(true));
        // Dropout off (as the fixtures), then on with one seed for both.
        for (on, seed) in [(false, 0), (true, 7)] {
            plain.set_training(on, seed);
            ckpt.set_training(on, seed);
            let (a, b) = (
                grads(ckpt.as_ref(), &f.batch),
                grads(plain.as_ref(), &f.batch),
            );
            assert_eq!(a.len(), b.len());
            for ((n, _), (x, y)) in plain.parameters().iter().zip(a.iter().zip(&b)) {
                let (d, s) = max_diff(x, y);
                assert!(
                    d <= 1e-6 * (1.0 + s),
                    "{} (dropout {on}): gradient of {n} differs by {d}",
                    f.name
                );
            }
        }
    }
}

/// The layers are recomputed: one recomputation per layer per backward pass (Llama's
/// and BERT's first layers included, since their embeddings train).
#[test]
fn every_layer_is_recomputed_once_per_backward() {
    use rustformers_models::{AutoModelForCausalLM, AutoModelForSequenceClassification};
    let f = step_fixtures();
    let t = TrainLoad {
        gradient_checkpointing: true,
        ..Default::default()
    };
    let o = rustformers_models::LoadOptions::default();
    let dir = |n: &str| common::fixtures().join(n).to_string_lossy().into_owned();
    let llama = AutoModelForCausalLM::for_training(&dir("tiny-llama"), &o, &t).unwrap();
    let bert =
        AutoModelForSequenceClassification::for_training(&dir("tiny-bert-seqcls"), &o, &t).unwrap();
    let batch = |n: &str| &f.iter().find(|x| x.name == n).unwrap().batch;
    let layers = |m: &rustformers_models::ModelConfig| {
        let v: serde_json::Value = serde_json::from_str(&m.to_json_string().unwrap()).unwrap();
        v["num_hidden_layers"].as_u64().unwrap() as usize
    };
    for _ in 0..2 {
        grads(&llama, batch("tiny-llama"));
        grads(&bert, batch("tiny-bert-seqcls"));
    }
    assert_eq!(llama.checkpoint_recomputations(), 2 * layers(&llama.config));
    assert_eq!(bert.checkpoint_recomputations(), 2 * layers(&bert.config));
    assert!(llama.gradient_checkpointing() && TrainModel::gradient_checkpointing(&bert));
}
