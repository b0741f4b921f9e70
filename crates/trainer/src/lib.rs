//! rustformers' Trainer: Python `transformers`' `TrainingArguments`, `Trainer`, AdamW and
//! learning-rate schedules, for fine-tuning checkpoints in Rust with results Python loads
//! back.

pub mod args;
pub mod data;
pub mod error;
pub mod loss;
pub mod optim;
pub mod schedule;

pub use args::{IntervalStrategy, SchedulerType, TrainingArguments};
pub use error::{Result, TrainerError};
pub use optim::{clip_grad_norm, AdamW};
pub use schedule::Schedule;
