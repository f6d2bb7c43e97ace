//! [`RequestHandle`]: a request's stream of events. Dropping it aborts the request (RAII, as a
//! closed response channel does in TGI), which frees its KV blocks within one step.

use std::sync::mpsc::Sender;

use tandem_core::{FinishReason, RequestId, TokenId, TokenLogprobs};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::control::Control;
use crate::error::EngineError;

/// One event of a request's life.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestEvent {
    /// A generated token.
    Token(TokenId),
    /// The log-probabilities of the next `Token` (only for requests that asked for them).
    Logprobs(TokenLogprobs),
    /// The request ended (always the last event unless `Failed`).
    Finished(FinishReason),
    /// The request could not be run (refused by the scheduler, or the executor failed).
    Failed(EngineError),
}

impl RequestEvent {
    pub fn is_last(&self) -> bool {
        !matches!(self, RequestEvent::Token(_) | RequestEvent::Logprobs(_))
    }
}

/// Where the step loop leaves how many prompt tokens the prefix cache served (`usize::MAX`:
/// not known yet), read by the handle.
pub(crate) type PromptCached = std::sync::Arc<std::sync::atomic::AtomicUsize>;

/// A submitted request: read its events with [`Self::next`] (async) or [`Self::blocking_next`].
#[derive(Debug)]
pub struct RequestHandle {
    id: RequestId,
    events: UnboundedReceiver<RequestEvent>,
    control: Sender<Control>,
    ended: bool,
    cached: PromptCached,
}

impl RequestHandle {
    pub(crate) fn new(
        id: RequestId,
        events: UnboundedReceiver<RequestEvent>,
        control: Sender<Control>,
        cached: PromptCached,
    ) -> Self {
        Self { id, events, control, ended: false, cached }
    }

    /// Prompt tokens served from the prefix cache when the request was admitted (known before
    /// its first event).
    pub fn prompt_cached_tokens(&self) -> Option<usize> {
        Some(self.cached.load(std::sync::atomic::Ordering::Relaxed)).filter(|&n| n != usize::MAX)
    }

    pub fn id(&self) -> RequestId {
        self.id
    }

    /// The next event, or `None` after the last one.
    pub async fn next(&mut self) -> Option<RequestEvent> {
        if self.ended {
            return None;
        }
        let ev = self.events.recv().await;
        self.observe(ev)
    }

    /// The next event, blocking the thread (not for use inside an async runtime).
    pub fn blocking_next(&mut self) -> Option<RequestEvent> {
        if self.ended {
            return None;
        }
        let ev = self.events.blocking_recv();
        self.observe(ev)
    }

    /// The next event if one is ready: `Ok(Some)` an event, `Ok(None)` the stream ended,
    /// `Err(Timeout)` nothing yet.
    pub fn try_next(&mut self) -> Result<Option<RequestEvent>, EngineError> {
        if self.ended {
            return Ok(None);
        }
        match self.events.try_recv() {
            Ok(ev) => Ok(self.observe(Some(ev))),
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => Ok(self.observe(None)),
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => Err(EngineError::Timeout),
        }
    }

    /// Every remaining event until the last (blocking).
    pub fn blocking_collect(&mut self) -> Vec<RequestEvent> {
        std::iter::from_fn(|| self.blocking_next()).collect()
    }

    /// Like [`Self::blocking_next`], but gives up after `timeout` with [`EngineError::Timeout`],
    /// e.g. for a client-side deadline or a test that must not hang.
    pub fn blocking_next_timeout(&mut self, timeout: std::time::Duration) -> Result<Option<RequestEvent>, EngineError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.ended {
                return Ok(None);
            }
            match self.events.try_recv() {
                Ok(ev) => return Ok(self.observe(Some(ev))),
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => return Ok(self.observe(None)),
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) if std::time::Instant::now() >= deadline => {
                    return Err(EngineError::Timeout);
                }
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                    std::thread::sleep(std::time::Duration::from_micros(200))
                }
            }
        }
    }

    fn observe(&mut self, ev: Option<RequestEvent>) -> Option<RequestEvent> {
        match &ev {
            Some(e) if e.is_last() => self.ended = true,
            None => self.ended = true,
            _ => {}
        }
        ev
    }
}

impl Drop for RequestHandle {
    fn drop(&mut self) {
        if !self.ended {
            let _ = self.control.send(Control::Abort(self.id));
        }
    }
}
