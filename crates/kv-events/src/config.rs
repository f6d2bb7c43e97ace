//! `--kv-events-config`: vLLM's `KVEventsConfig` JSON, the same keys and defaults, so a command
//! line written for `vllm serve` works here.

use serde::Deserialize;

use crate::KvEventsError;

/// vLLM's default PUB endpoint (bound on every interface).
pub const DEFAULT_ENDPOINT: &str = "tcp://*:5557";
const DEFAULT_BUFFER_STEPS: usize = 10_000;
const DEFAULT_HWM: u64 = 100_000;
const DEFAULT_MAX_QUEUE: u64 = 100_000;

/// Where and how block events are published.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvEventsConfig {
    /// Record events at all (vLLM: off unless set).
    #[serde(default)]
    pub enable_kv_cache_events: bool,
    /// `zmq` (the PUB socket) or `null` (record nothing).
    #[serde(default = "default_publisher")]
    pub publisher: String,
    /// PUB address: `tcp://*:PORT` or `tcp://HOST:PORT` with `*`/`::` binds, any other connects
    /// (vLLM's rule), `ipc://` binds.
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// ROUTER address where subscribers ask for the batches they missed (optional).
    #[serde(default)]
    pub replay_endpoint: Option<String>,
    /// Batches kept for replay.
    #[serde(default = "default_buffer_steps")]
    pub buffer_steps: usize,
    /// The PUB socket's high-water mark: only vLLM's default is accepted (see [`Self::parse`]).
    #[serde(default = "default_hwm")]
    pub hwm: u64,
    /// Events queued for the publisher: only vLLM's default is accepted.
    #[serde(default = "default_max_queue")]
    pub max_queue_size: u64,
    /// The first frame of every message.
    #[serde(default)]
    pub topic: String,
}

fn default_publisher() -> String {
    "zmq".into()
}
fn default_endpoint() -> String {
    DEFAULT_ENDPOINT.into()
}
fn default_buffer_steps() -> usize {
    DEFAULT_BUFFER_STEPS
}
fn default_hwm() -> u64 {
    DEFAULT_HWM
}
fn default_max_queue() -> u64 {
    DEFAULT_MAX_QUEUE
}

impl KvEventsConfig {
    /// Parses the flag's JSON. Keys vLLM does not define are errors; so are the two knobs this
    /// publisher cannot honour (the PUB socket's queue is the ZeroMQ implementation's own, and
    /// the engine hands events over without a bounded queue), rather than being ignored.
    pub fn parse(json: &str) -> Result<Self, KvEventsError> {
        let c: Self = serde_json::from_str(json).map_err(KvEventsError::Config)?;
        if c.hwm != DEFAULT_HWM {
            return Err(KvEventsError::Unsupported("hwm"));
        }
        if c.max_queue_size != DEFAULT_MAX_QUEUE {
            return Err(KvEventsError::Unsupported("max_queue_size"));
        }
        match c.publisher.as_str() {
            "zmq" | "null" => Ok(c),
            other => Err(KvEventsError::Publisher(other.to_string())),
        }
    }

    /// Whether events are published at all.
    pub fn publishes(&self) -> bool {
        self.enable_kv_cache_events && self.publisher == "zmq"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vllms_keys_and_defaults() {
        let c =
            KvEventsConfig::parse(r#"{"enable_kv_cache_events": true, "publisher": "zmq", "topic": "kv"}"#).unwrap();
        assert!(c.publishes());
        assert_eq!((c.endpoint.as_str(), c.topic.as_str(), c.buffer_steps), (DEFAULT_ENDPOINT, "kv", 10_000));
        assert!(!KvEventsConfig::parse("{}").unwrap().publishes(), "off unless enabled, as in vLLM");
        assert!(!KvEventsConfig::parse(r#"{"enable_kv_cache_events": true, "publisher": "null"}"#)
            .unwrap()
            .publishes());
    }

    #[test]
    fn unknown_keys_and_unhonoured_knobs_are_errors() {
        assert!(matches!(KvEventsConfig::parse(r#"{"endpont": "tcp://*:1"}"#), Err(KvEventsError::Config(_))));
        assert!(matches!(KvEventsConfig::parse(r#"{"hwm": 5}"#), Err(KvEventsError::Unsupported("hwm"))));
        assert!(matches!(KvEventsConfig::parse(r#"{"publisher": "nats"}"#), Err(KvEventsError::Publisher(_))));
    }
}
