//! tandem's prefix-cache block events for routers that route on exact cache contents (llm-d's
//! precise prefix scorer, Dynamo's KV router), in vLLM's format: msgpack batches of
//! `BlockStored` / `BlockRemoved` / `AllBlocksCleared` ([`wire`]) on a ZeroMQ PUB socket, with
//! the optional ROUTER socket that replays missed batches ([`publisher`]), configured by vLLM's
//! `--kv-events-config` JSON ([`config`]).
//!
//! The scheduler core records the events (`tandem_core::kv::KvEvent`), the engine takes them
//! after each step and sends them here; this crate owns the sockets and the encoding. ZeroMQ is
//! the `zeromq` crate (a native Rust implementation on tokio: no libzmq to build), msgpack is
//! `rmp`.

pub mod config;
pub mod publisher;
pub mod wire;

pub use config::KvEventsConfig;
pub use publisher::{publish, Publishing};

/// Why events cannot be published.
#[derive(Debug, thiserror::Error)]
pub enum KvEventsError {
    #[error("--kv-events-config is not valid vLLM KVEventsConfig JSON: {0}")]
    Config(#[source] serde_json::Error),
    #[error("--kv-events-config: `{0}` other than vLLM's default is not supported by this publisher")]
    Unsupported(&'static str),
    #[error("--kv-events-config: unknown publisher `{0}` (zmq or null)")]
    Publisher(String),
    #[error("cannot open the KV-event socket on {endpoint}")]
    Socket {
        endpoint: String,
        #[source]
        source: zeromq::ZmqError,
    },
    #[error("cannot encode a KV-event batch")]
    Encode(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("a KV-event batch holds {0} items in one array, more than msgpack allows")]
    TooLong(usize),
}
