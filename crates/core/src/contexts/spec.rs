//! What a context asks for: tier, memory budget, compute share, keep-alive.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A context's quality-of-service tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QosTier {
    /// Spare memory only; evicted first.
    BestEffort,
    /// `base_bytes` reserved; may borrow spare memory up to `max_bytes`.
    Burstable,
    /// `max_bytes` reserved; never evicted.
    Guaranteed,
}

impl QosTier {
    /// Scheduling priority: Guaranteed 2, Burstable 1, BestEffort 0.
    pub fn priority(self) -> u8 {
        self as u8
    }
}

impl FromStr for QosTier {
    type Err = ContextError;

    fn from_str(s: &str) -> Result<Self, ContextError> {
        match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "guaranteed" => Ok(QosTier::Guaranteed),
            "burstable" => Ok(QosTier::Burstable),
            "besteffort" => Ok(QosTier::BestEffort),
            _ => Err(ContextError::UnknownTier(s.to_string())),
        }
    }
}

impl fmt::Display for QosTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QosTier::Guaranteed => "guaranteed",
            QosTier::Burstable => "burstable",
            QosTier::BestEffort => "best-effort",
        })
    }
}

/// One model's context: what it may use of the device.
#[derive(Debug, Clone, PartialEq)]
pub struct ContextSpec {
    /// The model's name (what requests put in `model`).
    pub name: String,
    pub tier: QosTier,
    /// Most bytes it may hold: weights + KV cache.
    pub max_bytes: u64,
    /// Bytes reserved for a Burstable context (ignored for the other tiers).
    pub base_bytes: u64,
    /// Bytes its weights take once loaded.
    pub weight_bytes: u64,
    /// Smallest KV cache worth loading for (e.g. one full-length sequence).
    pub min_kv_bytes: u64,
    /// Relative compute share when contexts contend (> 0).
    pub share: f64,
    /// Unloaded after this long without requests.
    pub keep_alive: Duration,
}

impl ContextSpec {
    /// Bytes kept for this context whether or not it is loaded.
    pub fn reserved_bytes(&self) -> u64 {
        match self.tier {
            QosTier::Guaranteed => self.max_bytes,
            QosTier::Burstable => self.base_bytes,
            QosTier::BestEffort => 0,
        }
    }

    /// Fewest bytes it can load with.
    pub fn min_bytes(&self) -> u64 {
        let floor = self.weight_bytes + self.min_kv_bytes;
        match self.tier {
            QosTier::Guaranteed => self.max_bytes,
            QosTier::Burstable => floor.max(self.base_bytes),
            QosTier::BestEffort => floor,
        }
    }

    /// Checks the numbers make sense.
    pub fn validate(&self) -> Result<(), ContextError> {
        let bad = |problem: String| Err(ContextError::InvalidSpec { name: self.name.clone(), problem });
        if self.name.is_empty() {
            return bad("the name is empty".into());
        }
        if !(self.share > 0.0 && self.share.is_finite()) {
            return bad(format!("share must be a positive number, got {}", self.share));
        }
        if self.weight_bytes + self.min_kv_bytes > self.max_bytes {
            return bad(format!(
                "max_bytes {} cannot hold the weights ({}) and the smallest KV cache ({})",
                self.max_bytes, self.weight_bytes, self.min_kv_bytes
            ));
        }
        if self.tier == QosTier::Burstable && self.base_bytes > self.max_bytes {
            return bad(format!("base_bytes {} is above max_bytes {}", self.base_bytes, self.max_bytes));
        }
        Ok(())
    }
}

/// What can go wrong with contexts.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ContextError {
    #[error("context `{name}`: {problem}")]
    InvalidSpec { name: String, problem: String },
    #[error("context `{0}` already exists")]
    Duplicate(String),
    #[error("no context named `{0}`")]
    Unknown(String),
    #[error("context `{name}` not admitted: {reason}")]
    Rejected { name: String, reason: String },
    #[error("context `{name}` cannot load: needs {needed} bytes, {available} available after evicting what its tier may evict")]
    OutOfMemory { name: String, needed: u64, available: u64 },
    #[error("context `{name}` cannot load: the memory-pressure hook denied {requested} bytes ({available} available)")]
    Denied { name: String, requested: u64, available: u64 },
    #[error("context `{0}` is not loaded")]
    NotLoaded(String),
    #[error("unknown QoS tier `{0}` (guaranteed, burstable, best-effort)")]
    UnknownTier(String),
}
