//! [`ApiError`]: every failure as OpenAI-shaped JSON (`{"error": {"message", "type", "param",
//! "code"}}`) with the right HTTP status.

use std::borrow::Cow;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tandem_engine::EngineError;

/// An HTTP-level error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or a parameter is out of range (400).
    #[error("{message}")]
    Invalid { message: String, param: Option<Cow<'static, str>> },
    /// Missing or wrong API key (401).
    #[error("missing or invalid API key")]
    Unauthorized,
    /// No such model or route (404).
    #[error("{0}")]
    NotFound(String),
    /// The body is larger than the server accepts (413).
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    /// Refused at admission (429, with Retry-After): the queue is full, or the request would
    /// miss its time-to-first-token deadline; `retry_after` is the predicted wait.
    #[error("{reason}; retry after {retry_after:?}")]
    /// `excess_tokens`: for a deadline refusal, the prompt tokens queued ahead that must be
    /// fed before it would be admitted (header `x-tandem-excess-tokens`).
    Busy { reason: String, retry_after: Duration, excess_tokens: Option<usize> },
    /// The engine is not running (503).
    #[error("the engine is not available")]
    Unavailable,
    /// The model cannot be loaded now (device memory short, or its load failed) (503).
    #[error("{0}")]
    ModelUnavailable(String),
    /// The server is shutting down: requests in flight finish, new ones go elsewhere (503).
    #[error("the server is shutting down")]
    Draining,
    /// Every connection slot is taken (503, with Retry-After).
    #[error("too many connections")]
    Overloaded,
    /// The request did not arrive whole in time (408).
    #[error("the request body did not arrive within {0:?}")]
    SlowRequest(Duration),
    /// The engine or model failed (500).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(param: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        ApiError::Invalid { message: message.into(), param: Some(param.into()) }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Busy { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable | ApiError::ModelUnavailable(_) | ApiError::Draining | ApiError::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::SlowRequest(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ApiError::Invalid { .. } | ApiError::TooLarge(_) | ApiError::SlowRequest(_) => "invalid_request_error",
            ApiError::Unauthorized => "authentication_error",
            ApiError::NotFound(_) => "not_found_error",
            ApiError::Busy { .. } => "rate_limit_error",
            ApiError::Unavailable
            | ApiError::ModelUnavailable(_)
            | ApiError::Internal(_)
            | ApiError::Draining
            | ApiError::Overloaded => "server_error",
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        let param = match self {
            ApiError::Invalid { param, .. } => param.as_deref(),
            _ => None,
        };
        serde_json::json!({"error": {"message": self.to_string(), "type": self.kind(), "param": param, "code": self.status().as_u16()}})
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::QueueFull { queued, retry_after } => ApiError::Busy {
                reason: format!("the server is busy ({queued} requests queued)"),
                retry_after,
                excess_tokens: None,
            },
            EngineError::QueuedTokensFull { queued, limit, retry_after } => ApiError::Busy {
                reason: format!("the server is busy ({queued} prompt tokens queued, at most {limit})"),
                retry_after,
                excess_tokens: None,
            },
            EngineError::WouldMissDeadline { predicted, deadline, retry_after, excess_tokens } => ApiError::Busy {
                reason: format!(
                    "the predicted time to first token ({} ms) exceeds the deadline ({} ms)",
                    predicted.as_millis(),
                    deadline.as_millis()
                ),
                retry_after,
                excess_tokens: Some(excess_tokens),
            },
            EngineError::Scheduler(s) => ApiError::Invalid { message: s.to_string(), param: None },
            EngineError::NotRunning => ApiError::Unavailable,
            EngineError::Executor(e) => ApiError::Internal(e.to_string()),
            e @ EngineError::Thread { .. } => ApiError::Internal(e.to_string()),
            EngineError::Timeout => ApiError::Internal("timed out".into()),
            EngineError::Context(tandem_core::contexts::ContextError::Unknown(m)) => {
                ApiError::NotFound(format!("model `{m}` does not exist"))
            }
            e @ (EngineError::Context(_) | EngineError::Load { .. }) => ApiError::ModelUnavailable(e.to_string()),
            EngineError::Grammar(m) => {
                ApiError::Invalid { message: format!("invalid grammar: {m}"), param: Some("response_format".into()) }
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), axum::Json(self.body())).into_response();
        if let ApiError::Busy { retry_after, excess_tokens, .. } = &self {
            if let Some(v) = excess_tokens.and_then(|n| HeaderValue::from_str(&n.to_string()).ok()) {
                resp.headers_mut().insert("x-tandem-excess-tokens", v);
            }
            // Whole seconds (HTTP's Retry-After, rounded up, at least 1) and the exact figure
            // in `retry-after-ms`, which OpenAI's clients read first.
            let ms = retry_after.as_millis().max(1);
            let secs = ms.div_ceil(1000).to_string();
            if let Ok(v) = HeaderValue::from_str(&secs) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            if let Ok(v) = HeaderValue::from_str(&ms.to_string()) {
                resp.headers_mut().insert("retry-after-ms", v);
            }
        }
        resp
    }
}
