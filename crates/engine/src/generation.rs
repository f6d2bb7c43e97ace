//! [`Generation`]: the one consumer of a request's engine events that callers use — the
//! server's choices, `tandem generate`, and any in-process user of a [`ModelRegistry`]. It turns
//! tokens into text deltas ([`TokenText`]: streaming detokenizer + stop strings, a stop string
//! finishing the request with `Stopped(StopString)`), passes log-probabilities on, and **requeues
//! after an eviction**: when the model's context is evicted mid-request (a BestEffort context
//! making room for a higher tier), the engine stops under the generation; it re-acquires the
//! model from the registry, which reloads it, and resubmits the prompt plus the tokens generated
//! so far with the tokens left — the text continues where it stopped, and a seeded sampler
//! samples on from its stream position. Dropping a `Generation` drops its engine handle, which
//! aborts the request and frees its KV blocks.
//!
//! [`ModelRegistry`]: crate::ModelRegistry

use std::sync::Arc;

use tandem_core::{FinishReason, NewRequest, RequestId, StopCause, TokenId, TokenLogprobs};

use crate::error::EngineError;
use crate::grammar::{GrammarSpec, Grammars};
use crate::handle::{RequestEvent, RequestHandle};
use crate::registry::ModelLease;
use crate::text::TokenText;

/// Most times one request is resubmitted after evictions before it fails.
const MAX_REQUEUES: usize = 8;

/// What a [`Generation`] yields.
#[derive(Debug, Clone, PartialEq)]
pub enum GenerationEvent {
    /// New text from `token` (may be empty while a character is incomplete or a stop string
    /// may be starting).
    Text { text: String, token: TokenId },
    /// The log-probabilities of the next token.
    Logprobs(TokenLogprobs),
    /// The end, with the reason (a stop string gives `Stopped(StopString)`) and the last text:
    /// what was held back, or what came before the stop string. Always last.
    Finished { reason: FinishReason, text: String },
    /// The request could not run or the engine failed it; always last.
    Failed(EngineError),
}

/// Structured output for a [`Generation`]: the grammar and the compiler it is compiled with
/// (kept, so a requeue after an eviction starts a fresh constraint and replays the tokens
/// generated so far through it).
#[derive(Debug, Clone)]
pub struct Structured {
    pub grammars: Arc<Grammars>,
    pub spec: GrammarSpec,
}

impl Structured {
    /// A fresh constraint advanced over `generated`.
    fn constraint(&self, generated: &[TokenId]) -> Result<crate::grammar::Constraint, EngineError> {
        let mut c = self.grammars.compile(&self.spec).map_err(|e| EngineError::Grammar(e.to_string()))?;
        for &t in generated {
            c.consume(t);
        }
        Ok(c)
    }
}

/// One request on a model, as text.
pub struct Generation {
    structured: Option<Structured>,
    model: Arc<ModelLease>,
    /// The request as first submitted (prompt, `max_tokens` in `params`).
    request: NewRequest,
    generated: Vec<TokenId>,
    requeues: usize,
    handle: RequestHandle,
    text: TokenText,
    done: bool,
    /// The first submission's prefix-cache hit, kept across a requeue (whose resubmitted
    /// prompt includes generated text).
    first_cached: Option<usize>,
}

/// What one engine event means for the generation.
enum Step {
    Emit(GenerationEvent),
    Requeue,
}

impl Generation {
    /// Submits `request` to `model`'s engine; `stop` strings end it.
    pub fn start(model: Arc<ModelLease>, request: NewRequest, stop: Vec<String>) -> Result<Self, EngineError> {
        Self::start_structured(model, request, stop, None)
    }

    /// [`Self::start`], the output constrained by `structured` (a grammar that cannot compile is
    /// [`EngineError::Grammar`]).
    pub fn start_structured(
        model: Arc<ModelLease>,
        request: NewRequest,
        stop: Vec<String>,
        structured: Option<Structured>,
    ) -> Result<Self, EngineError> {
        Self::start_admitted(model, request, stop, structured, None)
    }

    /// [`Self::start_structured`], refused at once (`EngineError::WouldMissDeadline`) when the
    /// predicted time to first token exceeds `ttft_deadline` (see `Engine::submit_with`). A
    /// requeue after an eviction is not checked again: the request was admitted.
    pub fn start_admitted(
        model: Arc<ModelLease>,
        request: NewRequest,
        stop: Vec<String>,
        structured: Option<Structured>,
        ttft_deadline: Option<std::time::Duration>,
    ) -> Result<Self, EngineError> {
        let constraint = structured.as_ref().map(|s| s.constraint(&[])).transpose()?;
        let handle = model.engine.submit_with(request.clone(), constraint, ttft_deadline)?;
        Ok(Self {
            structured,
            model,
            request,
            generated: Vec::new(),
            requeues: 0,
            handle,
            text: TokenText::new(stop),
            done: false,
            first_cached: None,
        })
    }

    pub fn id(&self) -> RequestId {
        self.handle.id()
    }

    /// The model instance serving the request now (a requeue moves it to the reloaded one).
    pub fn model(&self) -> &Arc<ModelLease> {
        &self.model
    }

    /// Tokens generated so far, across requeues.
    pub fn tokens(&self) -> usize {
        self.generated.len()
    }

    /// Prompt tokens the prefix cache served at the request's first admission.
    pub fn prompt_cached_tokens(&self) -> usize {
        self.first_cached.or_else(|| self.handle.prompt_cached_tokens()).unwrap_or(0)
    }

    /// Times the request was resubmitted after an eviction.
    pub fn requeues(&self) -> usize {
        self.requeues
    }

    /// The next event, `None` after the last.
    pub async fn next(&mut self) -> Option<GenerationEvent> {
        while !self.done {
            let ev = self.handle.next().await;
            match self.step(ev) {
                Step::Emit(e) => return Some(e),
                Step::Requeue => {
                    let lease = Arc::clone(&self.model);
                    let model = lease.name.clone();
                    // Reloading a model takes seconds and blocks: off the async workers.
                    let again = tokio::task::spawn_blocking(move || lease.reacquire()).await;
                    let again = again.unwrap_or_else(|e| Err(EngineError::Load { model, reason: e.to_string() }));
                    if let Some(e) = self.resubmit(again) {
                        return Some(e);
                    }
                }
            }
        }
        None
    }

    /// The next event, blocking; `None` after the last.
    pub fn blocking_next(&mut self) -> Option<GenerationEvent> {
        while !self.done {
            let ev = self.handle.blocking_next();
            match self.step(ev) {
                Step::Emit(e) => return Some(e),
                Step::Requeue => {
                    let again = self.model.reacquire();
                    if let Some(e) = self.resubmit(again) {
                        return Some(e);
                    }
                }
            }
        }
        None
    }

    fn step(&mut self, ev: Option<RequestEvent>) -> Step {
        let stopped_under_us = matches!(ev, None | Some(RequestEvent::Finished(FinishReason::Aborted(_))));
        if stopped_under_us && self.model.was_evicted() && self.model.is_managed() && self.requeues < MAX_REQUEUES {
            return Step::Requeue;
        }
        match ev {
            Some(RequestEvent::Logprobs(lp)) => Step::Emit(GenerationEvent::Logprobs(lp)),
            Some(RequestEvent::Token(t)) => {
                self.generated.push(t);
                match self.text.push(&self.model.tokenizer, t) {
                    Ok((text, false)) => Step::Emit(GenerationEvent::Text { text, token: t }),
                    Ok((text, true)) => {
                        // The stop string's text is cut; the request ends here.
                        let reason = FinishReason::Stopped(StopCause::StopString);
                        self.model.engine.finish_request(self.handle.id(), reason);
                        self.end(GenerationEvent::Finished { reason, text })
                    }
                    Err(e) => self.end(GenerationEvent::Failed(EngineError::Executor(e))),
                }
            }
            Some(RequestEvent::Finished(reason)) => {
                let text = self.text.finish(&self.model.tokenizer);
                self.end(GenerationEvent::Finished { reason, text })
            }
            Some(RequestEvent::Failed(e)) => self.end(GenerationEvent::Failed(e)),
            // The engine stopped without a final event.
            None => self.end(GenerationEvent::Failed(EngineError::NotRunning)),
        }
    }

    fn end(&mut self, last: GenerationEvent) -> Step {
        self.done = true;
        Step::Emit(last)
    }

    /// Resubmits what is left on the reacquired model; an event to yield if that failed.
    fn resubmit(&mut self, again: Result<Option<ModelLease>, EngineError>) -> Option<GenerationEvent> {
        self.requeues += 1;
        let lease = match again {
            Ok(Some(lease)) => Arc::new(lease),
            Ok(None) => return Some(self.fail(EngineError::NotRunning)),
            Err(e) => return Some(self.fail(e)),
        };
        tracing::info!(request = self.handle.id().0, model = %lease.name, generated = self.generated.len(), "requeued after eviction");
        let mut r = self.request.clone();
        r.prompt.extend_from_slice(&self.generated);
        r.params.max_tokens = self.request.params.max_tokens.saturating_sub(self.generated.len()).max(1);
        // A continuation samples on from where the evicted request stopped.
        r.params.sampler.stream_offset = self.request.params.sampler.stream_offset + self.generated.len();
        let constraint = match self.structured.as_ref().map(|s| s.constraint(&self.generated)).transpose() {
            Ok(c) => c,
            Err(e) => return Some(self.fail(e)),
        };
        match lease.engine.submit_constrained(r, constraint) {
            Ok(h) => {
                self.first_cached = self.first_cached.or_else(|| self.handle.prompt_cached_tokens());
                self.handle = h;
                self.model = lease;
                None
            }
            Err(e) => Some(self.fail(e)),
        }
    }

    fn fail(&mut self, e: EngineError) -> GenerationEvent {
        self.done = true;
        GenerationEvent::Failed(e)
    }
}
