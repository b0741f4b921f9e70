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

    /// 503: the server cannot take work now (it is shutting down).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            kind: "server_error",
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
    /// `{"include_usage": true}`: a last chunk with the usage counts (streams only).
    pub stream_options: Option<Value>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    pub n: Option<i64>,
    pub presence_penalty: Option<f64>,
    /// Extension (as vLLM's): keep generating past the eos token, up to max_tokens.
    #[serde(default)]
    pub ignore_eos: bool,
    pub frequency_penalty: Option<f64>,
    /// Chat: a boolean; text completions: how many alternatives (0 to 5).
    #[serde(default)]
    pub logprobs: Option<Value>,
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
    /// The completion's length limit; none given: the rest of the model's context after
    /// the prompt (as vLLM).
    pub max_tokens: Option<usize>,
    pub presence_penalty: f64,
    pub frequency_penalty: f64,
    pub temperature: f64,
    pub top_p: f64,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub n: usize,
    /// Log-probabilities asked for: the chosen token's and this many alternatives.
    pub logprobs: Option<usize>,
    /// Streams: end with a chunk holding the usage counts.
    pub include_usage: bool,
    /// Generate past eos (benchmarks: a fixed amount of work per request).
    pub ignore_eos: bool,
}

/// Which endpoint the settings are for (they read `logprobs` differently).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

/// Most alternatives per token: chat's `top_logprobs`, completions' `logprobs`.
pub const MAX_TOP_LOGPROBS_CHAT: i64 = 20;
pub const MAX_TOP_LOGPROBS_COMPLETIONS: i64 = 5;

/// Most completions one request may ask for.
pub const MAX_N: i64 = 16;

/// Most inputs one embeddings request may hold (OpenAI's limit).
pub const MAX_EMBEDDING_INPUTS: usize = 2048;

impl Sampling {
    /// The settings, or the first invalid one as an error naming its parameter.
    pub fn settings(&self, endpoint: Endpoint) -> Result<GenSettings, ApiError> {
        // OpenAI: max_completion_tokens supersedes the older max_tokens.
        let max = self.max_completion_tokens.or(self.max_tokens);
        let max_tokens = match max {
            None => None,
            Some(m) if m >= 1 => Some(m as usize),
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
        let logprobs = self.logprobs(endpoint)?;
        let include_usage = match self.stream_options.as_ref().filter(|v| !v.is_null()) {
            None => false,
            Some(_) if !self.stream => {
                return Err(ApiError::invalid(
                    "stream_options is only allowed when stream is true",
                    Some("stream_options"),
                ))
            }
            Some(Value::Object(o)) => match o.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(ApiError::invalid(
                        "stream_options.include_usage must be a boolean",
                        Some("stream_options"),
                    ))
                }
            },
            Some(_) => {
                return Err(ApiError::invalid(
                    "stream_options must be an object",
                    Some("stream_options"),
                ))
            }
        };
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
            logprobs,
            include_usage,
            ignore_eos: self.ignore_eos,
        })
    }

    fn logprobs(&self, endpoint: Endpoint) -> Result<Option<usize>, ApiError> {
        let lp = self.logprobs.as_ref().filter(|v| !v.is_null());
        match endpoint {
            Endpoint::Chat => {
                let on = match lp {
                    None => false,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => {
                        return Err(ApiError::invalid(
                            "logprobs must be a boolean",
                            Some("logprobs"),
                        ))
                    }
                };
                match self.top_logprobs {
                    Some(t) if !(0..=MAX_TOP_LOGPROBS_CHAT).contains(&t) => Err(ApiError::invalid(
                        format!(
                            "top_logprobs must be between 0 and {MAX_TOP_LOGPROBS_CHAT}, got {t}"
                        ),
                        Some("top_logprobs"),
                    )),
                    Some(_) if !on => Err(ApiError::invalid(
                        "top_logprobs needs logprobs set to true",
                        Some("top_logprobs"),
                    )),
                    t => Ok(on.then_some(t.unwrap_or(0) as usize)),
                }
            }
            Endpoint::Completions => {
                if self.top_logprobs.is_some() {
                    return Err(ApiError::invalid(
                        "text completions take the number of alternatives in `logprobs`",
                        Some("top_logprobs"),
                    ));
                }
                match lp {
                    None => Ok(None),
                    Some(v) => match v.as_i64() {
                        Some(n) if (0..=MAX_TOP_LOGPROBS_COMPLETIONS).contains(&n) => {
                            Ok(Some(n as usize))
                        }
                        _ => Err(ApiError::invalid(
                            format!(
                                "logprobs must be an integer between 0 and {MAX_TOP_LOGPROBS_COMPLETIONS}, got {v}"
                            ),
                            Some("logprobs"),
                        )),
                    },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_check_ranges() {
        let s: Sampling =
            serde_json::from_value(json!({"max_tokens": 5, "temperature": 0})).unwrap();
        let g = s.settings(Endpoint::Chat).unwrap();
        assert_eq!((g.max_tokens, g.temperature, g.n), (Some(5), 0.0, 1));
        // max_completion_tokens wins over max_tokens; neither: no fixed limit.
        let s: Sampling =
            serde_json::from_value(json!({"max_tokens": 9, "max_completion_tokens": 3})).unwrap();
        assert_eq!(s.settings(Endpoint::Chat).unwrap().max_tokens, Some(3));
        let s: Sampling = serde_json::from_value(json!({})).unwrap();
        assert_eq!(s.settings(Endpoint::Chat).unwrap().max_tokens, None);
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
            let e = s.settings(Endpoint::Chat).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param));
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
        }
        let lp = |body: Value, e: Endpoint| {
            serde_json::from_value::<Sampling>(body)
                .unwrap()
                .settings(e)
                .map(|g| g.logprobs)
        };
        use Endpoint::{Chat, Completions};
        assert_eq!(lp(json!({}), Chat).unwrap(), None);
        assert_eq!(lp(json!({"logprobs": true}), Chat).unwrap(), Some(0));
        assert_eq!(
            lp(json!({"logprobs": true, "top_logprobs": 3}), Chat).unwrap(),
            Some(3)
        );
        assert_eq!(lp(json!({"logprobs": false}), Chat).unwrap(), None);
        assert_eq!(lp(json!({"logprobs": 2}), Completions).unwrap(), Some(2));
        assert_eq!(lp(json!({"logprobs": null}), Completions).unwrap(), None);
        for (body, e, param) in [
            (json!({"top_logprobs": 2}), Chat, "top_logprobs"),
            (
                json!({"logprobs": true, "top_logprobs": 21}),
                Chat,
                "top_logprobs",
            ),
            (json!({"logprobs": 1}), Chat, "logprobs"),
            (json!({"logprobs": 6}), Completions, "logprobs"),
            (json!({"logprobs": true}), Completions, "logprobs"),
            (
                json!({"logprobs": 1, "top_logprobs": 1}),
                Completions,
                "top_logprobs",
            ),
        ] {
            let err = lp(body.clone(), e).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(param), "{body}");
        }
        let s: Sampling = serde_json::from_value(json!({"stop": "x"})).unwrap();
        assert_eq!(s.settings(Endpoint::Chat).unwrap().stop, ["x"]);
    }
}
