//! Running one choice of a request: submit to the engine, turn tokens into text deltas
//! (streaming detokenizer + stop strings), report the finish reason. Shared by the streaming and
//! non-streaming endpoints. Dropping a [`Choice`] drops its engine handle, which aborts the
//! request and frees its KV blocks — that is how a client disconnect is handled.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

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
    prompt_tokens: usize,
    started: Instant,
    first_token: Option<Instant>,
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
            prompt_tokens: req.prompt.len(),
            started: Instant::now(),
            first_token: None,
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
                    self.first_token.get_or_insert_with(Instant::now);
                    let piece = match self.decoder.push(&state.tokenizer, t) {
                        Ok(p) => p,
                        Err(e) => return Some(Err(self.fail(e.to_string()))),
                    };
                    let (text, stopped) = self.stops.push(&piece);
                    if stopped {
                        self.done = true;
                        let reason = FinishReason::Stopped(StopCause::StopString);
                        state.engine.finish_request(self.handle.id(), reason);
                        self.log_end(finish_reason(reason));
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
                    self.log_end(finish_reason(reason));
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

    /// One structured log line per finished request, with its timings.
    fn log_end(&self, finish: &str) {
        let ms = |d: Duration| (d.as_secs_f64() * 1e3 * 10.0).round() / 10.0;
        tracing::info!(
            request = self.handle.id().0,
            prompt_tokens = self.prompt_tokens,
            completion_tokens = self.tokens,
            ttft_ms = self.first_token.map(|t| ms(t - self.started)),
            e2e_ms = ms(self.started.elapsed()),
            finish,
            "request finished"
        );
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

impl Drop for Choice {
    fn drop(&mut self) {
        if !self.done {
            // The response was dropped before the end: the client went away. Dropping the
            // handle (next) aborts the request in the engine.
            tracing::info!(
                request = self.handle.id().0,
                completion_tokens = self.tokens,
                "client disconnected; request aborted"
            );
        }
    }
}
