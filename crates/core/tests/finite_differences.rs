//! Every layer's gradients (what training differentiates: the op-by-op paths taken for
//! tensors that track gradients) against central finite differences in f64.
//!
//! For a layer `f` and fixed random weights `r`, the loss `Σ f(inputs) · r` is
//! differentiated by candle's autograd and by `(L(x + h) − L(x − h)) / 2h` for every
//! element of every input; they must agree to 1e-6 (relative to the gradient's scale).

use candle_core::{DType, Device, Tensor, Var};

use rustformers_core::layers::{
    attention, cached_attention, causal_mask, layer_norm, repeat_kv, softmax_last, Activation,
    Embedding,
};
use rustformers_core::linear::{QLinear, RmsNorm};
use rustformers_core::rng::Rng;
use rustformers_core::rotary::{apply_rotary, apply_rotary_interleaved};

fn randn(shape: &[usize], rng: &mut Rng, scale: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.normal() * scale).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Checks `f`'s gradients with respect to each of `inputs`.
fn check(name: &str, inputs: &[Tensor], f: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>) {
    let mut rng = Rng::new(99);
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&ts).unwrap();
    let r = randn(out.dims(), &mut rng, 1.0);
    let loss_of = |xs: &[Tensor]| -> f64 {
        (f(xs).unwrap() * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let loss = (out * &r).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let h = 1e-6;
    for (i, v) in vars.iter().enumerate() {
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient for input {i}"))
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let x0 = inputs[i].flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let scale = g.iter().fold(1e-3f64, |m, x| m.max(x.abs()));
        for j in 0..x0.len() {
            let at = |delta: f64| -> f64 {
                let mut x = x0.clone();
                x[j] += delta;
                let mut xs: Vec<Tensor> = inputs.to_vec();
                xs[i] = Tensor::from_vec(x, inputs[i].dims(), &Device::Cpu).unwrap();
                loss_of(&xs)
            };
            let numeric = (at(h) - at(-h)) / (2.0 * h);
            assert!(
                (numeric - g[j]).abs() <= 1e-6 * scale.max(1.0) + 1e-7,
                "{name}: input {i}[{j}]: autograd {} vs finite differences {numeric}",
                g[j]
            );
        }
    }
}

#[test]
fn linear_with_and_without_bias() {
    let mut rng = Rng::new(1);
    let (x, w, b) = (
        randn(&[2, 3, 5], &mut rng, 1.0),
        randn(&[4, 5], &mut rng, 0.5),
        randn(&[4], &mut rng, 0.5),
    );
    check("linear", &[x.clone(), w.clone(), b], |t| {
        QLinear::new(t[1].clone(), Some(t[2].clone())).forward(&t[0])
    });
    check("linear, no bias", &[x, w], |t| {
        QLinear::new(t[1].clone(), None).forward(&t[0])
    });
}

#[test]
fn norms() {
    let mut rng = Rng::new(2);
    let x = randn(&[2, 3, 6], &mut rng, 2.0);
    let (w, b) = (randn(&[6], &mut rng, 1.0), randn(&[6], &mut rng, 1.0));
    check("layer_norm", &[x.clone(), w.clone(), b], |t| {
        layer_norm(&t[0], &t[1], &t[2], 1e-5)
    });
    for offset in [0.0, 1.0] {
        check("rms_norm", &[x.clone(), w.clone()], |t| {
            RmsNorm {
                weight: t[1].clone(),
                eps: 1e-6,
                offset,
            }
            .forward(&t[0])
        });
    }
}

#[test]
fn activations() {
    let mut rng = Rng::new(3);
    let (x, u) = (randn(&[3, 7], &mut rng, 2.0), randn(&[3, 7], &mut rng, 1.0));
    for name in [
        "gelu",
        "gelu_pytorch_tanh",
        "silu",
        "quick_gelu",
        "tanh",
        "relu",
    ] {
        let act = Activation::from_name(name).unwrap();
        check(name, std::slice::from_ref(&x), |t| act.forward(&t[0]));
        check(&format!("{name}·up"), &[x.clone(), u.clone()], |t| {
            act.forward_mul(&t[0], &t[1])
        });
    }
}

#[test]
fn embedding_lookup_and_softmax() {
    let mut rng = Rng::new(4);
    let table = randn(&[6, 4], &mut rng, 1.0);
    let ids = Tensor::new(&[[0u32, 3, 3], [5, 1, 0]], &Device::Cpu).unwrap();
    check("embedding", &[table], |t| {
        Embedding::new(t[0].clone(), "t")?.forward(&ids)
    });
    check("softmax", &[randn(&[2, 3, 5], &mut rng, 2.0)], |t| {
        softmax_last(&t[0])
    });
}

#[test]
fn encoder_attention_with_padding_mask() {
    let mut rng = Rng::new(5);
    let (q, k, v) = (
        randn(&[2, 2, 4, 3], &mut rng, 1.0),
        randn(&[2, 2, 4, 3], &mut rng, 1.0),
        randn(&[2, 2, 4, 3], &mut rng, 1.0),
    );
    // Key 3 of the second row is padding.
    let mask = Tensor::new(&[0f64, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1e9], &Device::Cpu)
        .unwrap()
        .reshape((2, 1, 1, 4))
        .unwrap();
    check("attention", &[q, k, v], |t| {
        attention(&t[0], &t[1], &t[2], Some(&mask), 0.5)
    });
}

#[test]
fn causal_attention_grouped_heads_soft_capped() {
    let mut rng = Rng::new(6);
    // 4 query heads over 2 key/value heads; 20 queries (the op-by-op prompt path); key 1
    // is padding, a sliding window of 6.
    let (q, k, v) = (
        randn(&[1, 4, 20, 2], &mut rng, 1.0),
        randn(&[1, 2, 20, 2], &mut rng, 1.0),
        randn(&[1, 2, 20, 2], &mut rng, 1.0),
    );
    let pad = Tensor::new(
        &[[
            1u32, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
        ]],
        &Device::Cpu,
    )
    .unwrap();
    let mask = causal_mask(Some(&pad), 1, 20, 0, Some(6), DType::F64, &Device::Cpu).unwrap();
    for softcap in [None, Some(3.0)] {
        check(
            "cached_attention",
            &[q.clone(), k.clone(), v.clone()],
            |t| cached_attention(&t[0], &t[1], &t[2], &mask, 0.7, softcap),
        );
    }
    check("repeat_kv", &[k], |t| repeat_kv(&t[0], 2));
}

#[test]
fn rotary_both_layouts_and_partial() {
    let mut rng = Rng::new(7);
    let x = randn(&[1, 2, 3, 8], &mut rng, 1.0);
    let angles: Vec<f64> = (0..3 * 8).map(|i| i as f64 * 0.3).collect();
    let th = Tensor::from_vec(angles, (1, 3, 8), &Device::Cpu).unwrap();
    let (cos, sin) = (th.cos().unwrap(), th.sin().unwrap());
    check("rotary", std::slice::from_ref(&x), |t| {
        apply_rotary(&t[0], &cos, &sin)
    });
    check("rotary interleaved", std::slice::from_ref(&x), |t| {
        apply_rotary_interleaved(&t[0], &cos, &sin)
    });
    let (c4, s4) = (cos.narrow(2, 0, 4).unwrap(), sin.narrow(2, 0, 4).unwrap());
    check("partial rotary", &[x], |t| apply_rotary(&t[0], &c4, &s4));
}

/// Dropout: the identity unless its model is training; in training, zeros with
/// probability p and scales the rest by 1/(1-p), the same mask for the same seed; its
/// gradient is the mask.
#[test]
fn dropout_in_training_only() {
    use rustformers_core::layers::{Dropout, TrainMode};
    let mode = std::sync::Arc::new(TrainMode::default());
    let d = Dropout::new(0.25, Some(mode.clone()));
    let x = Tensor::ones(20_000, DType::F64, &Device::Cpu).unwrap();
    assert_eq!(
        d.forward(&x).unwrap().to_vec1::<f64>().unwrap(),
        x.to_vec1::<f64>().unwrap()
    );
    mode.set(true, 7);
    let a = d.forward(&x).unwrap().to_vec1::<f64>().unwrap();
    let zeros = a.iter().filter(|v| **v == 0.0).count() as f64 / a.len() as f64;
    assert!((zeros - 0.25).abs() < 0.02, "{zeros}");
    assert!(a
        .iter()
        .all(|v| *v == 0.0 || (*v - 4.0 / 3.0).abs() < 1e-12));
    mode.set(true, 7);
    assert_eq!(d.forward(&x).unwrap().to_vec1::<f64>().unwrap(), a);
    check(
        "dropout",
        &[randn(&[20_000], &mut Rng::new(8), 1.0)
            .narrow(0, 0, 50)
            .unwrap()],
        |t| {
            // Same seed each call: the finite differences see the same mask.
            mode.set(true, 7);
            d.forward(&t[0])
        },
    );
    mode.set(false, 0);
    assert!(Dropout::new(0.5, None)
        .forward(&x)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
        .iter()
        .all(|v| *v == 1.0));
}
