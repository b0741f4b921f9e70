//! AdamW as `torch.optim.AdamW` (the Trainer's default `adamw_torch`): decoupled weight
//! decay `p ← p·(1 − lr·wd)`, then `p ← p − lr/(1 − β₁ᵗ) · m / (√v/√(1 − β₂ᵗ) + ε)`.
//! Parameters are grouped as the Trainer groups them: no decay for biases and for the
//! weights of normalisation layers. Also: the global gradient-norm clipping of
//! `torch.nn.utils.clip_grad_norm_`.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use rustformers_core::kernels::optim::{
    adamw_update_tensor, scale_tensor, sum_squares_tensor, AdamWStep,
};

use crate::error::{Result, TrainerError};

/// Whether the Trainer decays this parameter: not a bias, not in a normalisation layer
/// (Python excludes `ALL_LAYERNORM_LAYERS` modules and names containing `bias`).
pub fn decays(name: &str) -> bool {
    if name.contains("bias") {
        return false;
    }
    let module = name.rsplit_once('.').map_or("", |(m, _)| m);
    let last = module.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
    !(last.contains("norm") || last.starts_with("ln_") || last == "ln")
}

/// One trainable parameter and its optimizer state.
struct Param {
    name: String,
    var: Var,
    decay: bool,
    /// First and second moments (`exp_avg`, `exp_avg_sq`), f32, in the parameter's
    /// element order.
    m: Vec<f32>,
    v: Vec<f32>,
}

/// AdamW over named parameters.
pub struct AdamW {
    params: Vec<Param>,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Updates taken (torch's per-parameter `step`, equal for all here).
    pub step: usize,
}

impl AdamW {
    pub fn new(
        vars: Vec<(String, Var)>,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    ) -> Result<Self> {
        let params = vars
            .into_iter()
            .map(|(name, var)| {
                let n = var.elem_count();
                Ok(Param {
                    decay: decays(&name),
                    name,
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                    var,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            params,
            beta1,
            beta2,
            eps,
            weight_decay,
            step: 0,
        })
    }

    /// Parameter names in order, with whether each decays.
    pub fn groups(&self) -> Vec<(String, bool)> {
        self.params
            .iter()
            .map(|p| (p.name.clone(), p.decay))
            .collect()
    }

    /// The parameters, in order (the order of [`gather`]'s gradients).
    pub fn vars(&self) -> Vec<Var> {
        self.params.iter().map(|p| p.var.clone()).collect()
    }

    /// One update at learning rate `lr` from `grads` (one per parameter, in order, as
    /// [`gather`] gives them). Parameters without a gradient (unused in the forward) are
    /// left alone, as torch skips `grad is None`.
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        self.step_scaled(grads, lr, 1.0)
    }

    /// [`Self::step`] from the gradients times `grad_scale` (the coefficient of
    /// [`grad_norm_coef`]): the same update as clipping the gradients first, each
    /// gradient value multiplied by the same f32 coefficient, without a pass and a
    /// buffer of its own per gradient.
    pub fn step_scaled(
        &mut self,
        grads: &[Option<Tensor>],
        lr: f64,
        grad_scale: f32,
    ) -> Result<()> {
        if grads.len() != self.params.len() {
            return Err(TrainerError::Other(format!(
                "{} gradients for {} parameters",
                grads.len(),
                self.params.len()
            )));
        }
        self.step += 1;
        let t = self.step as i32;
        for (p, g) in self.params.iter_mut().zip(grads) {
            let Some(g) = g else {
                continue;
            };
            let wd = if p.decay { self.weight_decay } else { 0.0 };
            let coef = AdamWStep {
                grad_scale,
                ..AdamWStep::new(lr, self.beta1, self.beta2, self.eps, wd, t)
            };
            let g = g.to_dtype(DType::F32)?.contiguous()?;
            // The kernel updates f32 parameters in place; half-precision ones are updated
            // on an f32 copy and written back.
            let param = p.var.as_tensor();
            let copy = (param.dtype() != DType::F32)
                .then(|| param.to_dtype(DType::F32))
                .transpose()?;
            let target = copy.as_ref().unwrap_or(param);
            if !adamw_update_tensor(target, &g, &mut p.m, &mut p.v, &coef)? {
                return Err(TrainerError::Other(format!(
                    "AdamW: parameter `{}` is not a contiguous tensor on the CPU",
                    p.name
                )));
            }
            if let Some(w) = copy {
                p.var.set(&w.to_dtype(p.var.dtype())?)?;
            }
        }
        Ok(())
    }

    /// The state as tensors (`{name}.exp_avg`, `{name}.exp_avg_sq`, and `step`), for
    /// optimizer.safetensors in a checkpoint.
    pub fn state(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for p in &self.params {
            let shape = p.var.shape();
            let dev = p.var.device();
            let m = Tensor::from_slice(&p.m, shape, dev)?;
            let v = Tensor::from_slice(&p.v, shape, dev)?;
            out.insert(format!("{}.exp_avg", p.name), m);
            out.insert(format!("{}.exp_avg_sq", p.name), v);
        }
        out.insert(
            "step".into(),
            Tensor::new(&[self.step as f64], &candle_core::Device::Cpu)?,
        );
        Ok(out)
    }

    /// Restores [`Self::state`] (from a checkpoint's optimizer.safetensors).
    pub fn load_state(&mut self, path: &Path) -> Result<()> {
        let device = self
            .params
            .first()
            .map(|p| p.var.device().clone())
            .unwrap_or(candle_core::Device::Cpu);
        let t = candle_core::safetensors::load(path, &device)
            .map_err(|e| TrainerError::Other(format!("{}: {e}", path.display())))?;
        let get = |k: &str| {
            t.get(k).cloned().ok_or_else(|| {
                TrainerError::Other(format!("{}: no optimizer state `{k}`", path.display()))
            })
        };
        for p in &mut self.params {
            let (m, v) = (
                get(&format!("{}.exp_avg", p.name))?,
                get(&format!("{}.exp_avg_sq", p.name))?,
            );
            if m.shape() != p.var.shape() || v.shape() != p.var.shape() {
                return Err(TrainerError::Other(format!(
                    "{}: optimizer state of `{}` has another shape than the model's",
                    path.display(),
                    p.name
                )));
            }
            let flat = |t: Tensor| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>();
            p.m = flat(m)?;
            p.v = flat(v)?;
        }
        self.step = get("step")?
            .to_vec1::<f64>()?
            .first()
            .copied()
            .unwrap_or(0.0) as usize;
        Ok(())
    }
}

/// The gradient of each of `vars` in `store` (`None` where the forward did not use it).
pub fn gather(store: &GradStore, vars: &[Var]) -> Vec<Option<Tensor>> {
    vars.iter()
        .map(|v| store.get(v.as_tensor()).cloned())
        .collect()
}

/// Adds `more` into `acc` (gradient accumulation over micro-batches).
pub fn accumulate(acc: &mut [Option<Tensor>], more: Vec<Option<Tensor>>) -> Result<()> {
    for (a, m) in acc.iter_mut().zip(more) {
        *a = match (a.take(), m) {
            (Some(x), Some(y)) => Some((x + y)?),
            (x, y) => x.or(y),
        };
    }
    Ok(())
}

/// Scales the gradients so that their global L2 norm is at most `max_norm`
/// (`clip_grad_norm_`: coefficient `max_norm / (norm + 1e-6)`, clamped to 1). Returns the
/// norm before clipping.
pub fn clip_grad_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> Result<f64> {
    let (norm, coef) = grad_norm_coef(grads, max_norm)?;
    if coef < 1.0 {
        for g in grads.iter_mut().flatten() {
            *g = match scale_tensor(g, coef)? {
                Some(s) => s,
                None => (&*g * coef as f64)?,
            };
        }
    }
    Ok(norm)
}

/// The gradients' global L2 norm and the coefficient [`clip_grad_norm`] would scale them
/// by (1 when `max_norm` is not positive or not exceeded), in f32 as torch's
/// `clip_grad_norm_` multiplies f32 gradients. [`AdamW::step_scaled`] takes it, so that
/// the scaling is part of the update's one pass over memory.
pub fn grad_norm_coef(grads: &[Option<Tensor>], max_norm: f64) -> Result<(f64, f32)> {
    let mut sq = 0f64;
    for g in grads.iter().flatten() {
        sq += match sum_squares_tensor(g) {
            Some(s) => s,
            None => g
                .to_dtype(DType::F64)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f64>()?,
        };
    }
    let norm = sq.sqrt();
    let coef = (max_norm / (norm + 1e-6)).min(1.0);
    Ok((norm, if max_norm > 0.0 { coef as f32 } else { 1.0 }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn decay_groups_follow_the_trainer() {
        for (name, want) in [
            ("bert.encoder.layer.0.attention.self.query.weight", true),
            ("bert.encoder.layer.0.attention.self.query.bias", false),
            ("bert.embeddings.LayerNorm.weight", false),
            ("bert.embeddings.word_embeddings.weight", true),
            ("model.layers.0.input_layernorm.weight", false),
            ("model.norm.weight", false),
            ("transformer.h.0.ln_1.weight", false),
            ("distilbert.transformer.layer.0.sa_layer_norm.weight", false),
            ("classifier.weight", true),
        ] {
            assert_eq!(decays(name), want, "{name}");
        }
    }

    /// Two steps on f(w) = Σ w² from w = [1, -2, 3], against torch.optim.AdamW(lr=0.1,
    /// weight_decay=0.01) (values computed from its update rule in f64).
    #[test]
    fn adamw_follows_torch() {
        let w = Var::new(&[1f32, -2.0, 3.0], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(vec![("w".into(), w.clone())], 0.9, 0.999, 1e-8, 0.01).unwrap();
        let mut reference = [1f64, -2.0, 3.0];
        let (mut m, mut v) = ([0f64; 3], [0f64; 3]);
        for t in 1..=2 {
            let loss = w.as_tensor().sqr().unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            opt.step(&gather(&grads, std::slice::from_ref(&w)), 0.1)
                .unwrap();
            for i in 0..3 {
                let g = 2.0 * reference[i];
                reference[i] *= 1.0 - 0.1 * 0.01;
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.999 * v[i] + 0.001 * g * g;
                let bc1 = 1.0 - 0.9f64.powi(t);
                let bc2 = 1.0 - 0.999f64.powi(t);
                reference[i] -= 0.1 / bc1 * m[i] / (v[i].sqrt() / bc2.sqrt() + 1e-8);
            }
        }
        let got = w.as_tensor().to_vec1::<f32>().unwrap();
        for (g, r) in got.iter().zip(reference) {
            assert!((*g as f64 - r).abs() < 1e-6, "{got:?} vs {reference:?}");
        }
        // State round trip.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("optimizer.safetensors");
        rustformers_core::weights::save_safetensors(&opt.state().unwrap(), &p).unwrap();
        let mut other = AdamW::new(vec![("w".into(), w.clone())], 0.9, 0.999, 1e-8, 0.01).unwrap();
        other.load_state(&p).unwrap();
        assert_eq!(other.step, 2);
    }

    /// The clipping coefficient applied in the update pass gives exactly the parameters
    /// of clipping the gradients first and updating from them (each gradient value
    /// multiplied by the same f32 coefficient), over three steps, a clipped and an
    /// unclipped one among them.
    #[test]
    fn clipping_in_the_update_equals_clipping_first() {
        let init: Vec<f32> = (0..3000).map(|i| ((i as f32) * 0.37).sin()).collect();
        let make = || {
            let w = Var::from_vec(init.clone(), (3, 1000), &Device::Cpu).unwrap();
            let opt = AdamW::new(vec![("w".into(), w.clone())], 0.9, 0.999, 1e-8, 0.01).unwrap();
            (w, opt)
        };
        let ((wa, mut a), (wb, mut b)) = (make(), make());
        let mut clipped = 0;
        for (t, max_norm) in [(0, 1.0), (1, 1e9), (2, 0.5)] {
            let grads_of = |w: &Var| {
                let loss = (w.as_tensor().sqr().unwrap() * (t + 1) as f64)
                    .unwrap()
                    .sum_all()
                    .unwrap();
                gather(&loss.backward().unwrap(), std::slice::from_ref(w))
            };
            let mut ga = grads_of(&wa);
            let norm = clip_grad_norm(&mut ga, max_norm).unwrap();
            a.step(&ga, 0.1).unwrap();
            let gb = grads_of(&wb);
            let (norm_b, coef) = grad_norm_coef(&gb, max_norm).unwrap();
            assert_eq!(norm, norm_b);
            clipped += usize::from(coef < 1.0);
            b.step_scaled(&gb, 0.1, coef).unwrap();
            let (pa, pb) = (
                wa.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
                wb.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            );
            assert_eq!(pa, pb, "step {t}");
        }
        assert_eq!(clipped, 2);
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let a = Var::new(&[3f32, 0.0], &Device::Cpu).unwrap();
        let b = Var::new(&[4f32], &Device::Cpu).unwrap();
        let loss = ((a.as_tensor().sum_all().unwrap() * 3.0).unwrap()
            + (b.as_tensor().sum_all().unwrap() * 4.0).unwrap())
        .unwrap();
        let store = loss.backward().unwrap();
        let mut grads = gather(&store, &[a.clone(), b.clone()]);
        // Gradients [3, 3] and [4]: norm √34.
        let norm = clip_grad_norm(&mut grads, 1.0).unwrap();
        assert!((norm - 34f64.sqrt()).abs() < 1e-6);
        let ga = grads[0].as_ref().unwrap().to_vec1::<f32>().unwrap();
        let gb = grads[1].as_ref().unwrap().to_vec1::<f32>().unwrap();
        let total = (ga
            .iter()
            .chain(&gb)
            .map(|x| (*x as f64).powi(2))
            .sum::<f64>())
        .sqrt();
        assert!((total - 1.0).abs() < 1e-5, "{total}");
    }
}
