//! Running one choice of a request on top of the engine's [`Generation`] (text deltas, stop
//! strings, requeue after an eviction): the OpenAI view of it — `finish_reason` strings,
//! log-probabilities as token text, timings in the request log. Shared by the streaming and
//! non-streaming endpoints. Dropping a [`Choice`] drops its generation, which aborts the request
//! and frees its KV blocks — that is how a client disconnect is handled.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_core::NewRequest;
use tandem_engine::{Generation, GenerationEvent, ModelLease, Structured};

use crate::error::ApiError;
use crate::openai::GenRequest;
use crate::state::AppState;

/// One running choice.
pub struct Choice {
    pub index: usize,
    generation: Generation,
    prompt_tokens: usize,
    started: Instant,
    first_token: Option<Instant>,
    /// Log-probabilities of tokens not yet reported in a delta.
    logprobs: Vec<TokenLogprob>,
    done: bool,
    /// Counted as in flight (the drain waits for it) while it lives.
    _in_flight: crate::state::InFlight,
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
    /// Prompt tokens served from the prefix cache.
    pub cached: usize,
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
        let id = state.next_request_id();
        let mut r = NewRequest::new(id, req.prompt.clone(), req.max_tokens, Duration::ZERO);
        r.params.sampler = req.sampler;
        r.params.sampler.seed = req.sampler.seed.map(|s| s.wrapping_add((index % req.n.max(1)) as u64));
        r.params.ignore_eos = req.ignore_eos;
        r.params.min_tokens = req.min_tokens;
        r.params.stop_token_ids = req.stop_token_ids.clone();
        r.params.logit_bias = req.logit_bias.clone();
        r.cache_salt = req.cache_salt.clone();
        r.priority = req.priority;
        Ok(Self {
            index,
            generation: {
                let structured = match &req.grammar {
                    Some(spec) => Some(Structured { grammars: model.grammars()?, spec: spec.clone() }),
                    None => None,
                };
                let deadline = req.ttft_deadline.or(state.ttft_deadline);
                Generation::start_admitted(Arc::clone(model), r, req.stop.clone(), structured, deadline)?
            },
            prompt_tokens: req.prompt.len(),
            started: Instant::now(),
            first_token: None,
            logprobs: Vec::new(),
            done: false,
            _in_flight: state.track(),
        })
    }

    /// The next delta, `None` after the finish.
    pub async fn next(&mut self) -> Option<Result<Delta, ApiError>> {
        if self.done {
            return None;
        }
        loop {
            let Some(event) = self.generation.next().await else {
                self.done = true;
                return Some(Err(ApiError::Internal("the generation ended without a finish".into())));
            };
            match event {
                GenerationEvent::Logprobs(lp) => {
                    let tok = &self.generation.model().tokenizer;
                    self.logprobs.push(TokenLogprob {
                        token: tok.token_text(lp.token),
                        logprob: lp.logprob,
                        top: lp.top.iter().map(|&(id, l)| (tok.token_text(id), l)).collect(),
                    });
                }
                GenerationEvent::Text { text, .. } => {
                    self.first_token.get_or_insert_with(Instant::now);
                    if !text.is_empty() {
                        return Some(Ok(self.delta(text, None)));
                    }
                }
                GenerationEvent::Finished { reason, text } => {
                    self.done = true;
                    if self.tokens() > 0 {
                        self.first_token.get_or_insert_with(Instant::now);
                    }
                    self.log_end(reason.as_openai());
                    return Some(Ok(self.delta(text, Some(reason.as_openai()))));
                }
                GenerationEvent::Failed(e) => {
                    self.done = true;
                    return Some(Err(e.into()));
                }
            }
        }
    }

    /// Tokens generated so far.
    pub fn tokens(&self) -> usize {
        self.generation.tokens()
    }

    /// Prompt tokens the prefix cache served for this choice's request.
    pub fn prompt_cached_tokens(&self) -> usize {
        self.generation.prompt_cached_tokens()
    }

    fn delta(&mut self, text: String, finish: Option<&'static str>) -> Delta {
        Delta { text, finish, logprobs: std::mem::take(&mut self.logprobs) }
    }

    /// One structured log line per finished request, with its timings.
    fn log_end(&self, finish: &str) {
        let ms = |d: Duration| (d.as_secs_f64() * 1e3 * 10.0).round() / 10.0;
        tracing::info!(
            request = self.generation.id().0,
            prompt_tokens = self.prompt_tokens,
            completion_tokens = self.tokens(),
            ttft_ms = self.first_token.map(|t| ms(t - self.started)),
            e2e_ms = ms(self.started.elapsed()),
            finish,
            "request finished"
        );
    }

    /// Runs to the end: the whole text and the finish reason.
    pub async fn collect(mut self) -> Result<Collected, ApiError> {
        let (mut text, mut logprobs) = (String::new(), Vec::new());
        while let Some(d) = self.next().await {
            let d = d?;
            text.push_str(&d.text);
            logprobs.extend(d.logprobs);
            if let Some(finish) = d.finish {
                let cached = self.prompt_cached_tokens();
                return Ok(Collected { index: self.index, text, finish, tokens: self.tokens(), logprobs, cached });
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
                request = self.generation.id().0,
                completion_tokens = self.tokens(),
                "client disconnected; request aborted"
            );
        }
    }
}
