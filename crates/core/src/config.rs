//! [`SchedulerConfig`]: every knob of the scheduler, documented, with defaults and `validate()`
//! (raft-rs `Config`). Names follow vLLM (`max_num_seqs`, `max_num_batched_tokens`, ...) and
//! TensorRT-LLM (capacity policies) so users can carry their settings over.

use crate::error::Error;
use crate::policy::{BatchingKind, CapacityPolicyKind, PreemptionCost, PreemptionModeKind, QueuePolicyKind};
use crate::streams::StreamConfig;
use crate::types::TokenId;

/// Scheduler limits, cache shape and policy choices.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    /// Tokens per KV block (vLLM's default is 16).
    pub block_size: usize,
    /// Device KV blocks in the pool (the executor sizes this from its memory budget).
    pub num_gpu_blocks: usize,
    /// Host (swap tier) KV blocks; 0 disables swapping (`Swap` then falls back to recompute).
    pub num_host_blocks: usize,
    /// Most requests running at once: the batch size limit.
    pub max_num_seqs: usize,
    /// Token budget of one step, shared by prefill chunks and decode tokens.
    pub max_num_batched_tokens: usize,
    /// Longest sequence (prompt + output) the model accepts. A sequence is also capped at the
    /// pool's capacity (`num_gpu_blocks * block_size`) so that one request can always finish.
    pub max_model_len: usize,
    /// Split long prompts across steps. When off, a prompt must fit one step's token budget,
    /// so `max_num_batched_tokens` must be at least `max_model_len`.
    pub enable_chunked_prefill: bool,
    /// If non-zero, no request gets more than this many tokens in one step (vLLM's
    /// `long_prefill_token_threshold`), so a long prompt cannot hog a step.
    pub long_prefill_token_threshold: usize,
    /// Most requests that may be mid-prefill (fed more than one token) in one step.
    pub max_num_partial_prefills: usize,
    /// Reuse KV blocks of identical prefixes (hash chain over full blocks).
    pub enable_prefix_caching: bool,
    /// Bits of each prefix-cache key kept (128: the whole SHA-256-derived key). Fewer is for
    /// tests only: it forces hash collisions, which the block pool's token check must catch.
    pub prefix_key_bits: u32,
    /// The model's end-of-sequence tokens; sampling one stops a request unless `ignore_eos`.
    pub eos_token_ids: Vec<TokenId>,
    /// Which requests may start, and whether running ones may be preempted.
    pub capacity: CapacityPolicyKind,
    /// Order of the waiting queue.
    pub queue: QueuePolicyKind,
    /// What preemption does with a victim's KV blocks.
    pub preemption: PreemptionModeKind,
    /// Costs the `Auto` preemption mode weighs.
    pub preemption_cost: PreemptionCost,
    /// When waiting requests may start (switchable at run time).
    pub batching: BatchingKind,
    /// How a step is split over execution streams (switchable at run time).
    pub streams: StreamConfig,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            block_size: 16,
            num_gpu_blocks: 4096,
            num_host_blocks: 0,
            max_num_seqs: 256,
            max_num_batched_tokens: 2048,
            max_model_len: 4096,
            enable_chunked_prefill: true,
            long_prefill_token_threshold: 0,
            max_num_partial_prefills: 4,
            enable_prefix_caching: true,
            prefix_key_bits: 128,
            eos_token_ids: Vec::new(),
            capacity: CapacityPolicyKind::MaxUtilization,
            queue: QueuePolicyKind::Fcfs,
            preemption: PreemptionModeKind::Recompute,
            preemption_cost: PreemptionCost::default(),
            batching: BatchingKind::Continuous,
            streams: StreamConfig::default(),
        }
    }
}

fn invalid(field: &'static str, problem: impl Into<String>) -> Error {
    Error::InvalidConfig { field, problem: problem.into() }
}

impl SchedulerConfig {
    /// Longest sequence the scheduler will let grow: the model limit capped by the pool.
    pub fn effective_max_len(&self) -> usize {
        self.max_model_len.min(self.num_gpu_blocks.saturating_mul(self.block_size))
    }

    /// Checks ranges and cross-field consistency.
    pub fn validate(&self) -> Result<(), Error> {
        if self.block_size == 0 || self.block_size > 4096 {
            return Err(invalid("block_size", format!("must be in 1..=4096, got {}", self.block_size)));
        }
        if self.num_gpu_blocks == 0 || self.num_gpu_blocks > u32::MAX as usize / 2 {
            return Err(invalid("num_gpu_blocks", format!("must be in 1..2^31, got {}", self.num_gpu_blocks)));
        }
        if self.num_host_blocks > u32::MAX as usize / 2 {
            return Err(invalid("num_host_blocks", "must be below 2^31"));
        }
        if self.max_num_seqs == 0 {
            return Err(invalid("max_num_seqs", "must be at least 1 (zero sequences could never run)"));
        }
        if self.max_num_batched_tokens < self.block_size {
            return Err(invalid(
                "max_num_batched_tokens",
                format!("({}) must be at least one block ({} tokens)", self.max_num_batched_tokens, self.block_size),
            ));
        }
        if self.max_model_len < 2 {
            return Err(invalid("max_model_len", "must be at least 2 (one prompt token and one output token)"));
        }
        if !self.enable_chunked_prefill && self.max_num_batched_tokens < self.max_model_len {
            return Err(invalid(
                "max_num_batched_tokens",
                format!(
                    "({}) must be at least max_model_len ({}) when chunked prefill is off, or a long prompt could never run",
                    self.max_num_batched_tokens, self.max_model_len
                ),
            ));
        }
        if self.max_num_partial_prefills == 0 {
            return Err(invalid("max_num_partial_prefills", "must be at least 1"));
        }
        self.queue.validate()?;
        self.preemption_cost.validate()?;
        self.batching.validate()?;
        self.streams.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        SchedulerConfig::default().validate().unwrap();
    }

    #[test]
    fn rejects_each_bad_field() {
        let bad = [
            SchedulerConfig { block_size: 0, ..Default::default() },
            SchedulerConfig { num_gpu_blocks: 0, ..Default::default() },
            SchedulerConfig { max_num_seqs: 0, ..Default::default() },
            // 8 < one block of 16 tokens
            SchedulerConfig { max_num_batched_tokens: 8, ..Default::default() },
            SchedulerConfig { max_model_len: 1, ..Default::default() },
            // 2048 < 4096 with chunking off: a 3000-token prompt could never run
            SchedulerConfig { enable_chunked_prefill: false, ..Default::default() },
            SchedulerConfig { max_num_partial_prefills: 0, ..Default::default() },
            SchedulerConfig { queue: QueuePolicyKind::Priority { aging_per_sec: -1.0 }, ..Default::default() },
            SchedulerConfig { queue: QueuePolicyKind::Priority { aging_per_sec: f64::NAN }, ..Default::default() },
        ];
        for cfg in bad {
            let err = cfg.validate().unwrap_err();
            assert_eq!(err.kind(), "invalid_config", "{cfg:?}");
        }
    }

    #[test]
    fn effective_max_len_is_capped_by_the_pool() {
        // 10 blocks * 16 tokens = 160 < 4096
        let cfg = SchedulerConfig { num_gpu_blocks: 10, ..Default::default() };
        assert_eq!(cfg.effective_max_len(), 160);
    }
}
