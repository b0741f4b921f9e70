//! Python's `TrainerCallback`, `TrainerControl`, `TrainerState` and
//! `EarlyStoppingCallback` (transformers 4.46, `trainer_callback.py`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::args::{IntervalStrategy, TrainingArguments};
use crate::error::{Result, TrainerError};

/// What the Trainer knows about the run; written as trainer_state.json with Python's keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    pub epoch: f64,
    pub global_step: usize,
    pub max_steps: usize,
    pub logging_steps: usize,
    pub eval_steps: usize,
    pub save_steps: usize,
    pub train_batch_size: usize,
    pub num_train_epochs: usize,
    pub num_input_tokens_seen: usize,
    pub total_flos: f64,
    pub log_history: Vec<Map<String, Value>>,
    pub best_metric: Option<f64>,
    pub best_model_checkpoint: Option<String>,
    pub is_local_process_zero: bool,
    pub is_world_process_zero: bool,
    pub is_hyper_param_search: bool,
    pub trial_name: Option<String>,
    pub trial_params: Option<Value>,
    pub stateful_callbacks: Map<String, Value>,
}

impl TrainerState {
    /// Reads a checkpoint's trainer_state.json.
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainerError::io(path, e))?;
        serde_json::from_str(&text)
            .map_err(|e| TrainerError::Other(format!("{}: {e}", path.display())))
    }
}

/// What the callbacks ask the loop to do next (Python's `TrainerControl`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrainerControl {
    pub should_training_stop: bool,
    pub should_epoch_stop: bool,
    pub should_save: bool,
    pub should_evaluate: bool,
    pub should_log: bool,
}

/// Hooks called by the training loop, as Python's `TrainerCallback` (every hook has a
/// default that does nothing). `control` may be changed to stop, save or evaluate.
#[allow(unused_variables)]
pub trait TrainerCallback: Send {
    /// Refuses arguments the callback cannot work with; run by `train` before anything
    /// is written (Python's callbacks assert in `on_train_begin`).
    fn check_args(&self, args: &TrainingArguments) -> Result<()> {
        Ok(())
    }
    /// At the end of `Trainer::new` for callbacks given to it, else when added.
    fn on_init_end(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        control: &mut TrainerControl,
    ) {
    }
    fn on_train_begin(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        control: &mut TrainerControl,
    ) {
    }
    fn on_train_end(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        control: &mut TrainerControl,
    ) {
    }
    fn on_epoch_begin(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        control: &mut TrainerControl,
    ) {
    }
    fn on_epoch_end(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        control: &mut TrainerControl,
    ) {
    }
    fn on_step_begin(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        control: &mut TrainerControl,
    ) {
    }
    /// After a micro-batch's backward pass that does not end an accumulation.
    fn on_substep_end(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        control: &mut TrainerControl,
    ) {
    }
    /// After gradient clipping, before the optimizer step.
    fn on_pre_optimizer_step(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        control: &mut TrainerControl,
    ) {
    }
    /// After the optimizer step, before the step is counted.
    fn on_optimizer_step(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        control: &mut TrainerControl,
    ) {
    }
    fn on_step_end(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        control: &mut TrainerControl,
    ) {
    }
    /// After each evaluation or prediction batch.
    fn on_prediction_step(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        control: &mut TrainerControl,
    ) {
    }
    /// After `Trainer::predict`, with its `test_` metrics.
    fn on_predict(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        control: &mut TrainerControl,
        metrics: &Map<String, Value>,
    ) {
    }
    fn on_evaluate(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        control: &mut TrainerControl,
        metrics: &Map<String, Value>,
    ) {
    }
    fn on_save(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        control: &mut TrainerControl,
    ) {
    }
    fn on_log(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        control: &mut TrainerControl,
        logs: &Map<String, Value>,
    ) {
    }
}

/// Stops training when the best-model metric has not improved (by more than
/// `threshold`) for `patience` evaluations. Needs `metric_for_best_model` and an
/// `eval_strategy`, as in Python.
#[derive(Debug, Clone)]
pub struct EarlyStoppingCallback {
    pub patience: usize,
    pub threshold: f64,
    counter: usize,
}

impl EarlyStoppingCallback {
    pub fn new(patience: usize, threshold: f64) -> Self {
        Self {
            patience,
            threshold,
            counter: 0,
        }
    }

    /// Python's assertions, as an error before training starts.
    pub fn check(args: &TrainingArguments) -> Result<()> {
        if args.metric_for_best_model.is_none() || args.eval_strategy == IntervalStrategy::No {
            return Err(TrainerError::Args(
                "EarlyStoppingCallback needs metric_for_best_model and an eval_strategy".into(),
            ));
        }
        Ok(())
    }

    /// Evaluations without improvement so far.
    pub fn counter(&self) -> usize {
        self.counter
    }
}

/// The metric named by `metric_for_best_model` in evaluation metrics (`eval_` prefixed
/// when the name lacks it).
pub fn best_metric_value(args: &TrainingArguments, metrics: &Map<String, Value>) -> Option<f64> {
    let name = args.metric_for_best_model.as_deref()?;
    let key = if name.starts_with("eval_") {
        name.to_string()
    } else {
        format!("eval_{name}")
    };
    metrics.get(&key).and_then(Value::as_f64)
}

impl TrainerCallback for EarlyStoppingCallback {
    fn check_args(&self, args: &TrainingArguments) -> Result<()> {
        Self::check(args)
    }

    fn on_evaluate(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        control: &mut TrainerControl,
        metrics: &Map<String, Value>,
    ) {
        let Some(value) = best_metric_value(args, metrics) else {
            tracing::warn!("early stopping: metric_for_best_model not in the evaluation metrics");
            return;
        };
        let greater = args.greater_is_better.unwrap_or(false);
        let improved = match state.best_metric {
            None => true,
            Some(best) => {
                (if greater { value > best } else { value < best })
                    && (value - best).abs() > self.threshold
            }
        };
        if improved {
            self.counter = 0;
        } else {
            self.counter += 1;
        }
        if self.counter >= self.patience {
            control.should_training_stop = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_stopping_counts_evaluations_without_improvement() {
        let args = TrainingArguments::from_json_value(
            serde_json::json!({"eval_strategy": "steps", "eval_steps": 1, "save_steps": 1,
                "load_best_model_at_end": true, "metric_for_best_model": "accuracy"}),
            "t",
        )
        .unwrap();
        EarlyStoppingCallback::check(&args).unwrap();
        assert!(EarlyStoppingCallback::check(&TrainingArguments::default()).is_err());
        let mut cb = EarlyStoppingCallback::new(2, 0.0);
        let mut state = TrainerState::default();
        let mut control = TrainerControl::default();
        for (acc, stop) in [(0.5, false), (0.6, false), (0.6, false), (0.55, true)] {
            let metrics: Map<String, Value> =
                serde_json::from_value(serde_json::json!({ "eval_accuracy": acc })).unwrap();
            cb.on_evaluate(&args, &state, &mut control, &metrics);
            assert_eq!(control.should_training_stop, stop, "{acc}");
            // The Trainer records the best after each evaluation.
            if state.best_metric.is_none_or(|b| acc > b) {
                state.best_metric = Some(acc);
            }
        }
    }
}
