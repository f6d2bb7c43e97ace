//! Capacity policies: may a waiting request start now, and may running ones be preempted?
//!
//! Names and meaning from TensorRT-LLM's `CapacitySchedulerPolicy`:
//! - [`MaxUtilization`]: admit whenever the first chunk's blocks fit; preempt under KV pressure.
//!   Highest throughput, at the cost of occasional preemption (vLLM's behaviour).
//! - [`GuaranteedNoEvict`]: admit only if the blocks for prompt + `max_tokens` fit beside what
//!   every running request may still need; never preempts. Predictable latency, lower occupancy.
//! - [`StaticBatch`]: like `GuaranteedNoEvict`, but only in a step that began with nothing
//!   running, so a batch runs to completion before the next forms (seed 004's naive batcher).

/// The numbers a capacity policy decides on, all in KV blocks unless noted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionView {
    /// Requests running when the step began.
    pub running_at_step_start: usize,
    /// Free blocks in the pool now (cached-but-unreferenced blocks count as free).
    pub free_blocks: usize,
    /// Blocks running requests may still take before they finish (0 unless the policy reserves).
    pub reserved_blocks: usize,
    /// Free blocks the candidate takes to start now (its first chunk).
    pub blocks_now: usize,
    /// Free blocks the candidate takes over its whole life (prompt + max_tokens).
    pub blocks_to_completion: usize,
}

/// Decides admission and whether preemption is allowed.
pub trait CapacityPolicy: std::fmt::Debug + Send {
    /// May the candidate described by `view` start now?
    fn admits(&self, view: &AdmissionView) -> bool;
    /// May running requests be preempted to make room?
    fn may_preempt(&self) -> bool;
    /// Does admission reserve blocks to completion (so `reserved_blocks` must be computed)?
    fn reserves_to_completion(&self) -> bool;
    /// Stable name for logs and stats.
    fn name(&self) -> &'static str;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct MaxUtilization;

impl CapacityPolicy for MaxUtilization {
    fn admits(&self, v: &AdmissionView) -> bool {
        v.blocks_now <= v.free_blocks
    }
    fn may_preempt(&self) -> bool {
        true
    }
    fn reserves_to_completion(&self) -> bool {
        false
    }
    fn name(&self) -> &'static str {
        "max_utilization"
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct GuaranteedNoEvict;

impl CapacityPolicy for GuaranteedNoEvict {
    fn admits(&self, v: &AdmissionView) -> bool {
        v.blocks_to_completion + v.reserved_blocks <= v.free_blocks
    }
    fn may_preempt(&self) -> bool {
        false
    }
    fn reserves_to_completion(&self) -> bool {
        true
    }
    fn name(&self) -> &'static str {
        "guaranteed_no_evict"
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct StaticBatch;

impl CapacityPolicy for StaticBatch {
    fn admits(&self, v: &AdmissionView) -> bool {
        v.running_at_step_start == 0 && GuaranteedNoEvict.admits(v)
    }
    fn may_preempt(&self) -> bool {
        false
    }
    fn reserves_to_completion(&self) -> bool {
        true
    }
    fn name(&self) -> &'static str {
        "static_batch"
    }
}

/// The capacity policies a config can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CapacityPolicyKind {
    #[default]
    MaxUtilization,
    GuaranteedNoEvict,
    StaticBatch,
}

impl CapacityPolicyKind {
    pub fn build(self) -> Box<dyn CapacityPolicy> {
        match self {
            CapacityPolicyKind::MaxUtilization => Box::new(MaxUtilization),
            CapacityPolicyKind::GuaranteedNoEvict => Box::new(GuaranteedNoEvict),
            CapacityPolicyKind::StaticBatch => Box::new(StaticBatch),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(running: usize, free: usize, reserved: usize, now: usize, total: usize) -> AdmissionView {
        AdmissionView {
            running_at_step_start: running,
            free_blocks: free,
            reserved_blocks: reserved,
            blocks_now: now,
            blocks_to_completion: total,
        }
    }

    #[test]
    fn max_utilization_looks_only_at_the_first_chunk() {
        // 3 blocks now <= 3 free, although 10 to completion would not fit
        assert!(MaxUtilization.admits(&view(5, 3, 0, 3, 10)));
        assert!(!MaxUtilization.admits(&view(5, 2, 0, 3, 10))); // 3 > 2
    }

    #[test]
    fn guaranteed_no_evict_counts_what_running_requests_still_need() {
        // 4 to completion + 6 reserved = 10 <= 10 free
        assert!(GuaranteedNoEvict.admits(&view(2, 10, 6, 1, 4)));
        // 5 + 6 = 11 > 10
        assert!(!GuaranteedNoEvict.admits(&view(2, 10, 6, 1, 5)));
    }

    #[test]
    fn static_batch_admits_only_into_an_empty_engine() {
        assert!(StaticBatch.admits(&view(0, 10, 0, 1, 4)));
        assert!(!StaticBatch.admits(&view(1, 10, 0, 1, 4)), "one request still running");
    }
}
