//! The engine's error type.

use std::time::Duration;

/// Errors from submitting to or controlling the engine.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// The bounded submission queue is full; retry after about this long.
    #[error("the request queue is full ({queued} waiting); retry in about {retry_after:?}")]
    QueueFull { queued: usize, retry_after: Duration },
    /// The prompt tokens queued would exceed the bound; retry after about this long.
    #[error("the queued prompt tokens would exceed {limit} ({queued} queued); retry in about {retry_after:?}")]
    QueuedTokensFull { queued: usize, limit: usize, retry_after: Duration },
    /// The predicted time to first token exceeds the request's deadline; the queue ahead will
    /// have drained enough in about `retry_after`.
    #[error("the predicted time to first token ({predicted:?}) exceeds the deadline ({deadline:?}); retry in about {retry_after:?}")]
    WouldMissDeadline { predicted: Duration, deadline: Duration, retry_after: Duration, excess_tokens: usize },
    /// The scheduler refused the request or a setting.
    #[error(transparent)]
    Scheduler(#[from] tandem_core::Error),
    /// The engine is shutting down or its thread has stopped.
    #[error("the engine is not running")]
    NotRunning,
    /// The executor failed the step this request was in.
    #[error("the executor failed: {0}")]
    Executor(#[from] tandem_executor::ExecError),
    /// An engine thread could not be started.
    #[error("cannot start the {name} thread: {reason}")]
    Thread { name: &'static str, reason: String },
    /// A caller-side wait for the next event ran out.
    #[error("no event within the timeout")]
    Timeout,
    /// A model context cannot be created or loaded (unknown, not admitted, out of memory).
    #[error(transparent)]
    Context(#[from] tandem_core::contexts::ContextError),
    /// Loading a model failed.
    #[error("cannot load model `{model}`: {reason}")]
    Load { model: String, reason: String },
    /// A structured-output grammar (JSON schema, regex, choice, Lark) cannot be used.
    #[error("invalid grammar: {0}")]
    Grammar(String),
}

impl EngineError {
    /// A stable short name, for metric labels and HTTP error codes.
    pub fn kind(&self) -> &'static str {
        match self {
            EngineError::QueueFull { .. } | EngineError::QueuedTokensFull { .. } => "queue_full",
            EngineError::WouldMissDeadline { .. } => "deadline_unmeetable",
            EngineError::Scheduler(e) => e.kind(),
            EngineError::NotRunning => "not_running",
            EngineError::Executor(_) => "executor_error",
            EngineError::Thread { .. } => "engine_start_failed",
            EngineError::Timeout => "timeout",
            EngineError::Context(tandem_core::contexts::ContextError::Unknown(_)) => "model_not_found",
            EngineError::Context(_) => "model_unavailable",
            EngineError::Load { .. } => "model_load_failed",
            EngineError::Grammar(_) => "invalid_grammar",
        }
    }
}
