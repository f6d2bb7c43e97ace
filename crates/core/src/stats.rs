//! [`SchedulerStats`]: counters and gauges readable at any time (vLLM's `SchedulerStats`).

/// A snapshot of the scheduler's state and lifetime counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SchedulerStats {
    /// Requests waiting to start or resume (includes swapped and preempted ones).
    pub waiting: usize,
    pub running: usize,
    /// Waiting requests whose KV sits in the host tier.
    pub swapped: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    pub kv_blocks_total: usize,
    /// Device blocks referenced by some request.
    pub kv_blocks_used: usize,
    /// Device blocks findable by prefix hash (used or free).
    pub kv_blocks_cached: usize,
    /// Prompt tokens not yet fed, of every live request ([`crate::Scheduler::prefill_backlog`]).
    pub prefill_backlog_tokens: usize,
    /// Running requests past their prefill (one token a step each).
    pub decoding: usize,
    pub host_blocks_total: usize,
    pub host_blocks_used: usize,
    /// Prompt tokens looked up in the prefix cache, and how many were found.
    pub prefix_cache_queries: u64,
    pub prefix_cache_hits: u64,
    /// Lookups whose key matched a cached block computed from other tokens or another prefix
    /// (refused: a hash collision or a forged key; 0 in practice with full-size keys).
    pub prefix_cache_rejections: u64,
    pub preemptions_recompute: u64,
    /// The figures `auto` preemption decides by, as learned from measured steps (`None` for
    /// the other modes).
    pub preemption_cost: Option<crate::PreemptionCost>,
    pub preemptions_swap: u64,
    pub steps: u64,
    pub last_batch_size: usize,
    pub last_num_batched_tokens: usize,
    /// Limits in force (batching strategies may tune them).
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    /// Steps that admitted a batch into an idle scheduler (static / fixed batches formed).
    pub batches_formed: u64,
    /// Decode tokens scheduled before their previous token was known (async scheduling).
    pub placeholder_tokens: u64,
    pub requests_added: u64,
    pub requests_finished: u64,
    pub requests_aborted: u64,
    pub requests_rejected: u64,
    pub tokens_generated: u64,
    /// Prompt (and recompute) tokens fed in chunks of more than one token, since start.
    pub prefill_tokens_fed: u64,
}

impl SchedulerStats {
    /// Fraction of device blocks in use, 0.0..=1.0.
    pub fn kv_usage(&self) -> f64 {
        if self.kv_blocks_total == 0 {
            0.0
        } else {
            self.kv_blocks_used as f64 / self.kv_blocks_total as f64
        }
    }

    /// Fraction of looked-up prompt tokens found in the prefix cache.
    pub fn prefix_cache_hit_rate(&self) -> f64 {
        if self.prefix_cache_queries == 0 {
            0.0
        } else {
            self.prefix_cache_hits as f64 / self.prefix_cache_queries as f64
        }
    }

    pub fn preemptions(&self) -> u64 {
        self.preemptions_recompute + self.preemptions_swap
    }
}
