//! Gradient checkpointing (Python's `gradient_checkpointing_enable()`,
//! `torch.utils.checkpoint`): a layer run through [`Checkpointing::run`] keeps only its
//! output from the forward pass; the backward pass runs the layer again from its saved
//! input and backpropagates through that copy. Activation memory drops to the layers'
//! inputs, at the price of a second forward per layer.
//!
//! candle's backward pass sees such a layer as one op with its input as the only
//! argument, so the gradients of the layer's parameters come from the recomputation's
//! own backward pass; they are kept here and added to the outer gradients by
//! [`Checkpointing::merge_into`]. Dropout draws the same masks on the recomputation (its
//! generator is replayed from the state the forward pass started with).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, TensorId, Var};

use crate::layers::TrainMode;
use crate::rng::Rng;

type LayerFn = dyn Fn(&Tensor) -> candle_core::Result<Tensor> + Send + Sync;

/// The checkpointing state of one model loaded for training.
#[derive(Debug, Default)]
pub struct Checkpointing {
    mode: Option<Arc<TrainMode>>,
    /// The trainable parameters (their gradients are collected from recomputations).
    params: Mutex<Vec<Tensor>>,
    /// Gradients of those parameters from the recomputations of the current backward.
    grads: Mutex<HashMap<TensorId, Tensor>>,
    /// Layer recomputations run so far.
    recomputed: std::sync::atomic::AtomicUsize,
}

impl Checkpointing {
    /// `mode`: the model's dropout switch, replayed on recomputation.
    pub fn new(mode: Option<Arc<TrainMode>>) -> Self {
        Self {
            mode,
            ..Default::default()
        }
    }

    /// The model's trainable parameters (known once the model is built).
    pub fn set_params(&self, params: Vec<Tensor>) {
        if let Ok(mut p) = self.params.lock() {
            *p = params;
        }
    }

    /// `f(x)`, keeping only the output; the backward pass runs `f` again. Inputs that
    /// carry no gradient (nothing trainable before them) and non-CPU inputs run `f`
    /// plainly.
    pub fn run(
        self: &Arc<Self>,
        x: &Tensor,
        f: impl Fn(&Tensor) -> candle_core::Result<Tensor> + Send + Sync + 'static,
    ) -> candle_core::Result<Tensor> {
        if !x.track_op() || !x.device().is_cpu() || x.dtype() != DType::F32 {
            return f(x);
        }
        let rng = self.mode.as_ref().and_then(|m| m.snapshot());
        let op = CheckpointOp {
            f: Arc::new(f),
            state: self.clone(),
            rng,
        };
        x.contiguous()?.apply_op1(op)
    }

    /// How many layer recomputations backward passes have run (diagnostics, tests).
    pub fn recomputations(&self) -> usize {
        self.recomputed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Adds the parameter gradients the recomputations found to `store`, and forgets
    /// them (call after each backward pass).
    pub fn merge_into(&self, store: &mut GradStore) -> candle_core::Result<()> {
        let mut grads = self
            .grads
            .lock()
            .map_err(|_| candle_core::Error::Msg("checkpoint gradients poisoned".into()))?;
        let params = self
            .params
            .lock()
            .map_err(|_| candle_core::Error::Msg("checkpoint parameters poisoned".into()))?;
        for p in params.iter() {
            if let Some(g) = grads.remove(&p.id()) {
                let sum = match store.get(p) {
                    Some(outer) => (outer + g)?,
                    None => g,
                };
                store.insert(p, sum);
            }
        }
        grads.clear();
        Ok(())
    }
}

struct CheckpointOp {
    f: Arc<LayerFn>,
    state: Arc<Checkpointing>,
    /// The dropout generator's state when the forward pass started.
    rng: Option<Rng>,
}

impl CustomOp1 for CheckpointOp {
    fn name(&self) -> &'static str {
        "rustformers-checkpoint"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let what = "checkpointed layer";
        let data = crate::kernels::contiguous(crate::kernels::f32_data(s, what)?, l, what)?;
        let x = Tensor::from_vec(data.to_vec(), l.shape(), &Device::Cpu)?;
        // The layer's graph (through its parameters) is dropped with `y`.
        let y = (self.f)(&x)?.to_dtype(DType::F32)?;
        let shape = y.shape().clone();
        Ok((CpuStorage::F32(y.flatten_all()?.to_vec1::<f32>()?), shape))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        self.state
            .recomputed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let x = Var::from_tensor(&arg.detach())?;
        let y = match (&self.state.mode, &self.rng) {
            (Some(m), Some(r)) => m.replay(r.clone(), || (self.f)(x.as_tensor()))?,
            _ => (self.f)(x.as_tensor())?,
        };
        let inner = (y * grad_res.detach())?.sum_all()?.backward()?;
        let params = self
            .state
            .params
            .lock()
            .map_err(|_| candle_core::Error::Msg("checkpoint parameters poisoned".into()))?;
        let mut grads = self
            .state
            .grads
            .lock()
            .map_err(|_| candle_core::Error::Msg("checkpoint gradients poisoned".into()))?;
        for p in params.iter() {
            if let Some(g) = inner.get(p) {
                let sum = match grads.remove(&p.id()) {
                    Some(prev) => (prev + g)?,
                    None => g.clone(),
                };
                grads.insert(p.id(), sum);
            }
        }
        Ok(inner.get(x.as_tensor()).cloned())
    }
}
