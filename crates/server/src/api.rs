//! The OpenAI API shapes the server reads and writes (chat completions, completions,
//! embeddings, models, errors), with OpenAI's field names and defaults.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

/// An error answered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some("model".into()),
        }
    }

    pub fn busy(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: message.into(),
            kind: "rate_limit_error",
            param: None,
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
        }
    }

    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": null}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn list(&self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s.clone()],
            Stop::Many(v) => v.clone(),
        }
    }
}

/// The sampling fields chat and text completions share.
#[derive(Debug, Clone, Deserialize)]
pub struct Sampling {
    pub model: Option<String>,
    #[serde(default)]
    pub stream: bool,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    pub n: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
}

/// POST /v1/chat/completions.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub messages: Option<Vec<Value>>,
    #[serde(default)]
    pub tools: Option<Value>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// POST /v1/completions.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub prompt: Option<Value>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// POST /v1/embeddings.
#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddingRequest {
    pub model: Option<String>,
    pub input: Option<Value>,
    pub encoding_format: Option<String>,
}

/// Checked generation settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GenSettings {
    pub max_tokens: usize,
    pub presence_penalty: f64,
    pub frequency_penalty: f64,
    pub temperature: f64,
    pub top_p: f64,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub n: usize,
}

/// Default completion length when the request sets none.
pub const DEFAULT_MAX_TOKENS: usize = 256;
/// Most completions one request may ask for.
pub const MAX_N: i64 = 16;

impl Sampling {
    /// The settings, or the first invalid one as an error naming its parameter.
    pub fn settings(&self) -> Result<GenSettings, ApiError> {
        let max = self.max_completion_tokens.or(self.max_tokens);
        let max_tokens = match max {
            None => DEFAULT_MAX_TOKENS,
            Some(m) if m >= 1 => m as usize,
            Some(m) => {
                return Err(ApiError::invalid(
                    format!("max_tokens must be at least 1, got {m}"),
                    Some("max_tokens"),
                ))
            }
        };
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid(
                format!("temperature must lie in [0, 2], got {temperature}"),
                Some("temperature"),
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid(
                format!("top_p must lie in (0, 1], got {top_p}"),
                Some("top_p"),
            ));
        }
        let n = self.n.unwrap_or(1);
        if !(1..=MAX_N).contains(&n) {
            return Err(ApiError::invalid(
                format!("n must lie in 1..={MAX_N}, got {n}"),
                Some("n"),
            ));
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if let Some(v) = v {
                if !(-2.0..=2.0).contains(&v) {
                    return Err(ApiError::invalid(
                        format!("{name} must lie in [-2, 2], got {v}"),
                        Some(name),
                    ));
                }
            }
        }
        if self.logprobs == Some(true) || self.top_logprobs.is_some() {
            return Err(ApiError::invalid(
                "logprobs are not supported yet",
                Some("logprobs"),
            ));
        }
        let stop = self.stop.as_ref().map(Stop::list).unwrap_or_default();
        if stop.len() > 4 || stop.iter().any(String::is_empty) {
            return Err(ApiError::invalid(
                "stop takes up to 4 non-empty strings",
                Some("stop"),
            ));
        }
        Ok(GenSettings {
            max_tokens,
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            temperature,
            top_p,
            seed: self.seed,
            stop,
            n: n as usize,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_check_ranges() {
        let s: Sampling =
            serde_json::from_value(json!({"max_tokens": 5, "temperature": 0})).unwrap();
        let g = s.settings().unwrap();
        assert_eq!((g.max_tokens, g.temperature, g.n), (5, 0.0, 1));
        for (body, param) in [
            (json!({"max_tokens": 0}), "max_tokens"),
            (json!({"max_completion_tokens": -3}), "max_tokens"),
            (json!({"temperature": 3}), "temperature"),
            (json!({"top_p": 0}), "top_p"),
            (json!({"n": 0}), "n"),
            (json!({"presence_penalty": 5}), "presence_penalty"),
            (json!({"stop": ["a", "b", "c", "d", "e"]}), "stop"),
        ] {
            let s: Sampling = serde_json::from_value(body).unwrap();
            let e = s.settings().unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param));
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
        }
        let s: Sampling = serde_json::from_value(json!({"stop": "x"})).unwrap();
        assert_eq!(s.settings().unwrap().stop, ["x"]);
    }
}
