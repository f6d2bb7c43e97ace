//! The publisher: a task on the server's runtime that encodes each step's batch, sends it on
//! the PUB socket as `[topic, seq, payload]` and keeps the last `buffer_steps` for replay; with
//! a `replay_endpoint`, a ROUTER socket answers a subscriber's request (the first sequence
//! number it missed, 8 bytes big-endian) with every buffered batch from there on, then the end
//! marker (sequence −1, empty payload). vLLM's `ZmqEventPublisher`, the same frames.
//!
//! A PUB socket drops what no subscriber is connected to receive; sequence numbers let a
//! subscriber see the gap and ask for a replay.

use std::collections::VecDeque;

use bytes::Bytes;
use tandem_engine::KvEventBatch;
use tokio::sync::mpsc::UnboundedReceiver;
use zeromq::{PubSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

use crate::wire::encode_batch;
use crate::{KvEventsConfig, KvEventsError};

/// vLLM's end-of-replay sequence number.
const END_SEQ: [u8; 8] = (-1i64).to_be_bytes();

/// A running publisher: where it listens (ports resolved) and its task.
pub struct Publishing {
    /// The PUB endpoint, e.g. `tcp://0.0.0.0:5557` (or the address connected to).
    pub endpoint: String,
    pub replay_endpoint: Option<String>,
    pub task: tokio::task::JoinHandle<()>,
}

/// vLLM's rule: bind an address with a wildcard (`*`, `::`) or an `ipc://` path, connect to any
/// other. `*` is spelled `0.0.0.0` for the socket.
fn binds(endpoint: &str) -> bool {
    endpoint.contains('*') || endpoint.contains("::") || endpoint.starts_with("ipc://")
}

async fn open<S: Socket>(socket: &mut S, endpoint: &str, bind: bool) -> Result<String, KvEventsError> {
    let err = |source| KvEventsError::Socket { endpoint: endpoint.to_string(), source };
    let spelled = endpoint.replace("tcp://*:", "tcp://0.0.0.0:");
    if bind {
        Ok(socket.bind(&spelled).await.map_err(err)?.to_string())
    } else {
        socket.connect(&spelled).await.map_err(err)?;
        Ok(spelled)
    }
}

/// Opens the sockets `cfg` names and publishes every batch received on `events` until that
/// channel closes (the engine is gone).
pub async fn publish(
    cfg: &KvEventsConfig,
    block_size: usize,
    events: UnboundedReceiver<KvEventBatch>,
) -> Result<Publishing, KvEventsError> {
    let mut pub_socket = PubSocket::new();
    let endpoint = open(&mut pub_socket, &cfg.endpoint, binds(&cfg.endpoint)).await?;
    let (router, replay_endpoint) = match &cfg.replay_endpoint {
        Some(ep) => {
            let mut r = RouterSocket::new();
            let at = open(&mut r, ep, true).await?;
            (Some(r), Some(at))
        }
        None => (None, None),
    };
    let state = State {
        pub_socket,
        router,
        topic: Bytes::from(cfg.topic.clone().into_bytes()),
        buffer: VecDeque::new(),
        buffer_steps: cfg.buffer_steps,
        next_seq: 0,
        block_size,
    };
    let task = tokio::spawn(state.run(events));
    Ok(Publishing { endpoint, replay_endpoint, task })
}

struct State {
    pub_socket: PubSocket,
    router: Option<RouterSocket>,
    topic: Bytes,
    buffer: VecDeque<(u64, Bytes)>,
    buffer_steps: usize,
    next_seq: u64,
    block_size: usize,
}

impl State {
    async fn run(mut self, mut events: UnboundedReceiver<KvEventBatch>) {
        loop {
            tokio::select! {
                batch = events.recv() => match batch {
                    Some(b) => self.send(&b).await,
                    None => break,
                },
                request = recv(&mut self.router) => match request {
                    Ok(m) => self.replay(m).await,
                    Err(e) => tracing::warn!("kv events: replay socket: {e}"),
                },
            }
        }
    }

    async fn send(&mut self, batch: &KvEventBatch) {
        let payload = match encode_batch(batch, self.block_size) {
            Ok(p) => Bytes::from(p),
            Err(e) => return tracing::warn!("kv events: {e}"),
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        // `[topic, sequence number (8 bytes, big-endian), payload]`.
        let seq_bytes = Bytes::from(seq.to_be_bytes().to_vec());
        let message = message(vec![self.topic.clone(), seq_bytes, payload.clone()]);
        if let Err(e) = self.pub_socket.send(message).await {
            tracing::warn!("kv events: publishing batch {seq}: {e}");
        }
        if self.buffer_steps > 0 {
            if self.buffer.len() == self.buffer_steps {
                self.buffer.pop_front();
            }
            self.buffer.push_back((seq, payload));
        }
    }

    /// Answers `[identity, empty, start_seq]`.
    async fn replay(&mut self, request: ZmqMessage) {
        let frames = request.into_vec();
        let [identity, _, start] = &frames[..] else {
            return tracing::warn!("kv events: a replay request of {} frames (3 expected)", frames.len());
        };
        let Ok(start) = <[u8; 8]>::try_from(&start[..]) else {
            return tracing::warn!("kv events: a replay request's sequence number is not 8 bytes");
        };
        let start = u64::from_be_bytes(start);
        let Some(router) = self.router.as_mut() else { return };
        let replies = self.buffer.iter().filter(|(seq, _)| *seq >= start);
        let end = (Bytes::from_static(&END_SEQ), Bytes::new());
        for (seq, payload) in replies.map(|(s, p)| (Bytes::from(s.to_be_bytes().to_vec()), p.clone())).chain([end]) {
            let reply = message(vec![identity.clone(), Bytes::new(), seq, payload]);
            if let Err(e) = router.send(reply).await {
                return tracing::warn!("kv events: replay: {e}");
            }
        }
    }
}

/// A multipart message (`frames` is never empty here).
fn message(frames: Vec<Bytes>) -> ZmqMessage {
    ZmqMessage::try_from(frames).unwrap_or_else(|_| ZmqMessage::from(Bytes::new()))
}

/// The next replay request, or never without a replay socket.
async fn recv(router: &mut Option<RouterSocket>) -> zeromq::ZmqResult<ZmqMessage> {
    match router {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}
