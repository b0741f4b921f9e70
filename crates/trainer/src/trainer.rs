//! The training loop of Python's `Trainer` (transformers 4.46, `trainer.py`): shuffled
//! micro-batches, gradient accumulation, clipping, AdamW and the LR schedule, logging
//! into `log_history`, evaluation and checkpoints by strategy, callbacks, resuming from
//! a checkpoint, the best model at the end.
//!
//! Checkpoints are `checkpoint-N/` folders written under a temporary name and renamed
//! into place, so a process killed mid-save leaves every earlier checkpoint whole. They
//! hold the model as a normal HF checkpoint (model.safetensors, config.json, tokenizer
//! files), the optimizer state (optimizer.safetensors: rustformers' format, PyTorch's
//! optimizer.pt is a pickle), the schedule (scheduler.json), trainer_state.json (Python's
//! keys), the data-order state (rng_state.json) and training_args.json.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use serde_json::{json, Map, Value};

use rustformers_core::rng::Rng;
use rustformers_core::AutoTokenizer;
use rustformers_models::{
    CausalLanguageModel, CausalLmInputs, EncoderInputs, LogitsMode, MaskedLmModel, PreTrainedModel,
    SequenceClassificationModel, TokenClassificationModel,
};

use crate::args::{IntervalStrategy, TrainingArguments};
use crate::callbacks::{best_metric_value, TrainerCallback, TrainerControl, TrainerState};
use crate::error::{Result, TrainerError};
use crate::optim::{accumulate, gather, grad_norm_coef, AdamW};
use crate::report::Reporter;
use crate::schedule::Schedule;

/// One tokenized example.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    pub input_ids: Vec<u32>,
    pub token_type_ids: Vec<u32>,
    /// Sequence classification: the class index (or a regression target's f32 bits).
    /// Token classification: one label per token ([`IGNORE`] where none). Language
    /// modelling: empty (the collator derives them).
    pub labels: Vec<u32>,
}

pub use crate::loss::IGNORE;

/// A padded batch: `labels` is `[batch]` for sequence classification, `[batch, seq]`
/// otherwise ([`IGNORE`] where no loss is taken).
#[derive(Debug, Clone)]
pub struct Batch {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    pub token_type_ids: Tensor,
    pub labels: Tensor,
}

impl Batch {
    /// The batch as an encoder's inputs.
    pub fn encoder_inputs(&self) -> EncoderInputs<'_> {
        EncoderInputs {
            input_ids: &self.input_ids,
            attention_mask: Some(&self.attention_mask),
            token_type_ids: Some(&self.token_type_ids),
        }
    }
}

/// How examples become a batch (Python's data collators).
#[derive(Debug, Clone, PartialEq)]
pub enum Collator {
    /// `DataCollatorWithPadding`: inputs padded to the longest, one label per example.
    Classification,
    /// `DataCollatorForTokenClassification`: labels padded with [`IGNORE`].
    TokenClassification,
    /// `DataCollatorForLanguageModeling(mlm=True)`: each non-special token is chosen with
    /// `probability`; a chosen token is the label and its input becomes `[MASK]` (80%),
    /// a random token (10%) or stays (10%); every other label is [`IGNORE`].
    MaskedLm {
        probability: f64,
        mask_id: u32,
        vocab_size: usize,
        special_ids: Vec<u32>,
    },
    /// `DataCollatorForLanguageModeling(mlm=False)`: labels are the inputs, padding
    /// [`IGNORE`]d; the model shifts them.
    CausalLm,
}

/// What the Trainer trains: its parameters, a forward pass giving the mean loss and the
/// logits of a batch, and a save as a normal HF checkpoint.
pub trait TrainModel {
    fn parameters(&self) -> Vec<(String, Var)>;
    fn loss(&self, batch: &Batch) -> Result<(Tensor, Tensor)>;
    fn save(&self, dir: &Path) -> Result<()>;
    /// Training mode (dropout on, masks drawn from `seed`) or evaluation.
    fn set_training(&self, _on: bool, _seed: u64) {}
    /// Loaded for bf16 mixed-precision training (`TrainLoad::bf16`).
    fn bf16(&self) -> bool {
        false
    }
    /// Loaded with gradient checkpointing (`TrainLoad::gradient_checkpointing`).
    fn gradient_checkpointing(&self) -> bool {
        false
    }
    /// The gradients of `loss` (checkpointed layers' and fused layers' parameters
    /// included).
    fn backward(&self, loss: &Tensor) -> Result<candle_core::backprop::GradStore> {
        Ok(loss.backward()?)
    }
}

/// The [`TrainModel`] methods every `PreTrainedModel` head shares (its parameters, a
/// save as a normal checkpoint, the dropout switch).
macro_rules! pretrained_model_methods {
    () => {
        fn parameters(&self) -> Vec<(String, Var)> {
            self.trainable_parameters().to_vec()
        }

        fn save(&self, dir: &Path) -> Result<()> {
            Ok(self.save_pretrained(dir)?)
        }

        fn set_training(&self, on: bool, seed: u64) {
            if let Some(m) = self.train_mode() {
                m.set(on, seed);
            }
        }

        fn bf16(&self) -> bool {
            self.bf16_training()
        }

        fn gradient_checkpointing(&self) -> bool {
            PreTrainedModel::gradient_checkpointing(self)
        }

        fn backward(&self, loss: &Tensor) -> Result<candle_core::backprop::GradStore> {
            Ok(PreTrainedModel::backward(self, loss)?)
        }
    };
}

impl TrainModel for PreTrainedModel<dyn SequenceClassificationModel> {
    pretrained_model_methods!();

    /// Python's heads: one label → mean squared error (regression), else cross-entropy.
    fn loss(&self, batch: &Batch) -> Result<(Tensor, Tensor)> {
        let logits = self.model.forward(batch.encoder_inputs())?;
        let loss = if logits.dim(1)? == 1 {
            let target = batch.labels.to_vec1::<u32>()?;
            let target: Vec<f32> = target.into_iter().map(f32::from_bits).collect();
            let target = Tensor::new(target.as_slice(), logits.device())?;
            crate::loss::mse(&logits, &target)?
        } else {
            crate::loss::cross_entropy(&logits, &batch.labels)?
        };
        Ok((loss, logits))
    }
}

/// Mean cross-entropy of `[batch, seq, classes]` logits against `[batch, seq]` labels
/// ([`IGNORE`] left out), with the labels shifted left by `shift` positions (causal LM:
/// position `t` predicts token `t + 1`).
fn token_loss(logits: &Tensor, labels: &Tensor, shift: usize) -> Result<Tensor> {
    let (b, s, c) = logits.dims3()?;
    if s <= shift {
        return Ok(Tensor::zeros((), DType::F32, logits.device())?);
    }
    let logits = logits
        .narrow(1, 0, s - shift)?
        .reshape((b * (s - shift), c))?;
    let labels = labels.narrow(1, shift, s - shift)?.flatten_all()?;
    Ok(crate::loss::cross_entropy(&logits, &labels)?)
}

impl TrainModel for PreTrainedModel<dyn TokenClassificationModel> {
    pretrained_model_methods!();

    fn loss(&self, batch: &Batch) -> Result<(Tensor, Tensor)> {
        let logits = self.model.forward(batch.encoder_inputs())?;
        Ok((token_loss(&logits, &batch.labels, 0)?, logits))
    }
}

impl TrainModel for PreTrainedModel<dyn MaskedLmModel> {
    pretrained_model_methods!();

    fn loss(&self, batch: &Batch) -> Result<(Tensor, Tensor)> {
        let logits = self.model.forward(batch.encoder_inputs())?;
        Ok((token_loss(&logits, &batch.labels, 0)?, logits))
    }
}

/// Causal LM: Python's `ForCausalLMLoss` (labels shifted inside the loss).
impl TrainModel for PreTrainedModel<dyn CausalLanguageModel> {
    pretrained_model_methods!();

    fn loss(&self, batch: &Batch) -> Result<(Tensor, Tensor)> {
        let logits = self.model.forward(
            CausalLmInputs {
                input_ids: &batch.input_ids,
                attention_mask: Some(&batch.attention_mask),
                position_ids: None,
            },
            None,
            LogitsMode::All,
        )?;
        Ok((token_loss(&logits, &batch.labels, 1)?, logits))
    }
}

/// Predictions and labels handed to `compute_metrics` (Python's `EvalPrediction`): one
/// row per example (sequence classification) or per labelled token.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvalPrediction {
    /// Logits per row (left empty where a row has more than 1024 classes: a vocabulary).
    pub predictions: Vec<Vec<f32>>,
    /// The arg-max class of each row.
    pub pred_ids: Vec<u32>,
    pub label_ids: Vec<u32>,
}

/// Accuracy of the arg-max predictions.
pub fn accuracy(p: &EvalPrediction) -> f64 {
    if p.label_ids.is_empty() {
        return 0.0;
    }
    let hits = p
        .pred_ids
        .iter()
        .zip(&p.label_ids)
        .filter(|(a, b)| a == b)
        .count();
    hits as f64 / p.label_ids.len() as f64
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, v)| {
            if *v > bv {
                (i, *v)
            } else {
                (bi, bv)
            }
        })
        .0
}

/// What `predict` returns (Python's `PredictionOutput`): the predictions and labels,
/// and the metrics with the `test_` prefix (loss, `compute_metrics`, speed).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PredictionOutput {
    pub predictions: EvalPrediction,
    pub metrics: Map<String, Value>,
}

/// Metrics from predictions (Python's `compute_metrics`); keys get the `eval_` prefix.
pub type ComputeMetrics = Box<dyn Fn(&EvalPrediction) -> Map<String, Value> + Send>;

/// `compute_metrics` giving `{"accuracy": ...}` (what Python's example scripts load with
/// `evaluate.load("accuracy")`).
pub fn accuracy_metrics() -> ComputeMetrics {
    Box::new(|p| {
        let mut m = Map::new();
        m.insert("accuracy".into(), json!(accuracy(p)));
        m
    })
}

/// What `train` returns (Python's `TrainOutput`).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOutput {
    pub global_step: usize,
    pub training_loss: f64,
    pub metrics: Map<String, Value>,
}

/// The Trainer for a model, its tokenizer and datasets.
pub struct Trainer<'m> {
    pub args: TrainingArguments,
    model: &'m dyn TrainModel,
    tokenizer: Option<&'m AutoTokenizer>,
    train: Vec<Features>,
    eval: Option<Vec<Features>>,
    pad_id: u32,
    left_pad: bool,
    collator: Collator,
    callbacks: Vec<Box<dyn TrainerCallback>>,
    compute_metrics: Option<ComputeMetrics>,
    pub state: TrainerState,
    device: Device,
}

/// Where a training loop stands.
struct Loop {
    optimizer: AdamW,
    vars: Vec<Var>,
    schedule: Schedule,
    control: TrainerControl,
    /// Loss summed since the last log, and the updates it covers.
    loss_since_log: f64,
    updates_since_log: usize,
    total_loss: f64,
    last_grad_norm: Option<f64>,
    last_eval: Option<Map<String, Value>>,
    reporter: Reporter,
}

impl<'m> Trainer<'m> {
    /// A Trainer; `tokenizer` (saved into every checkpoint) also gives the padding id
    /// and side.
    pub fn new(
        args: TrainingArguments,
        model: &'m dyn TrainModel,
        tokenizer: Option<&'m AutoTokenizer>,
        train: Vec<Features>,
        eval: Option<Vec<Features>>,
    ) -> Result<Self> {
        let args = args.validated()?;
        if train.is_empty() {
            return Err(TrainerError::Other("the training set is empty".into()));
        }
        if args.gradient_checkpointing != model.gradient_checkpointing() {
            return Err(TrainerError::Other(if args.gradient_checkpointing {
                "gradient_checkpointing is set but the model was loaded without it: load it \
                 with TrainLoad { gradient_checkpointing: true, .. }"
                    .into()
            } else {
                "the model was loaded with gradient checkpointing (TrainLoad { \
                 gradient_checkpointing: true }) but gradient_checkpointing is not set in the \
                 TrainingArguments"
                    .into()
            }));
        }
        if args.bf16 != model.bf16() {
            return Err(TrainerError::Other(if args.bf16 {
                "bf16 is set but the model was loaded for f32 training: load it with \
                 TrainLoad { bf16: true, .. }"
                    .into()
            } else {
                "the model was loaded for bf16 training (TrainLoad { bf16: true }) but bf16 \
                 is not set in the TrainingArguments"
                    .into()
            }));
        }
        if eval.is_none() && args.eval_strategy != IntervalStrategy::No {
            // Python's Trainer refuses this too.
            return Err(TrainerError::Args(format!(
                "eval_strategy is {} but no evaluation set was given: pass one (--eval-file) \
                 or set eval_strategy to no",
                format!("{:?}", args.eval_strategy).to_lowercase()
            )));
        }
        let device = model
            .parameters()
            .first()
            .map(|(_, v)| v.device().clone())
            .ok_or_else(|| {
                TrainerError::Other(
                    "the model has no trainable parameters (load it with for_training)".into(),
                )
            })?;
        Ok(Self {
            pad_id: tokenizer.and_then(|t| t.pad_token_id()).unwrap_or(0),
            left_pad: tokenizer
                .is_some_and(|t| t.padding_side() == rustformers_core::tokenizer::Side::Left),
            args,
            model,
            tokenizer,
            train,
            eval,
            collator: Collator::Classification,
            callbacks: Vec::new(),
            compute_metrics: None,
            state: TrainerState::default(),
            device,
        })
    }

    /// Sets how batches are built (default [`Collator::Classification`]).
    pub fn set_collator(&mut self, c: Collator) {
        self.collator = c;
    }

    /// Adds a callback; its `on_init_end` runs now (Python calls it at the end of
    /// `Trainer.__init__`).
    pub fn add_callback(&mut self, mut cb: Box<dyn TrainerCallback>) {
        let mut control = TrainerControl::default();
        cb.on_init_end(&self.args, &self.state, &mut control);
        self.callbacks.push(cb);
    }

    /// Whether an evaluation set was given.
    pub fn has_eval(&self) -> bool {
        self.eval.is_some()
    }

    pub fn set_compute_metrics(&mut self, f: ComputeMetrics) {
        self.compute_metrics = Some(f);
    }

    /// Pads `examples` to the longest (on the tokenizer's side) into a batch; `rng`
    /// draws the masked-LM choices.
    pub fn collate(&self, examples: &[&Features], rng: &mut Rng) -> Result<Batch> {
        let len = examples
            .iter()
            .map(|e| e.input_ids.len())
            .max()
            .unwrap_or(0);
        let n = examples.len();
        let mut ids = Vec::with_capacity(n * len);
        let mut mask = Vec::with_capacity(n * len);
        let mut types = Vec::with_capacity(n * len);
        let mut labels = Vec::with_capacity(n * len);
        for e in examples {
            let k = e.input_ids.len();
            let pad = len - k;
            let mut row_ids = e.input_ids.clone();
            let mut row_labels: Vec<u32> = match &self.collator {
                Collator::Classification => Vec::new(),
                Collator::TokenClassification => {
                    let mut l = e.labels.clone();
                    l.resize(k, IGNORE);
                    l
                }
                Collator::CausalLm => e
                    .input_ids
                    .iter()
                    .map(|t| if *t == self.pad_id { IGNORE } else { *t })
                    .collect(),
                Collator::MaskedLm {
                    probability,
                    mask_id,
                    vocab_size,
                    special_ids,
                } => {
                    let mut l = vec![IGNORE; k];
                    for (i, t) in e.input_ids.iter().enumerate() {
                        if special_ids.contains(t) || rng.uniform() >= *probability {
                            continue;
                        }
                        l[i] = *t;
                        let r = rng.uniform();
                        if r < 0.8 {
                            row_ids[i] = *mask_id;
                        } else if r < 0.9 {
                            row_ids[i] = rng.below(*vocab_size) as u32;
                        }
                    }
                    l
                }
            };
            let mut row_types = e.token_type_ids.clone();
            row_types.resize(k, 0);
            let fill = |v: &mut Vec<u32>, value: u32| v.extend(std::iter::repeat_n(value, pad));
            if self.left_pad {
                fill(&mut ids, self.pad_id);
                fill(&mut mask, 0);
                fill(&mut types, 0);
                if self.collator != Collator::Classification {
                    fill(&mut labels, IGNORE);
                }
            }
            ids.append(&mut row_ids);
            mask.extend(std::iter::repeat_n(1u32, k));
            types.append(&mut row_types);
            match self.collator {
                Collator::Classification => {
                    labels.push(e.labels.first().copied().unwrap_or(IGNORE))
                }
                _ => labels.append(&mut row_labels),
            }
            if !self.left_pad {
                fill(&mut ids, self.pad_id);
                fill(&mut mask, 0);
                fill(&mut types, 0);
                if self.collator != Collator::Classification {
                    fill(&mut labels, IGNORE);
                }
            }
        }
        let labels = match self.collator {
            Collator::Classification => Tensor::from_vec(labels, n, &self.device)?,
            _ => Tensor::from_vec(labels, (n, len), &self.device)?,
        };
        Ok(Batch {
            input_ids: Tensor::from_vec(ids, (n, len), &self.device)?,
            attention_mask: Tensor::from_vec(mask, (n, len), &self.device)?,
            token_type_ids: Tensor::from_vec(types, (n, len), &self.device)?,
            labels,
        })
    }

    /// The generator of micro-batch `index` of `epoch` (masked-LM choices): fixed by
    /// the seed, so a resumed run draws the same masks.
    fn batch_rng(&self, epoch: usize, index: usize) -> Rng {
        Rng::new(
            self.args.seed
                ^ (epoch as u64).wrapping_mul(0xA24B_AED4_963E_E407)
                ^ (index as u64).wrapping_mul(0x9FB2_1C65_1E98_DF25),
        )
    }

    /// Micro-batches per epoch, optimizer updates per epoch as Python counts them for
    /// `max_steps` (`len(dataloader) // gradient_accumulation_steps`, at least 1), and
    /// the updates an epoch really runs (a last, shorter accumulation makes one more).
    fn epoch_shape(&self) -> (usize, usize, usize) {
        let micro = self
            .train
            .len()
            .div_ceil(self.args.per_device_train_batch_size);
        let ga = self.args.gradient_accumulation_steps;
        (micro, (micro / ga).max(1), micro.div_ceil(ga))
    }

    /// The example order of `epoch` (reproducible from the seed, so a resumed run
    /// sees the same batches).
    fn order(&self, epoch: usize) -> Vec<usize> {
        let mut rng = Rng::new(self.args.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut idx: Vec<usize> = (0..self.train.len()).collect();
        rng.shuffle(&mut idx);
        idx
    }

    /// Trains; with `resume_from_checkpoint`, the weights, optimizer, schedule position,
    /// state and data order continue from that checkpoint.
    pub fn train(&mut self, resume_from_checkpoint: Option<&Path>) -> Result<TrainOutput> {
        let args = self.args.clone();
        let (micro_per_epoch, updates_per_epoch, updates_run_per_epoch) = self.epoch_shape();
        for cb in &self.callbacks {
            cb.check_args(&args)?;
        }
        let total = if args.max_steps > 0 {
            args.max_steps as usize
        } else {
            (args.num_train_epochs * updates_per_epoch as f64).ceil() as usize
        };
        let num_epochs = if args.max_steps > 0 {
            total.div_ceil(updates_per_epoch)
        } else {
            args.num_train_epochs.ceil() as usize
        };
        let params = self.model.parameters();
        let vars: Vec<Var> = params.iter().map(|(_, v)| v.clone()).collect();
        let optimizer = AdamW::new(
            params,
            args.adam_beta1,
            args.adam_beta2,
            args.adam_epsilon,
            args.weight_decay,
        )?;
        let schedule = Schedule {
            kind: args.lr_scheduler_type,
            warmup: args.warmup_for(total),
            total,
        };
        std::fs::create_dir_all(&args.output_dir)
            .map_err(|e| TrainerError::io(&args.output_dir, e))?;
        remove_unfinished_saves(&args.output_dir)?;
        let mut lp = Loop {
            optimizer,
            vars,
            schedule,
            control: TrainerControl::default(),
            loss_since_log: 0.0,
            updates_since_log: 0,
            total_loss: 0.0,
            last_grad_norm: None,
            last_eval: None,
            reporter: Reporter::new(&args)?,
        };
        self.state = TrainerState {
            max_steps: total,
            logging_steps: TrainingArguments::steps_of(args.logging_steps, total),
            eval_steps: TrainingArguments::steps_of(
                args.eval_steps.unwrap_or(args.logging_steps),
                total,
            ),
            save_steps: TrainingArguments::steps_of(args.save_steps, total),
            train_batch_size: args.per_device_train_batch_size,
            num_train_epochs: num_epochs,
            is_local_process_zero: true,
            is_world_process_zero: true,
            ..Default::default()
        };
        if let Some(ckpt) = resume_from_checkpoint {
            self.resume(ckpt, &mut lp)?;
        }
        // Where the checkpoint stopped, counted in the updates the loop runs per epoch
        // (Python counts `len(dataloader) // gradient_accumulation_steps`, which lands
        // elsewhere when an epoch ends in a shorter accumulation).
        let epochs_done = self.state.global_step / updates_run_per_epoch;
        let mut skip_micro =
            (self.state.global_step % updates_run_per_epoch) * args.gradient_accumulation_steps;
        let start = Instant::now();
        let start_step = self.state.global_step;
        let progress = progress_bar(total as u64, start_step as u64);
        self.each(&mut lp.control, |cb, a, s, c| cb.on_train_begin(a, s, c));
        'epochs: for epoch in epochs_done..num_epochs {
            if self.state.global_step >= total {
                break;
            }
            let order = self.order(epoch);
            let micro: Vec<&[usize]> = order.chunks(args.per_device_train_batch_size).collect();
            lp.control.should_epoch_stop = false;
            self.each(&mut lp.control, |cb, a, s, c| cb.on_epoch_begin(a, s, c));
            let mut grads: Vec<Option<Tensor>> = vec![None; lp.vars.len()];
            let mut in_update = 0;
            let mut loss_in_update = 0.0;
            for (mi, idx) in micro.iter().enumerate() {
                if skip_micro > 0 {
                    skip_micro -= 1;
                    continue;
                }
                if in_update == 0 {
                    self.each(&mut lp.control, |cb, a, s, c| cb.on_step_begin(a, s, c));
                }
                let examples: Vec<&Features> = idx.iter().map(|i| &self.train[*i]).collect();
                let mut rng = self.batch_rng(epoch, mi);
                let batch = self.collate(&examples, &mut rng)?;
                self.model.set_training(true, rng.next_u64());
                let (loss, _) = self.model.loss(&batch)?;
                let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                if !value.is_finite() {
                    return Err(TrainerError::Other(format!(
                        "the loss became {value} at step {} (lower the learning rate)",
                        self.state.global_step + 1
                    )));
                }
                let scaled = (loss / args.gradient_accumulation_steps as f64)?;
                let store = self.model.backward(&scaled)?;
                accumulate(&mut grads, gather(&store, &lp.vars))?;
                loss_in_update += value / args.gradient_accumulation_steps as f64;
                in_update += 1;
                let last = mi + 1 == micro.len();
                if in_update < args.gradient_accumulation_steps && !last {
                    self.each(&mut lp.control, |cb, a, s, c| cb.on_substep_end(a, s, c));
                    continue;
                }
                // One optimizer update.
                // Clipping's coefficient goes into the update pass (the same values as
                // scaling the gradients first).
                let mut grad_scale = 1.0;
                if args.max_grad_norm > 0.0 {
                    let (norm, coef) = grad_norm_coef(&grads, args.max_grad_norm)?;
                    lp.last_grad_norm = Some(norm);
                    grad_scale = coef;
                }
                let lr = lp.schedule.lr(self.state.global_step, args.learning_rate);
                self.each(&mut lp.control, |cb, a, s, c| {
                    cb.on_pre_optimizer_step(a, s, c)
                });
                lp.optimizer.step_scaled(&grads, lr, grad_scale)?;
                self.each(&mut lp.control, |cb, a, s, c| cb.on_optimizer_step(a, s, c));
                grads = vec![None; lp.vars.len()];
                in_update = 0;
                self.state.global_step += 1;
                self.state.epoch = epoch as f64 + (mi + 1) as f64 / micro_per_epoch as f64;
                lp.loss_since_log += loss_in_update;
                lp.total_loss += loss_in_update;
                lp.updates_since_log += 1;
                loss_in_update = 0.0;
                progress.set_position(self.state.global_step as u64);
                progress.set_message(format!(
                    "loss {:.4} lr {:.2e}",
                    lp.loss_since_log / lp.updates_since_log as f64,
                    lp.schedule.lr(self.state.global_step, args.learning_rate)
                ));
                self.each(&mut lp.control, |cb, a, s, c| cb.on_step_end(a, s, c));
                let step = self.state.global_step;
                if step.is_multiple_of(self.state.logging_steps) || step == total {
                    lp.control.should_log = true;
                }
                if args.eval_strategy == IntervalStrategy::Steps
                    && step.is_multiple_of(self.state.eval_steps)
                {
                    lp.control.should_evaluate = true;
                }
                if args.save_strategy == IntervalStrategy::Steps
                    && step.is_multiple_of(self.state.save_steps)
                {
                    lp.control.should_save = true;
                }
                if step >= total {
                    lp.control.should_training_stop = true;
                }
                self.log_evaluate_save(&mut lp)?;
                if lp.control.should_training_stop || lp.control.should_epoch_stop {
                    break;
                }
            }
            self.each(&mut lp.control, |cb, a, s, c| cb.on_epoch_end(a, s, c));
            if args.eval_strategy == IntervalStrategy::Epoch {
                lp.control.should_evaluate = true;
            }
            if args.save_strategy == IntervalStrategy::Epoch {
                lp.control.should_save = true;
            }
            self.log_evaluate_save(&mut lp)?;
            if lp.control.should_training_stop {
                break 'epochs;
            }
        }
        progress.finish_and_clear();
        self.model.set_training(false, 0);
        if args.load_best_model_at_end {
            if let Some(best) = self.state.best_model_checkpoint.clone() {
                load_weights(&lp.optimizer, Path::new(&best))?;
            }
        }
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        let steps_run = self.state.global_step - start_step;
        let training_loss = lp.total_loss / steps_run.max(1) as f64;
        let samples =
            steps_run * args.per_device_train_batch_size * args.gradient_accumulation_steps;
        let mut metrics = Map::new();
        metrics.insert("train_runtime".into(), json!(round4(secs)));
        metrics.insert(
            "train_samples_per_second".into(),
            json!(round3(samples as f64 / secs)),
        );
        metrics.insert(
            "train_steps_per_second".into(),
            json!(round3(steps_run as f64 / secs)),
        );
        metrics.insert("total_flos".into(), json!(0.0));
        metrics.insert("train_loss".into(), json!(training_loss));
        self.log(&mut lp, metrics.clone())?;
        self.each(&mut lp.control, |cb, a, s, c| cb.on_train_end(a, s, c));
        lp.reporter.finish(&self.state)?;
        Ok(TrainOutput {
            global_step: self.state.global_step,
            training_loss,
            metrics,
        })
    }

    /// Calls one hook on every callback.
    fn each(
        &mut self,
        control: &mut TrainerControl,
        f: impl Fn(&mut dyn TrainerCallback, &TrainingArguments, &TrainerState, &mut TrainerControl),
    ) {
        for cb in self.callbacks.iter_mut() {
            f(cb.as_mut(), &self.args, &self.state, control);
        }
    }

    /// Adds `logs` (with epoch and step) to the history, the reporter and the callbacks.
    fn log(&mut self, lp: &mut Loop, logs: Map<String, Value>) -> Result<()> {
        let mut control = lp.control;
        self.record(&mut control, logs);
        lp.control = control;
        match self.state.log_history.last() {
            Some(recorded) => lp.reporter.log(recorded),
            None => Ok(()),
        }
    }

    /// Stamps `logs` with epoch and step, gives them to the callbacks' `on_log` and adds
    /// them to `log_history`.
    fn record(&mut self, control: &mut TrainerControl, mut logs: Map<String, Value>) {
        logs.insert("epoch".into(), json!(self.state.epoch));
        logs.insert("step".into(), json!(self.state.global_step));
        for cb in self.callbacks.iter_mut() {
            cb.on_log(&self.args, &self.state, control, &logs);
        }
        self.state.log_history.push(logs);
    }

    /// Python's `_maybe_log_save_evaluate`.
    fn log_evaluate_save(&mut self, lp: &mut Loop) -> Result<()> {
        if lp.control.should_log && lp.updates_since_log > 0 {
            let mut logs = Map::new();
            logs.insert(
                "loss".into(),
                json!(round4(lp.loss_since_log / lp.updates_since_log as f64)),
            );
            if let Some(n) = lp.last_grad_norm {
                logs.insert("grad_norm".into(), json!(n));
            }
            logs.insert(
                "learning_rate".into(),
                json!(lp
                    .schedule
                    .lr(self.state.global_step, self.args.learning_rate)),
            );
            lp.loss_since_log = 0.0;
            lp.updates_since_log = 0;
            self.log(lp, logs)?;
        }
        lp.control.should_log = false;
        if lp.control.should_evaluate {
            lp.control.should_evaluate = false;
            if self.eval.is_some() {
                let metrics = self.evaluate_in(lp)?;
                lp.last_eval = Some(metrics);
            }
        }
        if lp.control.should_save {
            lp.control.should_save = false;
            self.save_checkpoint(lp)?;
        }
        Ok(())
    }

    /// Loss (and `compute_metrics`) over the evaluation set with the `eval_` prefix,
    /// added to `log_history` (with epoch and step) and given to the callbacks, as
    /// Python's `evaluate`.
    pub fn evaluate(&mut self) -> Result<Map<String, Value>> {
        let mut control = TrainerControl::default();
        let eval = self
            .eval
            .clone()
            .ok_or_else(|| TrainerError::Other("no evaluation set".into()))?;
        let metrics = self.metrics_of(&eval, "eval")?;
        self.record(&mut control, metrics.clone());
        for cb in self.callbacks.iter_mut() {
            cb.on_evaluate(&self.args, &self.state, &mut control, &metrics);
        }
        Ok(metrics)
    }

    /// Predictions for `data` with the `test_` metrics (loss, `compute_metrics`,
    /// speed), as Python's `predict`; calls the callbacks' `on_predict`. Nothing is
    /// logged.
    pub fn predict(&mut self, data: &[Features]) -> Result<PredictionOutput> {
        let (predictions, metrics) = self.predictions_and_metrics(data, "test")?;
        let mut control = TrainerControl::default();
        for cb in self.callbacks.iter_mut() {
            cb.on_predict(&self.args, &self.state, &mut control, &metrics);
        }
        Ok(PredictionOutput {
            predictions,
            metrics,
        })
    }

    fn evaluate_in(&mut self, lp: &mut Loop) -> Result<Map<String, Value>> {
        let eval = self.eval.clone().unwrap_or_default();
        let metrics = self.metrics_of(&eval, "eval")?;
        self.log(lp, metrics.clone())?;
        let mut control = lp.control;
        for cb in self.callbacks.iter_mut() {
            cb.on_evaluate(&self.args, &self.state, &mut control, &metrics);
        }
        lp.control = control;
        Ok(metrics)
    }

    /// Predictions and labels of `data` (in order) and the mean loss. Token-level tasks
    /// give one row per labelled token. Calls the callbacks' `on_prediction_step` after
    /// each batch.
    pub fn predictions(&mut self, data: &[Features]) -> Result<(EvalPrediction, f64)> {
        self.model.set_training(false, 0);
        let mut pred = EvalPrediction::default();
        let mut loss_sum = 0.0;
        for (bi, chunk) in data
            .chunks(self.args.per_device_eval_batch_size)
            .enumerate()
        {
            let examples: Vec<&Features> = chunk.iter().collect();
            let batch = self.collate(&examples, &mut self.batch_rng(usize::MAX, bi))?;
            let (loss, logits) = self.model.loss(&batch)?;
            let logits = logits.detach().to_dtype(DType::F32)?;
            loss_sum += loss.to_dtype(DType::F64)?.to_scalar::<f64>()? * chunk.len() as f64;
            let mut control = TrainerControl::default();
            self.each(&mut control, |cb, a, s, c| cb.on_prediction_step(a, s, c));
            if logits.rank() == 2 {
                let rows = logits.to_vec2::<f32>()?;
                pred.pred_ids.extend(rows.iter().map(|r| argmax(r) as u32));
                pred.predictions.extend(rows);
                pred.label_ids.extend(batch.labels.to_vec1::<u32>()?);
                continue;
            }
            // [batch, seq, classes]: the labelled positions (causal LM: shifted).
            let (b, s, c) = logits.dims3()?;
            let labels = batch.labels.to_vec2::<u32>()?;
            let shift = usize::from(self.collator == Collator::CausalLm);
            let flat = logits.reshape((b * s, c))?;
            let keep_full = c <= 1024;
            for (i, row) in labels.iter().enumerate() {
                for j in 0..s.saturating_sub(shift) {
                    let label = row[j + shift];
                    if label == IGNORE {
                        continue;
                    }
                    let v = flat.get(i * s + j)?.to_vec1::<f32>()?;
                    pred.pred_ids.push(argmax(&v) as u32);
                    if keep_full {
                        pred.predictions.push(v);
                    }
                    pred.label_ids.push(label);
                }
            }
        }
        Ok((pred, loss_sum / data.len().max(1) as f64))
    }

    fn metrics_of(&mut self, data: &[Features], prefix: &str) -> Result<Map<String, Value>> {
        Ok(self.predictions_and_metrics(data, prefix)?.1)
    }

    fn predictions_and_metrics(
        &mut self,
        data: &[Features],
        prefix: &str,
    ) -> Result<(EvalPrediction, Map<String, Value>)> {
        let start = Instant::now();
        let (pred, loss) = self.predictions(data)?;
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        let mut m = Map::new();
        m.insert(format!("{prefix}_loss"), json!(loss));
        if let Some(f) = &self.compute_metrics {
            for (k, v) in f(&pred) {
                let key = if k.starts_with(&format!("{prefix}_")) {
                    k
                } else {
                    format!("{prefix}_{k}")
                };
                m.insert(key, v);
            }
        }
        let batches = data.len().div_ceil(self.args.per_device_eval_batch_size);
        m.insert(format!("{prefix}_runtime"), json!(round4(secs)));
        m.insert(
            format!("{prefix}_samples_per_second"),
            json!(round3(data.len() as f64 / secs)),
        );
        m.insert(
            format!("{prefix}_steps_per_second"),
            json!(round3(batches as f64 / secs)),
        );
        Ok((pred, m))
    }

    /// Writes `checkpoint-{step}` atomically, updates the best checkpoint, rotates.
    fn save_checkpoint(&mut self, lp: &mut Loop) -> Result<()> {
        let step = self.state.global_step;
        let out = &self.args.output_dir;
        let name = format!("checkpoint-{step}");
        let dir = out.join(&name);
        if let (Some(metrics), Some(_)) = (&lp.last_eval, &self.args.metric_for_best_model) {
            if let Some(value) = best_metric_value(&self.args, metrics) {
                let greater = self.args.greater_is_better.unwrap_or(false);
                let better =
                    self.state
                        .best_metric
                        .is_none_or(|b| if greater { value > b } else { value < b });
                if better {
                    self.state.best_metric = Some(value);
                    self.state.best_model_checkpoint = Some(dir.display().to_string());
                }
            }
        }
        let tmp = out.join(format!(".{name}.tmp-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| TrainerError::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| TrainerError::io(&tmp, e))?;
        self.model.save(&tmp)?;
        if let Some(t) = self.tokenizer {
            t.save_pretrained(&tmp)?;
        }
        rustformers_core::weights::save_safetensors(
            &lp.optimizer.state()?,
            &tmp.join("optimizer.safetensors"),
        )?;
        write_json(
            &tmp.join("scheduler.json"),
            &json!({"last_epoch": step, "kind": lp.schedule.kind, "warmup": lp.schedule.warmup,
                "total": lp.schedule.total, "base_lr": self.args.learning_rate}),
        )?;
        write_json(
            &tmp.join("rng_state.json"),
            &json!({"seed": self.args.seed, "epoch": self.state.epoch}),
        )?;
        write_json(
            &tmp.join("training_args.json"),
            &Value::Object(crate::args::to_json(&self.args)),
        )?;
        write_json(
            &tmp.join("trainer_state.json"),
            &serde_json::to_value(&self.state).map_err(|e| TrainerError::Other(e.to_string()))?,
        )?;
        // Into place: a re-save of the same step swaps the old folder out first.
        let old = out.join(format!(".{name}.old-{}", std::process::id()));
        if dir.exists() {
            std::fs::rename(&dir, &old).map_err(|e| TrainerError::io(&dir, e))?;
        }
        std::fs::rename(&tmp, &dir).map_err(|e| TrainerError::io(&dir, e))?;
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| TrainerError::io(&old, e))?;
        }
        let mut control = lp.control;
        for cb in self.callbacks.iter_mut() {
            cb.on_save(&self.args, &self.state, &mut control);
        }
        lp.control = control;
        // The curves so far, so an interrupted run has them too.
        lp.reporter.finish(&self.state)?;
        self.rotate()
    }

    /// Deletes the oldest checkpoints beyond `save_total_limit`, never the best one.
    fn rotate(&self) -> Result<()> {
        let Some(limit) = self.args.save_total_limit else {
            return Ok(());
        };
        let mut ckpts = list_checkpoints(&self.args.output_dir)?;
        if let Some(best) = &self.state.best_model_checkpoint {
            let best = PathBuf::from(best);
            if let Some(pos) = ckpts.iter().position(|(_, p)| *p == best) {
                // As Python: the best moves to the end so it is kept.
                let b = ckpts.remove(pos);
                ckpts.push(b);
            }
        }
        let limit = limit.max(1);
        if ckpts.len() > limit {
            for (_, p) in &ckpts[..ckpts.len() - limit] {
                std::fs::remove_dir_all(p).map_err(|e| TrainerError::io(p, e))?;
            }
        }
        Ok(())
    }

    fn resume(&mut self, ckpt: &Path, lp: &mut Loop) -> Result<()> {
        load_weights(&lp.optimizer, ckpt)?;
        lp.optimizer
            .load_state(&ckpt.join("optimizer.safetensors"))?;
        let saved = TrainerState::load(&ckpt.join("trainer_state.json"))?;
        if saved.max_steps != self.state.max_steps {
            tracing::warn!(
                "resuming a run of {} steps as one of {}",
                saved.max_steps,
                self.state.max_steps
            );
        }
        // The schedule and the data order are rebuilt from the arguments; say so when
        // the checkpoint's differ (the run then does not continue the same way).
        let sched = read_json(&ckpt.join("scheduler.json"))?;
        let same_schedule = sched.get("kind")
            == serde_json::to_value(lp.schedule.kind).ok().as_ref()
            && sched.get("warmup").and_then(Value::as_u64) == Some(lp.schedule.warmup as u64)
            && sched.get("total").and_then(Value::as_u64) == Some(lp.schedule.total as u64)
            && sched.get("base_lr").and_then(Value::as_f64) == Some(self.args.learning_rate);
        if !same_schedule {
            tracing::warn!(
                "{}: the checkpoint's learning-rate schedule {sched} differs from these \
                 arguments'; the arguments' is used",
                ckpt.display()
            );
        }
        let rng = read_json(&ckpt.join("rng_state.json"))?;
        let saved_seed = rng.get("seed").and_then(Value::as_u64);
        if saved_seed != Some(self.args.seed) {
            let saved_seed = saved_seed.map_or("none".to_string(), |s| s.to_string());
            tracing::warn!(
                "{}: the checkpoint was trained with seed {}, these arguments have {}: the \
                 data order and dropout masks from here on differ from the interrupted run's",
                ckpt.display(),
                saved_seed,
                self.args.seed
            );
        }
        self.state.global_step = saved.global_step;
        self.state.epoch = saved.epoch;
        self.state.log_history = saved.log_history;
        self.state.best_metric = saved.best_metric;
        self.state.best_model_checkpoint = saved.best_model_checkpoint;
        Ok(())
    }

    /// Saves the model (and tokenizer, training_args.json) into `dir` (Python's
    /// `save_model`).
    pub fn save_model(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| TrainerError::io(dir, e))?;
        self.model.save(dir)?;
        if let Some(t) = self.tokenizer {
            t.save_pretrained(dir)?;
        }
        write_json(
            &dir.join("training_args.json"),
            &Value::Object(crate::args::to_json(&self.args)),
        )
    }

    /// Writes trainer_state.json into the output folder (Python's `save_state`).
    pub fn save_state(&self) -> Result<()> {
        write_json(
            &self.args.output_dir.join("trainer_state.json"),
            &serde_json::to_value(&self.state).map_err(|e| TrainerError::Other(e.to_string()))?,
        )
    }
}

/// Sets every parameter of `opt` from a checkpoint folder: its model.safetensors, or
/// for a LoRA run its PEFT adapter_model.safetensors (keys `base_model.model.{name}`).
fn load_weights(opt: &AdamW, ckpt: &Path) -> Result<()> {
    let dev = opt
        .vars()
        .first()
        .map(|v| v.device().clone())
        .unwrap_or(Device::Cpu);
    let full = ckpt.join("model.safetensors");
    let adapter = ckpt.join("adapter_model.safetensors");
    let (path, key): (PathBuf, fn(&str) -> String) = if full.is_file() {
        (full, str::to_string)
    } else if adapter.is_file() {
        (adapter, rustformers_core::lora::peft_key)
    } else {
        return Err(TrainerError::Other(format!(
            "{}: no model.safetensors or adapter_model.safetensors",
            ckpt.display()
        )));
    };
    let saved = candle_core::safetensors::load(&path, &dev)
        .map_err(|e| TrainerError::Other(format!("{}: {e}", path.display())))?;
    for ((name, _), var) in opt.groups().iter().zip(opt.vars()) {
        let t = saved.get(&key(name)).ok_or_else(|| {
            TrainerError::Other(format!("{}: no weight `{}`", path.display(), key(name)))
        })?;
        if t.shape() != var.shape() {
            return Err(TrainerError::Other(format!(
                "{}: `{name}` has shape {:?}, the model {:?}",
                path.display(),
                t.dims(),
                var.dims()
            )));
        }
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// What a save leaves while it runs: `.checkpoint-N.tmp-PID` (the new checkpoint being
/// written) or `.checkpoint-N.old-PID` (the previous copy of a step saved again, until
/// the new one is in place). `Some((N, is_old))` for such a name.
pub fn unfinished_save(name: &str) -> Option<(usize, bool)> {
    let (step, tail) = name.strip_prefix(".checkpoint-")?.split_once('.')?;
    let step = step.parse().ok()?;
    if tail.starts_with("tmp-") {
        Some((step, false))
    } else if tail.starts_with("old-") {
        Some((step, true))
    } else {
        None
    }
}

/// Clears what a killed process left of its saves: a temporary folder is deleted; the
/// previous copy of a re-saved step goes back to `checkpoint-N` when the process died
/// between the two renames (no `checkpoint-N`), else it is deleted. Finished
/// checkpoints are never touched.
fn remove_unfinished_saves(dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let (Some((step, old)), true) = (unfinished_save(&name), e.path().is_dir()) else {
            continue;
        };
        let p = e.path();
        let whole = dir.join(format!("checkpoint-{step}"));
        if old && !whole.exists() {
            tracing::warn!("restoring {} from {}", whole.display(), p.display());
            std::fs::rename(&p, &whole).map_err(|e| TrainerError::io(&whole, e))?;
        } else {
            tracing::warn!("removing the unfinished save {}", p.display());
            std::fs::remove_dir_all(&p).map_err(|e| TrainerError::io(&p, e))?;
        }
    }
    Ok(())
}

/// `checkpoint-N` folders of `dir`, oldest step first.
pub fn list_checkpoints(dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(_) => return Ok(out),
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(n) = name
            .strip_prefix("checkpoint-")
            .and_then(|s| s.parse().ok())
        {
            out.push((n, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The newest checkpoint of `dir` (Python's `get_last_checkpoint`).
pub fn last_checkpoint(dir: &Path) -> Result<Option<PathBuf>> {
    Ok(list_checkpoints(dir)?.pop().map(|(_, p)| p))
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainerError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainerError::Other(format!("{}: {e}", path.display())))
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| TrainerError::Other(e.to_string()))?;
    Ok(rustformers_core::error::write_atomic(
        path,
        text.as_bytes(),
    )?)
}

fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

fn progress_bar(total: u64, at: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_position(at);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Tokenizes text-classification examples (truncated to `max_length`, else the
/// tokenizer's maximum) with their class indices.
pub fn text_classification_features(
    tokenizer: &AutoTokenizer,
    examples: &[crate::data::TextExample],
    labels: &[u32],
    max_length: Option<usize>,
) -> Result<Vec<Features>> {
    use rustformers_core::tokenizer::{EncodeOptions, TextInput, Truncation};
    let opts = EncodeOptions {
        truncation: if max_length.is_some() || tokenizer.model_max_length().is_some() {
            Truncation::LongestFirst
        } else {
            Truncation::None
        },
        max_length,
        ..Default::default()
    };
    let mut out = Vec::with_capacity(examples.len());
    for (e, label) in examples.iter().zip(labels) {
        let input = match &e.text_pair {
            Some(p) => TextInput::Pair(&e.text, p),
            None => TextInput::Single(&e.text),
        };
        let enc = tokenizer.encode(input, &opts)?;
        let (Some(ids), Some(types)) = (enc.input_ids.first(), enc.token_type_ids.first()) else {
            continue;
        };
        out.push(Features {
            input_ids: ids.clone(),
            token_type_ids: types.clone(),
            labels: vec![*label],
        });
    }
    Ok(out)
}

/// Counts per label (for notes and tests).
pub fn label_counts(f: &[Features]) -> BTreeMap<u32, usize> {
    let mut m = BTreeMap::new();
    for l in f.iter().flat_map(|e| e.labels.iter()) {
        *m.entry(*l).or_insert(0) += 1;
    }
    m
}

/// Tokenizes token-classification examples (words given, `is_split_into_words`) and
/// aligns the tags as `run_ner.py` does: the first sub-token of each word takes the
/// word's tag, other sub-tokens and special tokens [`IGNORE`].
pub fn token_classification_features(
    tokenizer: &AutoTokenizer,
    examples: &[crate::data::TokenExample],
    tags: &[Vec<u32>],
    max_length: Option<usize>,
) -> Result<Vec<Features>> {
    use rustformers_core::tokenizer::{EncodeOptions, TextInput, Truncation};
    let opts = EncodeOptions {
        truncation: if max_length.is_some() || tokenizer.model_max_length().is_some() {
            Truncation::LongestFirst
        } else {
            Truncation::None
        },
        max_length,
        ..Default::default()
    };
    let mut out = Vec::with_capacity(examples.len());
    for (e, t) in examples.iter().zip(tags) {
        let enc = tokenizer.encode(TextInput::Words(&e.tokens), &opts)?;
        let (Some(ids), Some(types), Some(words)) = (
            enc.input_ids.first(),
            enc.token_type_ids.first(),
            enc.word_ids.first(),
        ) else {
            continue;
        };
        let mut previous = None;
        let labels = words
            .iter()
            .map(|w| {
                let label = match w {
                    Some(w) if previous != Some(*w) => {
                        t.get(*w as usize).copied().unwrap_or(IGNORE)
                    }
                    _ => IGNORE,
                };
                previous = *w;
                label
            })
            .collect();
        out.push(Features {
            input_ids: ids.clone(),
            token_type_ids: types.clone(),
            labels,
        });
    }
    Ok(out)
}

/// Language-modelling examples as `run_clm.py` / `run_mlm.py` make them: every text
/// tokenized (with special tokens), concatenated, and cut into blocks of `block_size`
/// (the last partial block dropped, unless it is the only one).
pub fn language_modeling_features(
    tokenizer: &AutoTokenizer,
    texts: &[String],
    block_size: usize,
) -> Result<Vec<Features>> {
    use rustformers_core::tokenizer::{EncodeOptions, TextInput};
    if block_size == 0 {
        return Err(TrainerError::Args("block_size must be at least 1".into()));
    }
    let mut all = Vec::new();
    for t in texts {
        let enc = tokenizer.encode(TextInput::Single(t), &EncodeOptions::default())?;
        if let Some(ids) = enc.input_ids.first() {
            all.extend_from_slice(ids);
        }
    }
    let mut blocks: Vec<&[u32]> = all.chunks(block_size).collect();
    if blocks.len() > 1 && blocks.last().is_some_and(|b| b.len() < block_size) {
        blocks.pop();
    }
    Ok(blocks
        .into_iter()
        .map(|b| Features {
            input_ids: b.to_vec(),
            token_type_ids: vec![0; b.len()],
            labels: Vec::new(),
        })
        .collect())
}
