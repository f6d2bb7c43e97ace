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
    /// A request, its event channel, where to report its cached prompt tokens, its grammar, and
    /// admission's predicted time to first token.
    Add(
        Box<NewRequest>,
        UnboundedSender<RequestEvent>,
        PromptCached,
        Option<Box<Constraint>>,
        Option<std::time::Duration>,
    ),
    Abort(RequestId),
    Finish(RequestId, FinishReason),
    SetBatching(BatchingKind, mpsc::Sender<Result<(), EngineError>>),
    SetStreams(StreamConfig, mpsc::Sender<Result<(), EngineError>>),
    Shutdown,
}
