//! Running one choice of a request: submit to the engine, turn tokens into text deltas
//! (streaming detokenizer + stop strings), report the finish reason. Shared by the streaming and
//! non-streaming endpoints. Dropping a [`Choice`] drops its engine handle, which aborts the
//! request and frees its KV blocks — that is how a client disconnect is handled.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tandem_core::{FinishReason, NewRequest, StopCause};
use tandem_engine::{RequestEvent, RequestHandle, StopMatcher};
use tandem_executor::text::IncrementalDecoder;

use crate::error::ApiError;
use crate::openai::GenRequest;
use crate::state::AppState;

/// OpenAI's `finish_reason` for an engine finish.
pub fn finish_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stopped(_) => "stop",
        FinishReason::Length => "length",
        FinishReason::Aborted(_) | FinishReason::Rejected(_) => "abort",
    }
}

/// One running choice.
pub struct Choice {
    pub index: usize,
    handle: RequestHandle,
    decoder: IncrementalDecoder,
    stops: StopMatcher,
    pub tokens: usize,
    done: bool,
}

/// A piece of a choice's output.
#[derive(Debug, Clone, PartialEq)]
pub struct Delta {
    pub text: String,
    pub finish: Option<&'static str>,
}

impl Choice {
    /// Submits choice `index` of `req` (seeded choices get seeds `seed + index`).
    pub fn start(state: &AppState, req: &GenRequest, index: usize) -> Result<Self, ApiError> {
        let id = state.next_id.fetch_add(1, Ordering::Relaxed);
        let mut r = NewRequest::new(id, req.prompt.clone(), req.max_tokens, Duration::ZERO);
        r.params.sampler = req.sampler;
        r.params.sampler.seed = req.sampler.seed.map(|s| s.wrapping_add(index as u64));
        r.params.ignore_eos = req.ignore_eos;
        r.priority = req.priority;
        let handle = state.engine.submit(r)?;
        Ok(Self {
            index,
            handle,
            decoder: IncrementalDecoder::new(),
            stops: StopMatcher::new(req.stop.clone()),
            tokens: 0,
            done: false,
        })
    }

    /// The next delta, `None` after the finish.
    pub async fn next(&mut self, state: &AppState) -> Option<Result<Delta, ApiError>> {
        if self.done {
            return None;
        }
        loop {
            match self.handle.next().await {
                Some(RequestEvent::Token(t)) => {
                    self.tokens += 1;
                    let piece = match self.decoder.push(&state.tokenizer, t) {
                        Ok(p) => p,
                        Err(e) => return Some(Err(self.fail(e.to_string()))),
                    };
                    let (text, stopped) = self.stops.push(&piece);
                    if stopped {
                        self.done = true;
                        let reason = FinishReason::Stopped(StopCause::StopString);
                        state.engine.finish_request(self.handle.id(), reason);
                        return Some(Ok(Delta { text, finish: Some(finish_reason(reason)) }));
                    }
                    if !text.is_empty() {
                        return Some(Ok(Delta { text, finish: None }));
                    }
                }
                Some(RequestEvent::Finished(reason)) => {
                    self.done = true;
                    let tail = self.decoder.flush(&state.tokenizer).unwrap_or_default();
                    let (mut text, _) = self.stops.push(&tail);
                    text.push_str(&self.stops.flush());
                    return Some(Ok(Delta { text, finish: Some(finish_reason(reason)) }));
                }
                Some(RequestEvent::Failed(e)) => {
                    self.done = true;
                    return Some(Err(e.into()));
                }
                None => return Some(Err(self.fail("the engine stopped".into()))),
            }
        }
    }

    fn fail(&mut self, why: String) -> ApiError {
        self.done = true;
        ApiError::Internal(why)
    }

    /// Runs to the end: the whole text and the finish reason.
    pub async fn collect(mut self, state: &AppState) -> Result<(usize, String, &'static str, usize), ApiError> {
        let mut text = String::new();
        while let Some(d) = self.next(state).await {
            let d = d?;
            text.push_str(&d.text);
            if let Some(f) = d.finish {
                return Ok((self.index, text, f, self.tokens));
            }
        }
        Err(ApiError::Internal("the stream ended without a finish".into()))
    }
}
