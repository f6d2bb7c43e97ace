//! Running one choice of a request: submit to the engine, turn tokens into text deltas
//! (streaming detokenizer + stop strings), report the finish reason. Shared by the streaming and
//! non-streaming endpoints. Dropping a [`Choice`] drops its engine handle, which aborts the
//! request and frees its KV blocks — that is how a client disconnect is handled.
//!
//! When the model's context is evicted mid-request (a BestEffort context making room for a
//! higher tier), the engine stops under the choice; the choice re-acquires the model, which
//! reloads it, and resubmits its prompt plus the tokens generated so far with the tokens left —
//! the request is requeued, and its text continues where it stopped.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_core::{FinishReason, NewRequest, StopCause, TokenId};
use tandem_engine::{ModelLease, RequestEvent, RequestHandle, TokenText};

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
    model: Arc<ModelLease>,
    req: GenRequest,
    /// Tokens generated so far (resubmitted after an eviction).
    generated: Vec<TokenId>,
    requeues: usize,
    handle: RequestHandle,
    prompt_tokens: usize,
    started: Instant,
    first_token: Option<Instant>,
    text: TokenText,
    /// Log-probabilities of tokens not yet reported in a delta.
    logprobs: Vec<TokenLogprob>,
    pub tokens: usize,
    done: bool,
}

/// A piece of a choice's output.
#[derive(Debug, Clone, PartialEq)]
pub struct Delta {
    pub text: String,
    pub finish: Option<&'static str>,
    /// The log-probabilities of the tokens behind `text`, when the request asked for them.
    pub logprobs: Vec<TokenLogprob>,
}

/// A whole choice.
pub struct Collected {
    pub index: usize,
    pub text: String,
    pub finish: &'static str,
    pub tokens: usize,
    pub logprobs: Vec<TokenLogprob>,
}

/// One token's log-probability report, with the token as text.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    /// The most likely alternatives, most likely first.
    pub top: Vec<(String, f32)>,
}

impl Choice {
    /// Submits choice `index` of the response for `req` (prompt `index / n`, its choice
    /// `index % n`; seeded choices get seeds `seed + index % n`, so every prompt of a batch
    /// samples as if sent alone).
    pub fn start(state: &AppState, model: &Arc<ModelLease>, req: &GenRequest, index: usize) -> Result<Self, ApiError> {
        let handle = Self::submit(state, model, req, index, &[])?;
        Ok(Self {
            index,
            model: Arc::clone(model),
            req: req.clone(),
            generated: Vec::new(),
            requeues: 0,
            handle,
            prompt_tokens: req.prompt.len(),
            started: Instant::now(),
            first_token: None,
            text: TokenText::new(req.stop.clone()),
            logprobs: Vec::new(),
            tokens: 0,
            done: false,
        })
    }

    /// Submits the request, continuing after `generated` tokens.
    fn submit(
        state: &AppState,
        model: &ModelLease,
        req: &GenRequest,
        index: usize,
        generated: &[TokenId],
    ) -> Result<RequestHandle, ApiError> {
        let id = state.next_id.fetch_add(1, Ordering::Relaxed);
        let mut prompt = req.prompt.clone();
        prompt.extend_from_slice(generated);
        let mut r = NewRequest::new(id, prompt, req.max_tokens - generated.len(), Duration::ZERO);
        r.params.sampler = req.sampler;
        r.params.sampler.seed = req.sampler.seed.map(|s| s.wrapping_add((index % req.n.max(1)) as u64));
        // A continuation samples on from where the evicted request stopped.
        r.params.sampler.stream_offset = generated.len();
        r.params.ignore_eos = req.ignore_eos;
        r.priority = req.priority;
        Ok(model.engine.submit(r)?)
    }

    /// After the model was evicted under this choice: reacquire it (reloading it) and resubmit
    /// what is left.
    async fn requeue(&mut self, state: &AppState) -> Result<(), ApiError> {
        self.requeues += 1;
        state.models.note_requeue();
        let lease = Arc::new(state.models.acquire(Some(&self.model.name)).await?);
        tracing::info!(request = self.handle.id().0, model = %lease.name, generated = self.generated.len(), "requeued after eviction");
        self.handle = Self::submit(state, &lease, &self.req, self.index, &self.generated)?;
        self.model = lease;
        Ok(())
    }

    /// The next delta, `None` after the finish.
    pub async fn next(&mut self, state: &AppState) -> Option<Result<Delta, ApiError>> {
        if self.done {
            return None;
        }
        loop {
            let event = self.handle.next().await;
            let stopped_under_us = matches!(event, None | Some(RequestEvent::Finished(FinishReason::Aborted(_))));
            if stopped_under_us && self.model.was_evicted() && self.requeues < 8 {
                if let Err(e) = self.requeue(state).await {
                    self.done = true;
                    return Some(Err(e));
                }
                continue;
            }
            match event {
                Some(RequestEvent::Logprobs(lp)) => {
                    let tok = &self.model.tokenizer;
                    self.logprobs.push(TokenLogprob {
                        token: tok.token_text(lp.token),
                        logprob: lp.logprob,
                        top: lp.top.iter().map(|&(id, l)| (tok.token_text(id), l)).collect(),
                    });
                }
                Some(RequestEvent::Token(t)) => {
                    self.tokens += 1;
                    self.generated.push(t);
                    self.first_token.get_or_insert_with(Instant::now);
                    let (text, stopped) = match self.text.push(&self.model.tokenizer, t) {
                        Ok(p) => p,
                        Err(e) => return Some(Err(self.fail(e.to_string()))),
                    };
                    if stopped {
                        self.done = true;
                        let reason = FinishReason::Stopped(StopCause::StopString);
                        self.model.engine.finish_request(self.handle.id(), reason);
                        self.log_end(finish_reason(reason));
                        return Some(Ok(self.delta(text, Some(finish_reason(reason)))));
                    }
                    if !text.is_empty() {
                        return Some(Ok(self.delta(text, None)));
                    }
                }
                Some(RequestEvent::Finished(reason)) => {
                    self.done = true;
                    let text = self.text.finish(&self.model.tokenizer);
                    self.log_end(finish_reason(reason));
                    return Some(Ok(self.delta(text, Some(finish_reason(reason)))));
                }
                Some(RequestEvent::Failed(e)) => {
                    self.done = true;
                    return Some(Err(e.into()));
                }
                None => return Some(Err(self.fail("the engine stopped".into()))),
            }
        }
    }

    fn delta(&mut self, text: String, finish: Option<&'static str>) -> Delta {
        Delta { text, finish, logprobs: std::mem::take(&mut self.logprobs) }
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
    pub async fn collect(mut self, state: &AppState) -> Result<Collected, ApiError> {
        let (mut text, mut logprobs) = (String::new(), Vec::new());
        while let Some(d) = self.next(state).await {
            let d = d?;
            text.push_str(&d.text);
            logprobs.extend(d.logprobs);
            if let Some(finish) = d.finish {
                return Ok(Collected { index: self.index, text, finish, tokens: self.tokens, logprobs });
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
