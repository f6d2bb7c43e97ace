//! tandem's scheduler core: a deterministic state machine with no I/O, no threads and no clock
//! of its own, over a paged KV cache.
//!
//! The shape follows raft-rs's `RawNode` (the caller drives, passes time in, does the I/O) and
//! vLLM v1's scheduler (one token-budget rule for prefill, chunked prefill and decode; a block
//! pool with prefix caching). Policies are small traits chosen at construction
//! ([`policy`]); mechanisms are concrete structs ([`Scheduler`], [`kv::KvCacheManager`]).
//!
//! ```
//! use std::time::Duration;
//! use tandem_core::{ModelOutput, NewRequest, Scheduler, SchedulerConfig};
//!
//! let mut sched = Scheduler::new(SchedulerConfig::default()).unwrap();
//! sched.add_request(NewRequest::new(1, vec![1, 2, 3], 2, Duration::ZERO)).unwrap();
//! let mut text = Vec::new();
//! while !sched.is_idle() {
//!     let out = sched.schedule(Duration::ZERO);
//!     // An executor would run the model here; we "sample" token 7 everywhere.
//!     let model = ModelOutput::sampled(out.seqs.iter().map(|s| s.sample.then_some(7)).collect());
//!     for delta in sched.update(&out, &model, Duration::ZERO).unwrap() {
//!         text.extend(delta.token);
//!     }
//! }
//! assert_eq!(text, vec![7, 7]);
//! ```

pub mod admission;
pub mod config;
pub mod config_text;
pub mod contexts;
pub mod error;
pub mod kv;
pub mod output;
pub mod policy;
pub mod request;
pub mod reservation;
pub mod scheduler;
pub mod stats;
pub mod streams;
pub mod types;

pub use config::SchedulerConfig;
pub use config_text::named_config;
pub use error::{Error, InvariantViolation};
pub use output::{ModelOutput, ScheduledSeq, SchedulerOutput, StepTiming, TokenLogprobs, PLACEHOLDER_TOKEN};
pub use policy::{BatchingKind, CapacityPolicyKind, Limits, PreemptionCost, PreemptionModeKind, QueuePolicyKind};
pub use request::{
    AbortCause, FinishReason, NewRequest, RejectReason, RequestDelta, RequestState, SamplerParams, SamplingParams,
    StopCause,
};
pub use scheduler::Scheduler;
pub use stats::SchedulerStats;
pub use streams::{StreamAssignment, StreamConfig};
pub use types::{BlockId, HostBlockId, RequestId, Time, TokenId};
