//! rustformers' Trainer: Python `transformers`' `TrainingArguments`, `Trainer`, AdamW and
//! learning-rate schedules, for fine-tuning checkpoints in Rust with results Python loads
//! back.

pub mod args;
pub mod callbacks;
pub mod data;
pub mod error;
pub mod loss;
pub mod optim;
pub mod report;
pub mod schedule;
pub mod trainer;

pub use args::{IntervalStrategy, SchedulerType, TrainingArguments};
pub use callbacks::{EarlyStoppingCallback, TrainerCallback, TrainerControl, TrainerState};
pub use error::{Result, TrainerError};
pub use optim::{clip_grad_norm, grad_norm_coef, AdamW};
pub use schedule::Schedule;
pub use trainer::{
    accuracy, text_classification_features, EvalPrediction, Features, PredictionOutput, TrainModel,
    TrainOutput, Trainer,
};
