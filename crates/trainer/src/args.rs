//! `TrainingArguments`: the subset of Python's `transformers.TrainingArguments`
//! (transformers 4.46, `training_args.py`) that rustformers' Trainer runs, with Python's
//! names and defaults, loadable from a JSON file (as `HfArgumentParser.parse_json_file`)
//! and from `--name value` flags, and checked for the combinations Python refuses.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Result, TrainerError};

/// When to evaluate or save (Python's `IntervalStrategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IntervalStrategy {
    No,
    Steps,
    Epoch,
}

/// Python's `SchedulerType` (the ones rustformers implements).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerType {
    Linear,
    Cosine,
    CosineWithRestarts,
    Polynomial,
    Constant,
    ConstantWithWarmup,
}

/// Training hyper-parameters, named and defaulted as in Python.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingArguments {
    pub output_dir: PathBuf,
    /// Train into an `output_dir` that already holds files (the CLI refuses one
    /// otherwise, as Python's example scripts do).
    pub overwrite_output_dir: bool,
    pub num_train_epochs: f64,
    /// Total optimizer steps; overrides `num_train_epochs` when positive.
    pub max_steps: i64,
    pub per_device_train_batch_size: usize,
    pub per_device_eval_batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    pub max_grad_norm: f64,
    pub lr_scheduler_type: SchedulerType,
    pub warmup_steps: usize,
    pub warmup_ratio: f64,
    /// Steps between logs; below 1, a ratio of the total steps (as Python).
    pub logging_steps: f64,
    pub eval_strategy: IntervalStrategy,
    /// Steps between evaluations; `None` takes `logging_steps` (as Python).
    pub eval_steps: Option<f64>,
    pub save_strategy: IntervalStrategy,
    pub save_steps: f64,
    pub save_total_limit: Option<usize>,
    pub load_best_model_at_end: bool,
    pub metric_for_best_model: Option<String>,
    pub greater_is_better: Option<bool>,
    pub seed: u64,
    pub bf16: bool,
    pub gradient_checkpointing: bool,
    /// Integrations to log to: `tensorboard`, or `none`.
    pub report_to: Vec<String>,
}

impl Default for TrainingArguments {
    fn default() -> Self {
        Self {
            output_dir: PathBuf::from("trainer_output"),
            overwrite_output_dir: false,
            num_train_epochs: 3.0,
            max_steps: -1,
            per_device_train_batch_size: 8,
            per_device_eval_batch_size: 8,
            gradient_accumulation_steps: 1,
            learning_rate: 5e-5,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            max_grad_norm: 1.0,
            lr_scheduler_type: SchedulerType::Linear,
            warmup_steps: 0,
            warmup_ratio: 0.0,
            logging_steps: 500.0,
            eval_strategy: IntervalStrategy::No,
            eval_steps: None,
            save_strategy: IntervalStrategy::Steps,
            save_steps: 500.0,
            save_total_limit: None,
            load_best_model_at_end: false,
            metric_for_best_model: None,
            greater_is_better: None,
            seed: 42,
            bf16: false,
            gradient_checkpointing: false,
            report_to: vec!["none".into()],
        }
    }
}

impl TrainingArguments {
    /// Arguments from a JSON object (unknown keys are errors); missing keys keep
    /// Python's defaults. `report_to` may be a string or a list; `evaluation_strategy`
    /// is read as `eval_strategy` (Python's older name).
    pub fn from_json_value(v: Value, source: &str) -> Result<Self> {
        let Value::Object(mut map) = v else {
            return Err(TrainerError::Args(format!(
                "{source}: expected a JSON object"
            )));
        };
        if let Some(old) = map.remove("evaluation_strategy") {
            map.entry("eval_strategy").or_insert(old);
        }
        if let Some(Value::String(s)) = map.get("report_to").cloned() {
            map.insert("report_to".into(), Value::Array(vec![Value::String(s)]));
        }
        let args: Self = serde_json::from_value(Value::Object(map))
            .map_err(|e| TrainerError::Args(format!("{source}: {e}")))?;
        args.validated()
    }

    /// Arguments from a JSON file.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TrainerError::Args(format!("{}: {e}", path.display())))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| TrainerError::Args(format!("{}: {e}", path.display())))?;
        Self::from_json_value(v, &path.display().to_string())
    }

    /// `self` with `--name value` pairs applied (names as in Python, `-` or `_`
    /// separators; booleans take `true`/`false`, or no value). Unknown names are errors.
    pub fn with_flags(&self, flags: &[(String, Option<String>)]) -> Result<Self> {
        let Value::Object(mut map) =
            serde_json::to_value(self).map_err(|e| TrainerError::Args(e.to_string()))?
        else {
            return Err(TrainerError::Args("arguments are not an object".into()));
        };
        for (name, value) in flags {
            let key = name.trim_start_matches('-').replace('-', "_");
            let key = if key == "evaluation_strategy" {
                "eval_strategy".to_string()
            } else {
                key
            };
            let Some(current) = map.get(&key) else {
                return Err(TrainerError::Args(format!(
                    "unknown training argument --{key}; known: {}",
                    map.keys().cloned().collect::<Vec<_>>().join(", ")
                )));
            };
            map.insert(key.clone(), parse_flag(&key, current, value.as_deref())?);
        }
        Self::from_json_value(Value::Object(map), "flags")
    }

    /// Python's `__post_init__` checks and derived defaults.
    pub fn validated(mut self) -> Result<Self> {
        let bad = |m: String| Err(TrainerError::Args(m));
        if self.per_device_train_batch_size == 0 || self.per_device_eval_batch_size == 0 {
            return bad("batch sizes must be at least 1".into());
        }
        if self.gradient_accumulation_steps == 0 {
            return bad("gradient_accumulation_steps must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return bad(format!(
                "warmup_ratio must lie in [0, 1], got {}",
                self.warmup_ratio
            ));
        }
        if self.learning_rate < 0.0 || !self.learning_rate.is_finite() {
            return bad(format!(
                "learning_rate must be >= 0, got {}",
                self.learning_rate
            ));
        }
        if self.max_steps <= 0 && self.num_train_epochs <= 0.0 {
            return bad("set num_train_epochs > 0 or max_steps > 0".into());
        }
        if self.logging_steps <= 0.0 {
            return bad(format!(
                "logging_steps must be > 0, got {}",
                self.logging_steps
            ));
        }
        if self.eval_strategy == IntervalStrategy::Steps {
            let steps = self.eval_steps.unwrap_or(self.logging_steps);
            if steps <= 0.0 {
                return bad("eval_strategy steps needs eval_steps > 0".into());
            }
            self.eval_steps = Some(steps);
        }
        if self.save_strategy == IntervalStrategy::Steps && self.save_steps <= 0.0 {
            return bad(format!("save_steps must be > 0, got {}", self.save_steps));
        }
        if self.load_best_model_at_end {
            if self.eval_strategy != self.save_strategy {
                return bad(format!(
                    "load_best_model_at_end requires the save and eval strategy to match, \
                     got eval_strategy {:?} and save_strategy {:?}",
                    self.eval_strategy, self.save_strategy
                ));
            }
            if self.eval_strategy == IntervalStrategy::No {
                return bad("load_best_model_at_end needs an eval_strategy".into());
            }
            if self.eval_strategy == IntervalStrategy::Steps {
                let (e, s) = (
                    self.eval_steps.unwrap_or(self.logging_steps),
                    self.save_steps,
                );
                if e >= 1.0 && s >= 1.0 && !(s as u64).is_multiple_of((e as u64).max(1)) {
                    return bad(format!(
                        "load_best_model_at_end requires save_steps ({s}) to be a multiple of \
                         eval_steps ({e})"
                    ));
                }
            }
            if self.metric_for_best_model.is_none() {
                self.metric_for_best_model = Some("loss".into());
            }
        }
        if let Some(metric) = &self.metric_for_best_model {
            if self.greater_is_better.is_none() {
                self.greater_is_better = Some(!(metric == "loss" || metric == "eval_loss"));
            }
        }
        for r in &self.report_to {
            if !matches!(r.as_str(), "none" | "tensorboard" | "all") {
                return bad(format!(
                    "report_to `{r}` is not supported here (tensorboard, all, none)"
                ));
            }
        }
        Ok(self)
    }

    /// Whether TensorBoard event files are written.
    pub fn tensorboard(&self) -> bool {
        self.report_to
            .iter()
            .any(|r| r == "tensorboard" || r == "all")
    }

    /// Warm-up steps for `total` optimizer steps (Python's `get_warmup_steps`).
    pub fn warmup_for(&self, total: usize) -> usize {
        if self.warmup_steps > 0 {
            self.warmup_steps
        } else {
            (total as f64 * self.warmup_ratio).ceil() as usize
        }
    }

    /// An interval given as steps or (below 1) a ratio of `total`, in steps.
    pub fn steps_of(interval: f64, total: usize) -> usize {
        if interval < 1.0 {
            ((interval * total as f64).ceil() as usize).max(1)
        } else {
            interval as usize
        }
    }
}

/// A flag's value in the type of the field it sets.
fn parse_flag(key: &str, current: &Value, value: Option<&str>) -> Result<Value> {
    let err = |what: &str| TrainerError::Args(format!("--{key}: {what}"));
    // The optional booleans (null until set) parse as booleans.
    let boolean = current.is_boolean() || key == "greater_is_better";
    match (current, value) {
        (_, None) if boolean => Ok(Value::Bool(true)),
        (_, None) => Err(err("needs a value")),
        (_, Some(v)) if boolean => match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(Value::Bool(true)),
            "false" | "0" | "no" => Ok(Value::Bool(false)),
            "none" | "null" if current.is_null() => Ok(Value::Null),
            _ => Err(err(&format!("`{v}` is not true or false"))),
        },
        (Value::Array(_), Some(v)) => Ok(Value::Array(
            v.split([',', ' '])
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_string()))
                .collect(),
        )),
        (Value::String(_), Some(v)) => Ok(Value::String(v.to_string())),
        (_, Some(v)) => {
            // Numbers (and optional numbers, currently null): parse as JSON.
            if v == "None" || v == "null" {
                return Ok(Value::Null);
            }
            match serde_json::from_str::<Value>(v) {
                Ok(n @ Value::Number(_)) => Ok(n),
                _ if current.is_null() => Ok(Value::String(v.to_string())),
                _ => Err(err(&format!("`{v}` is not a number"))),
            }
        }
    }
}

/// Splits `--name value` / `--name=value` / `--flag` arguments into pairs.
pub fn split_flags(args: &[String]) -> Result<Vec<(String, Option<String>)>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        let Some(name) = a.strip_prefix("--") else {
            return Err(TrainerError::Args(format!("expected --name, got `{a}`")));
        };
        if let Some((n, v)) = name.split_once('=') {
            out.push((n.to_string(), Some(v.to_string())));
            i += 1;
        } else if i + 1 < args.len() && !args[i + 1].starts_with("--") {
            out.push((name.to_string(), Some(args[i + 1].clone())));
            i += 2;
        } else {
            out.push((name.to_string(), None));
            i += 1;
        }
    }
    Ok(out)
}

/// The arguments as JSON (as Python's `to_json_string`), for training_args.json.
pub fn to_json(args: &TrainingArguments) -> Map<String, Value> {
    match serde_json::to_value(args) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_pythons() {
        let a = TrainingArguments::from_json_value(serde_json::json!({"output_dir": "o"}), "t")
            .unwrap();
        assert_eq!(a.learning_rate, 5e-5);
        assert_eq!(a.num_train_epochs, 3.0);
        assert_eq!(a.per_device_train_batch_size, 8);
        assert_eq!(a.adam_beta2, 0.999);
        assert_eq!(a.adam_epsilon, 1e-8);
        assert_eq!(a.max_grad_norm, 1.0);
        assert_eq!(a.lr_scheduler_type, SchedulerType::Linear);
        assert_eq!(a.logging_steps, 500.0);
        assert_eq!(a.save_steps, 500.0);
        assert_eq!(a.seed, 42);
        assert_eq!(a.eval_strategy, IntervalStrategy::No);
        assert_eq!(a.save_strategy, IntervalStrategy::Steps);
        // The rest of the fields, as `TrainingArguments("o")` of transformers 4.46 has them.
        assert!(!a.overwrite_output_dir);
        assert_eq!(a.max_steps, -1);
        assert_eq!(a.per_device_eval_batch_size, 8);
        assert_eq!(a.gradient_accumulation_steps, 1);
        assert_eq!(a.weight_decay, 0.0);
        assert_eq!(a.adam_beta1, 0.9);
        assert_eq!(a.warmup_steps, 0);
        assert_eq!(a.warmup_ratio, 0.0);
        assert_eq!(a.eval_steps, None);
        assert_eq!(a.save_total_limit, None);
        assert!(!a.load_best_model_at_end);
        assert_eq!(a.metric_for_best_model, None);
        assert_eq!(a.greater_is_better, None);
        assert!(!a.bf16);
        assert!(!a.gradient_checkpointing);
        // 4.46 turns `report_to=None` into "all" with a warning that the default becomes
        // "none"; rustformers takes that later default.
        assert_eq!(a.report_to, ["none"]);
    }

    #[test]
    fn json_and_flags() {
        let a = TrainingArguments::from_json_value(
            serde_json::json!({"output_dir": "o", "learning_rate": 1e-3,
                "evaluation_strategy": "epoch", "report_to": "tensorboard",
                "lr_scheduler_type": "cosine_with_restarts"}),
            "t",
        )
        .unwrap();
        assert_eq!(a.eval_strategy, IntervalStrategy::Epoch);
        assert!(a.tensorboard());
        assert_eq!(a.lr_scheduler_type, SchedulerType::CosineWithRestarts);
        let flags = split_flags(&[
            "--num-train-epochs".into(),
            "2".into(),
            "--bf16".into(),
            "--warmup_ratio=0.1".into(),
            "--eval_steps".into(),
            "5".into(),
        ])
        .unwrap();
        let b = a.with_flags(&flags[..1]).unwrap();
        assert_eq!(b.num_train_epochs, 2.0);
        let b = a.with_flags(&flags).unwrap();
        assert!(b.bf16);
        assert_eq!(b.warmup_ratio, 0.1);
        assert_eq!(b.eval_steps, Some(5.0));
        // The optional fields: a boolean, a number, a string.
        let flags = split_flags(&[
            "--metric_for_best_model".into(),
            "accuracy".into(),
            "--greater_is_better".into(),
            "false".into(),
            "--save_total_limit".into(),
            "2".into(),
        ])
        .unwrap();
        let c = a.with_flags(&flags).unwrap();
        assert_eq!(c.metric_for_best_model.as_deref(), Some("accuracy"));
        assert_eq!(c.greater_is_better, Some(false));
        assert_eq!(c.save_total_limit, Some(2));
        let d = a
            .with_flags(&[("--greater-is-better".into(), None)])
            .unwrap();
        assert_eq!(d.greater_is_better, Some(true));
        let e = a
            .with_flags(&[("--greater-is-better".into(), Some("maybe".into()))])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not true or false"), "{e}");
    }

    #[test]
    fn bad_combinations_are_errors() {
        let cases = [
            (serde_json::json!({"learning_rat": 1.0}), "unknown field"),
            (
                serde_json::json!({"lr_scheduler_type": "wavy"}),
                "unknown variant",
            ),
            (serde_json::json!({"warmup_ratio": 2.0}), "warmup_ratio"),
            (
                serde_json::json!({"load_best_model_at_end": true, "eval_strategy": "epoch"}),
                "strategy to match",
            ),
            (
                serde_json::json!({"load_best_model_at_end": true, "eval_strategy": "steps",
                    "eval_steps": 3, "save_steps": 10}),
                "multiple of",
            ),
            (
                serde_json::json!({"gradient_accumulation_steps": 0}),
                "at least 1",
            ),
            (serde_json::json!({"report_to": "wandb"}), "report_to"),
            (serde_json::json!([1]), "JSON object"),
        ];
        for (v, want) in cases {
            let e = TrainingArguments::from_json_value(v, "t")
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e} lacks {want}");
        }
        let d = TrainingArguments::default();
        let e = d
            .with_flags(&[("--nope".into(), Some("1".into()))])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown training argument --nope"), "{e}");
        let e = d
            .with_flags(&[("--learning_rate".into(), Some("fast".into()))])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a number"), "{e}");
    }

    #[test]
    fn best_metric_defaults() {
        let a = TrainingArguments::from_json_value(
            serde_json::json!({"load_best_model_at_end": true, "eval_strategy": "steps",
                "eval_steps": 5, "save_steps": 10}),
            "t",
        )
        .unwrap();
        assert_eq!(a.metric_for_best_model.as_deref(), Some("loss"));
        assert_eq!(a.greater_is_better, Some(false));
        assert_eq!(a.warmup_for(100), 0);
        let b = TrainingArguments {
            warmup_ratio: 0.05,
            ..a
        };
        assert_eq!(b.warmup_for(101), 6);
    }
}
