//! What a caller submits ([`NewRequest`]), what it gets back ([`RequestDelta`]) and how a
//! request ends ([`FinishReason`]).
//!
//! Field names follow vLLM's `SamplingParams` and the OpenAI API where they overlap, so that the
//! server crate's parsing is a direct mapping.

use crate::types::{RequestId, Time, TokenId};

/// The part of sampling the executor needs; copied into every scheduled sequence.
///
/// `temperature == 0.0` means greedy. `top_k == 0` and `top_p >= 1.0` disable those filters.
/// With a `seed`, the executor must derive the random stream from `(seed, position)` so that a
/// preempted and recomputed request samples the same text (tandem's executors do).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerParams {
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub seed: Option<u64>,
    /// Where this request's first generated token sits in its seeded stream: 0, or, for a
    /// continuation that resubmits earlier output as prompt (a request requeued after its
    /// model was evicted), the number of tokens generated before it — so the text goes on as
    /// if nothing had happened.
    pub stream_offset: usize,
    /// Report each sampled token's log-probability and this many most likely alternatives
    /// ([`crate::TokenLogprobs`]); `None`: no log-probabilities.
    pub logprobs: Option<u8>,
    /// vLLM's repetition penalty over prompt and generated tokens (1 = off).
    pub repetition_penalty: f32,
    /// OpenAI's presence and frequency penalties over generated tokens (0 = off).
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// vLLM's min-p: tokens less likely than `min_p` × the most likely one are not sampled
    /// (0 = off).
    pub min_p: f32,
}

impl SamplerParams {
    /// Whether sampling needs the request's earlier tokens (a penalty is on).
    pub fn has_penalties(&self) -> bool {
        self.repetition_penalty != 1.0 || self.presence_penalty != 0.0 || self.frequency_penalty != 0.0
    }
}

impl Default for SamplerParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: None,
            stream_offset: 0,
            logprobs: None,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            min_p: 0.0,
        }
    }
}

/// Per-request generation limits and sampling settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Most tokens to generate; must be at least 1.
    pub max_tokens: usize,
    /// Generation stops (reason [`StopCause::StopToken`]) when one of these is sampled.
    pub stop_token_ids: Vec<TokenId>,
    /// When true the model's EOS tokens do not stop generation (benchmarks use this).
    pub ignore_eos: bool,
    /// Fewer tokens than this are never ended by EOS or a stop token: the scheduler bans them
    /// from sampling until then ([`crate::ScheduledSeq::banned`]), as vLLM's `min_tokens`.
    pub min_tokens: usize,
    /// Carried untouched to the executor.
    pub sampler: SamplerParams,
    /// OpenAI's `logit_bias`: added to these tokens' logits before every sample (−100 bans,
    /// +100 all but forces).
    pub logit_bias: Vec<(TokenId, f32)>,
    /// Structured output: the driver fills a token mask for every sample
    /// ([`crate::ScheduledSeq::allowed`]) from the request's tokens so far, so the request is
    /// never scheduled with a placeholder (async scheduling) whose token it would not know.
    pub structured: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            max_tokens: 16,
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            min_tokens: 0,
            sampler: SamplerParams::default(),
            structured: false,
            logit_bias: Vec::new(),
        }
    }
}

/// A request as submitted to [`crate::Scheduler::add_request`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewRequest {
    pub id: RequestId,
    /// Prompt token ids; must not be empty.
    pub prompt: Vec<TokenId>,
    pub params: SamplingParams,
    /// Larger is more urgent. Only the `Priority` queue policy looks at it.
    pub priority: i32,
    /// When the request arrived (the driver's clock).
    pub arrival: Time,
    /// If set, a request not finished by then ends with [`AbortCause::Deadline`] (or, if it never
    /// started, [`RejectReason::DeadlineExceeded`]).
    pub deadline: Option<Time>,
    /// vLLM's `cache_salt`: the request shares prefix-cache blocks only with requests of the
    /// same salt (`None`: with every unsalted request).
    pub cache_salt: Option<String>,
}

impl NewRequest {
    /// A request with default sampling, priority 0 and no deadline.
    pub fn new(id: u64, prompt: Vec<TokenId>, max_tokens: usize, arrival: Time) -> Self {
        Self {
            id: RequestId(id),
            prompt,
            params: SamplingParams { max_tokens, ..SamplingParams::default() },
            priority: 0,
            arrival,
            deadline: None,
            cache_salt: None,
        }
    }
}

/// Why a request stopped normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    /// One of the model's EOS tokens was sampled.
    Eos(TokenId),
    /// One of the request's `stop_token_ids` was sampled.
    StopToken(TokenId),
    /// The engine matched a stop string (set by the engine, never by the core).
    StopString,
}

/// Why a request was cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortCause {
    /// [`crate::Scheduler::abort`] was called (client went away, or cancelled).
    Client,
    /// The request's deadline passed while it was running.
    Deadline,
    /// The executor failed the step the request was in.
    ExecutorError,
}

/// Why a request was refused without generating anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The deadline passed before the request was first scheduled.
    DeadlineExceeded,
}

/// How a request ended. Every request that was accepted ends in exactly one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stopped(StopCause),
    /// `max_tokens` generated, or the sequence reached the model (or KV pool) length limit.
    Length,
    Aborted(AbortCause),
    Rejected(RejectReason),
}

impl FinishReason {
    /// The OpenAI `finish_reason` string this maps to — the one mapping, used by the server and
    /// the CLI. Aborted and rejected requests both end with vLLM's `abort` (OpenAI has no
    /// reason for a request the server ended).
    pub fn as_openai(&self) -> &'static str {
        match self {
            FinishReason::Stopped(_) => "stop",
            FinishReason::Length => "length",
            FinishReason::Aborted(_) | FinishReason::Rejected(_) => "abort",
        }
    }
}

/// What changed for one request in one step: at most one new token, and possibly its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestDelta {
    pub id: RequestId,
    /// The token sampled this step, if any.
    pub token: Option<TokenId>,
    /// Set on the request's last delta.
    pub finish: Option<FinishReason>,
}

/// The lifecycle of a request inside the scheduler:
/// `Waiting → Running → (Preempted → Waiting) → Finished`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestState {
    Waiting,
    Running,
    /// Preempted with its KV blocks moved to the host tier; waits to be swapped back in.
    Swapped,
    /// Preempted with its KV blocks dropped; waits to be prefilled again.
    Preempted,
    Finished(FinishReason),
}
