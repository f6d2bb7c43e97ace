//! The messages an [`crate::Engine`] and its [`crate::RequestHandle`]s send to the step loop
//! (a module of its own so that neither imports the other).

use std::sync::mpsc;

use tandem_core::{BatchingKind, FinishReason, NewRequest, RequestId, StreamConfig};
use tokio::sync::mpsc::UnboundedSender;

use crate::error::EngineError;
use crate::grammar::Constraint;
use crate::handle::{PromptCached, RequestEvent};

/// Messages to the step loop.
pub(crate) enum Control {
    Add(NewRequest, UnboundedSender<RequestEvent>, PromptCached, Option<Box<Constraint>>),
    Abort(RequestId),
    Finish(RequestId, FinishReason),
    SetBatching(BatchingKind, mpsc::Sender<Result<(), EngineError>>),
    SetStreams(StreamConfig, mpsc::Sender<Result<(), EngineError>>),
    Shutdown,
}
