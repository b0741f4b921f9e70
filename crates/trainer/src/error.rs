//! The trainer's errors: one line each, saying what was wrong.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TrainerError {
    /// Invalid `TrainingArguments` (a bad value, an unknown name, a combination Python
    /// refuses too).
    #[error("training arguments: {0}")]
    Args(String),
    /// A bad training or evaluation file: names the file and line.
    #[error("{path}:{line}: {message}")]
    Data {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Core(#[from] rustformers_core::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, TrainerError>;

impl TrainerError {
    pub(crate) fn io(path: &std::path::Path, e: std::io::Error) -> Self {
        Self::Io(format!("{}: {e}", path.display()))
    }
}
