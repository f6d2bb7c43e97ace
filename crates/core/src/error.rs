//! The core's one error type. Every fallible public call returns it; nothing in the core panics
//! on caller input.

use crate::types::RequestId;

/// Errors from configuring or driving the scheduler.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A [`crate::SchedulerConfig`] field is out of range or inconsistent with another.
    #[error("invalid scheduler config: `{field}` {problem}")]
    InvalidConfig { field: &'static str, problem: String },
    /// A named configuration (`NAME:key=value,...`) did not apply.
    #[error("configuration `{name}`: {source}")]
    NamedConfig {
        name: String,
        #[source]
        source: Box<Error>,
    },
    /// The prompt had no tokens.
    #[error("request {0}: the prompt is empty")]
    EmptyPrompt(RequestId),
    /// `max_tokens` was 0.
    #[error("request {0}: max_tokens must be at least 1")]
    ZeroMaxTokens(RequestId),
    /// A live request already has this id.
    #[error("request {0}: a live request already has this id")]
    DuplicateRequest(RequestId),
    /// The prompt leaves no room to generate within the model's (or the KV pool's) length.
    #[error("request {id}: prompt of {prompt_len} tokens leaves no room within the {max_len}-token context")]
    PromptTooLong { id: RequestId, prompt_len: usize, max_len: usize },
    /// Under a reserving capacity policy, the request's prompt + max_tokens can never fit the pool.
    #[error("request {id}: needs {blocks_needed} KV blocks but the pool only has {pool_blocks}")]
    NeverFits { id: RequestId, blocks_needed: usize, pool_blocks: usize },
    /// No live request has this id.
    #[error("request {0}: no live request has this id")]
    UnknownRequest(RequestId),
    /// `update` was given an output that is not the oldest one in flight.
    #[error("update for step {got}, but the oldest step in flight is {expected:?}")]
    StepOutOfOrder { expected: Option<u64>, got: u64 },
    /// The model output does not line up with the scheduler output it answers.
    #[error("model output has {got} entries for {expected} scheduled sequences, or samples where none was asked")]
    OutputMismatch { expected: usize, got: usize },
}

impl Error {
    /// A stable short name, for metric labels and HTTP error codes.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidConfig { .. } | Error::NamedConfig { .. } => "invalid_config",
            Error::EmptyPrompt(_) => "empty_prompt",
            Error::ZeroMaxTokens(_) => "zero_max_tokens",
            Error::DuplicateRequest(_) => "duplicate_request",
            Error::PromptTooLong { .. } => "prompt_too_long",
            Error::NeverFits { .. } => "never_fits",
            Error::UnknownRequest(_) => "unknown_request",
            Error::StepOutOfOrder { .. } => "step_out_of_order",
            Error::OutputMismatch { .. } => "output_mismatch",
        }
    }
}

/// A broken internal invariant, found by `check_invariants` (tests and debug tooling only).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("scheduler invariant violated: {0}")]
pub struct InvariantViolation(pub String);
