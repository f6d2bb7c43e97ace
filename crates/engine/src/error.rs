//! The engine's error type.

use std::time::Duration;

/// Errors from submitting to or controlling the engine.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// The bounded submission queue is full; retry after about this long.
    #[error("the request queue is full ({queued} waiting); retry in about {retry_after:?}")]
    QueueFull { queued: usize, retry_after: Duration },
    /// The scheduler refused the request or a setting.
    #[error(transparent)]
    Scheduler(#[from] tandem_core::Error),
    /// The engine is shutting down or its thread has stopped.
    #[error("the engine is not running")]
    NotRunning,
    /// The executor failed the step this request was in.
    #[error("the executor failed: {0}")]
    Executor(String),
    /// A caller-side wait for the next event ran out.
    #[error("no event within the timeout")]
    Timeout,
}

impl EngineError {
    /// A stable short name, for metric labels and HTTP error codes.
    pub fn kind(&self) -> &'static str {
        match self {
            EngineError::QueueFull { .. } => "queue_full",
            EngineError::Scheduler(e) => e.kind(),
            EngineError::NotRunning => "not_running",
            EngineError::Executor(_) => "executor_error",
            EngineError::Timeout => "timeout",
        }
    }
}
