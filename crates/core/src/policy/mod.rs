//! Scheduling policies: small traits chosen at construction (TGI's `Allocator` pattern), each
//! with its configurable kinds. The scheduler (`crate::scheduler`) is the mechanism that calls
//! them; a policy only answers questions about plain numbers.

mod batching;
mod capacity;
mod preemption;
mod queue;

pub use batching::{
    Adaptive, AdmissionQuota, BatchView, BatchingKind, BatchingStrategy, Coalescing, Continuous, Fixed,
    LatencyOptimized, Limits, SizeOrTimeout, StepFeedback, ThroughputOptimized,
};
pub use capacity::{AdmissionView, CapacityPolicy, CapacityPolicyKind, GuaranteedNoEvict, MaxUtilization, StaticBatch};
pub use preemption::{
    AutoPreemption, CostSample, PreemptionCost, PreemptionMode, PreemptionModeKind, PreemptionPolicy, RecomputeOnly,
    SwapFirst, VictimView,
};
pub use queue::{Fcfs, PriorityAging, QueuePolicy, QueuePolicyKind, Rank};
