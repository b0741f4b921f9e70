//! The error type shared by every rustformers library crate.

use std::path::PathBuf;

/// Everything that can go wrong while resolving, loading or running a model.
///
/// Each variant renders as one line saying what was wrong and, where it helps,
/// what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model reference that is neither a local path nor a resolvable Hub id.
    #[error("cannot find model `{reference}`: {detail}")]
    ModelNotFound { reference: String, detail: String },

    /// A file the model needs is not among its files.
    #[error("model `{reference}` has no `{file}`{hint}")]
    MissingFile {
        reference: String,
        file: String,
        hint: String,
    },

    /// Downloading a file from the Hub failed.
    #[error("downloading `{file}` of `{repo}` failed: {message}")]
    Download {
        repo: String,
        file: String,
        message: String,
    },

    /// A configuration file that cannot be parsed or holds invalid values.
    #[error("invalid config {path}: {message}")]
    Config { path: String, message: String },

    /// A malformed or incomplete weights file.
    #[error("invalid weights {path}: {message}")]
    Weights { path: String, message: String },

    /// Weights the model needs but the checkpoint lacks.
    #[error("checkpoint {path} lacks {count} weight(s) the model needs: {keys}")]
    MissingWeights {
        path: String,
        count: usize,
        keys: String,
    },

    /// A tokenizer file that cannot be loaded, or a tokenization failure.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// A `model_type` or architecture with no implementation for the asked task.
    #[error("{0}")]
    Unsupported(String),

    /// Bad input from the caller: an option value, an empty input, a shape.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A tensor operation failed.
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),

    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// JSON that cannot be parsed or written.
    #[error("{context}: {source}")]
    Json {
        context: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Result alias used across rustformers.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// An [`Error::InvalidInput`] with `message`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidInput(message.into())
    }
}

/// Reads a file into a string, mapping the failure to [`Error::Io`].
pub fn read_to_string(path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// Reads and parses a JSON file.
pub fn read_json(path: &std::path::Path) -> Result<serde_json::Value> {
    let text = read_to_string(path)?;
    serde_json::from_str(&text).map_err(|e| Error::Json {
        context: format!("malformed JSON in {}", path.display()),
        source: e,
    })
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, then a rename,
/// so a crash never leaves a half-written file where a whole one was.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_string());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}
