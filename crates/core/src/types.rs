//! Identifiers and scalar units shared by every part of the core.
//!
//! Time is never read from a clock here: callers pass `now` as a [`Time`], the time since an
//! epoch of their choosing (the engine uses its start-up instant; the simulator uses virtual
//! time). This is what keeps the scheduler a deterministic state machine (raft-rs `RawNode`).

use std::fmt;
use std::time::Duration;

/// Time since the driver's epoch. The core only compares and subtracts these.
pub type Time = Duration;

/// A vocabulary index.
pub type TokenId = u32;

/// The caller's name for a request; unique among live requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "req-{}", self.0)
    }
}

/// Index of a KV block in device memory (`0..num_gpu_blocks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(pub u32);

/// Index of a KV block in the host (swap) tier (`0..num_host_blocks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostBlockId(pub u32);

impl BlockId {
    /// The block's index as a `usize`, for slicing per-block arrays.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl HostBlockId {
    /// The block's index as a `usize`, for slicing per-block arrays.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}
