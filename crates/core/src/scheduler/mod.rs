//! The scheduler: a deterministic state machine over requests and the paged KV cache.
//!
//! Driven like raft-rs's `RawNode`: the caller adds and aborts requests, calls
//! [`Scheduler::schedule`] with the current time to get a [`crate::SchedulerOutput`], runs it,
//! and hands the result to [`Scheduler::update`], which returns per-request deltas. No threads,
//! no clock, no I/O. Every `schedule` must be answered by exactly one `update` (or
//! [`Scheduler::fail_step`]), in order. Several may be in flight (vLLM's async scheduling): a
//! request whose sampled token is still on the device may be scheduled again with a
//! *placeholder* (`ScheduledSeq::feeds_last_sample`), which the executor fills with the token it
//! sampled for that request in the previous step.
//!
//! One rule for all phases (vLLM v1): each request's computed tokens catch up with its known
//! tokens under one per-step token budget, so prefill, chunked prefill and decode are the same
//! operation. See `step.rs` for the step and `update.rs` for applying results.

mod invariants;
mod seq;
mod step;
mod stream_step;
mod update;
mod waiting;

use std::collections::{BTreeSet, VecDeque};

use rustc_hash::FxHashMap;

use crate::config::SchedulerConfig;
use crate::error::Error;
use crate::kv::{KvCacheManager, KvEvent, SeqBlocks};
use crate::policy::{BatchingKind, BatchingStrategy, CapacityPolicy, Limits, PreemptionPolicy, QueuePolicy};
use crate::request::{FinishReason, NewRequest, RequestDelta, RequestState};
use crate::stats::SchedulerStats;
use crate::streams::StreamConfig;
use crate::types::{RequestId, Time, TokenId};

use seq::{Seq, Slot};
use waiting::WaitingQueue;

/// The steps scheduled but not yet updated, with the slots they refer to.
#[derive(Debug)]
struct Inflight {
    step: u64,
    /// The stream of a sync-off step (whose update may come back out of order), if it has
    /// work for that stream (an empty step leaves its stream free).
    stream: Option<usize>,
    /// The step has work for the device (sequences or copies).
    busy: bool,
    /// Tokens the step feeds (a sync-off step's share of the one budget while it runs).
    tokens: usize,
    /// Aligned with the output's `seqs`: (slot, epoch, kv_generation) at schedule time.
    entries: Vec<(Slot, u64, u32)>,
}

/// The scheduler state machine. See the module docs.
#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    max_len: usize,
    /// Limits in force (a strategy may tune them).
    limits: Limits,
    /// Limits as configured (what strategies start from).
    base_limits: Limits,
    capacity: Box<dyn CapacityPolicy>,
    queue: Box<dyn QueuePolicy>,
    preemption: Box<dyn PreemptionPolicy>,
    batching: Box<dyn BatchingStrategy>,
    batching_kind: BatchingKind,
    streams: StreamConfig,
    draining: bool,
    kv: KvCacheManager,
    slots: Vec<Option<Seq>>,
    free_slots: Vec<Slot>,
    by_id: FxHashMap<RequestId, Slot>,
    waiting: WaitingQueue,
    /// Running slots in admission order (the order the running loop serves them).
    running: Vec<Slot>,
    deadlines: BTreeSet<(Time, u64, Slot)>,
    inflight: VecDeque<Inflight>,
    /// Blocks of requests that ended while a sync-off step still runs them: freed when that
    /// step's update (or failure) arrives, so no other stream is given them while it writes.
    deferred_free: Vec<(u64, SeqBlocks)>,
    finished_since_output: Vec<RequestId>,
    pending_deltas: Vec<RequestDelta>,
    to_release: Vec<Slot>,
    next_epoch: u64,
    next_step: u64,
    num_swapped: usize,
    stats: SchedulerStats,
}

impl Scheduler {
    /// A scheduler with the policies the config names.
    pub fn new(cfg: SchedulerConfig) -> Result<Self, Error> {
        let capacity = cfg.capacity.build();
        let queue = cfg.queue.build();
        let preemption = cfg.preemption.build(cfg.preemption_cost);
        Self::with_policies(cfg, capacity, queue, preemption)
    }

    /// A scheduler with caller-supplied capacity, queue and preemption policy objects (the
    /// config's kinds for those three are ignored).
    pub fn with_policies(
        cfg: SchedulerConfig,
        capacity: Box<dyn CapacityPolicy>,
        queue: Box<dyn QueuePolicy>,
        preemption: Box<dyn PreemptionPolicy>,
    ) -> Result<Self, Error> {
        cfg.validate()?;
        let kv =
            KvCacheManager::new(cfg.num_gpu_blocks, cfg.num_host_blocks, cfg.block_size, cfg.enable_prefix_caching)
                .with_key_bits(cfg.prefix_key_bits);
        let base_limits = Limits {
            max_num_seqs: cfg.max_num_seqs,
            max_num_batched_tokens: cfg.max_num_batched_tokens,
            long_prefill_token_threshold: cfg.long_prefill_token_threshold,
        };
        let mut s = Self {
            max_len: cfg.effective_max_len(),
            limits: base_limits,
            base_limits,
            capacity,
            queue,
            preemption,
            batching: BatchingKind::Continuous.build(base_limits, cfg.block_size),
            batching_kind: BatchingKind::Continuous,
            streams: cfg.streams,
            draining: false,
            kv,
            slots: Vec::new(),
            free_slots: Vec::new(),
            by_id: FxHashMap::default(),
            waiting: WaitingQueue::default(),
            running: Vec::new(),
            deadlines: BTreeSet::new(),
            inflight: VecDeque::new(),
            deferred_free: Vec::new(),
            finished_since_output: Vec::new(),
            pending_deltas: Vec::new(),
            to_release: Vec::new(),
            next_epoch: 0,
            next_step: 0,
            num_swapped: 0,
            stats: SchedulerStats::default(),
            cfg,
        };
        s.set_batching(s.cfg.batching)?;
        Ok(s)
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    /// The KV cache (read-only), e.g. for usage gauges.
    pub fn kv(&self) -> &KvCacheManager {
        &self.kv
    }

    /// Records the prefix cache's [`KvEvent`]s from now on (`true`) or stops: what routers
    /// that route on exact cache contents subscribe to.
    pub fn record_kv_events(&mut self, on: bool) {
        self.kv.record_events(on);
    }

    /// The prefix-cache events since the last call, oldest first (none unless recording).
    pub fn take_kv_events(&mut self) -> Vec<KvEvent> {
        self.kv.take_events()
    }

    /// Limits in force now.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Keeps `l` within what the config allows (a budget of at least a block, or of the whole
    /// model length when chunking is off; at least one sequence).
    fn sanitize(&self, l: Limits) -> Limits {
        let min_budget = if self.cfg.enable_chunked_prefill {
            self.cfg.block_size
        } else {
            self.cfg.max_model_len.max(self.cfg.block_size)
        };
        Limits {
            max_num_seqs: l.max_num_seqs.max(1),
            max_num_batched_tokens: l.max_num_batched_tokens.max(min_budget),
            long_prefill_token_threshold: l.long_prefill_token_threshold,
        }
    }

    /// Sets the configured limits from the next step on; the active batching strategy derives
    /// the limits in force from them. Lowering `max_num_seqs` preempts nobody: no step serves
    /// more than the new limit, running requests beyond it keep their blocks and take turns, and
    /// none is admitted until the running count is below the limit.
    pub fn set_limits(&mut self, limits: Limits) -> Result<(), Error> {
        let cfg = SchedulerConfig {
            max_num_seqs: limits.max_num_seqs,
            max_num_batched_tokens: limits.max_num_batched_tokens,
            long_prefill_token_threshold: limits.long_prefill_token_threshold,
            ..self.cfg.clone()
        };
        cfg.validate()?;
        self.base_limits = limits;
        self.limits = self.sanitize(self.batching.limits(limits));
        Ok(())
    }

    /// Switches the batching strategy from the next step on (run-time switch).
    pub fn set_batching(&mut self, kind: BatchingKind) -> Result<(), Error> {
        kind.validate()?;
        self.batching = kind.build(self.base_limits, self.cfg.block_size);
        self.batching_kind = kind;
        self.limits = self.sanitize(self.batching.limits(self.base_limits));
        Ok(())
    }

    pub fn batching(&self) -> BatchingKind {
        self.batching_kind
    }

    /// Switches the parallel-stream plan from the next step on.
    pub fn set_streams(&mut self, streams: StreamConfig) -> Result<(), Error> {
        streams.validate()?;
        self.streams = streams;
        Ok(())
    }

    pub fn streams(&self) -> StreamConfig {
        self.streams
    }

    /// Tells batching strategies that no more requests will arrive, so partial batches flush.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// Accepts a request into the waiting queue, or says why not.
    pub fn add_request(&mut self, req: NewRequest) -> Result<(), Error> {
        let id = req.id;
        if self.by_id.contains_key(&id) {
            return Err(Error::DuplicateRequest(id));
        }
        if req.prompt.is_empty() {
            return Err(Error::EmptyPrompt(id));
        }
        if req.params.max_tokens == 0 {
            return Err(Error::ZeroMaxTokens(id));
        }
        let prompt_len = req.prompt.len();
        if prompt_len >= self.cfg.max_model_len {
            return Err(Error::PromptTooLong { id, prompt_len, max_len: self.cfg.max_model_len });
        }
        let pool_blocks = self.cfg.num_gpu_blocks;
        let must_hold = if self.capacity.reserves_to_completion() {
            prompt_len.saturating_add(req.params.max_tokens).min(self.cfg.max_model_len)
        } else {
            prompt_len + 1
        };
        let blocks_needed = self.kv.blocks_for(must_hold);
        if blocks_needed > pool_blocks {
            return Err(Error::NeverFits { id, blocks_needed, pool_blocks });
        }
        let max_len = prompt_len.saturating_add(req.params.max_tokens).min(self.max_len);
        let seq = Seq {
            id,
            epoch: self.next_epoch,
            tokens: req.prompt,
            prompt_len,
            num_computed: 0,
            params: req.params,
            priority: req.priority,
            arrival: req.arrival,
            deadline: req.deadline,
            rank: self.queue.rank(req.priority, req.arrival),
            state: RequestState::Waiting,
            kv: SeqBlocks::salted(req.cache_salt.as_deref()),
            pending_samples: 0,
            started: false,
            prompt_cached: 0,
            max_len,
            kv_generation: 0,
            preempted_at_step: None,
            stream_step: None,
        };
        self.next_epoch += 1;
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as Slot
            }
        };
        self.waiting.insert(seq.wait_key(slot), false);
        if let Some(k) = seq.deadline_key(slot) {
            self.deadlines.insert(k);
        }
        self.by_id.insert(id, slot);
        self.slots[slot as usize] = Some(seq);
        self.stats.requests_added += 1;
        Ok(())
    }

    /// Cancels a request: its blocks are freed at once and it is reported finished
    /// ([`crate::AbortCause::Client`]). The returned delta is its last.
    pub fn abort(&mut self, id: RequestId) -> Result<RequestDelta, Error> {
        self.finish_request(id, FinishReason::Aborted(crate::request::AbortCause::Client))
    }

    /// Ends a request for a reason found outside the core (e.g. the engine matched a stop
    /// string). Blocks are freed at once; the returned delta is its last.
    pub fn finish_request(&mut self, id: RequestId, reason: FinishReason) -> Result<RequestDelta, Error> {
        let slot = *self.by_id.get(&id).ok_or(Error::UnknownRequest(id))?;
        self.finish_seq(slot, reason);
        self.release_finished();
        Ok(RequestDelta { id, token: None, finish: Some(reason) })
    }

    /// Marks a sequence finished and frees everything it holds. Its slot is released (and it
    /// leaves the running list) in [`Self::release_finished`].
    fn finish_seq(&mut self, slot: Slot, reason: FinishReason) {
        let Some(seq) = self.slots[slot as usize].as_mut() else { return };
        if matches!(seq.state, RequestState::Finished(_)) {
            return;
        }
        if seq.state == RequestState::Swapped {
            self.num_swapped -= 1;
        }
        self.waiting.remove(&seq.wait_key(slot), seq.is_resumable());
        if let Some(k) = seq.deadline_key(slot) {
            self.deadlines.remove(&k);
        }
        match seq.stream_step {
            Some(step) => self.deferred_free.push((step, std::mem::take(&mut seq.kv))),
            None => self.kv.free(&mut seq.kv),
        }
        self.kv.free_host(&mut seq.kv);
        let was_running = seq.state == RequestState::Running;
        seq.state = RequestState::Finished(reason);
        self.by_id.remove(&seq.id);
        self.finished_since_output.push(seq.id);
        match reason {
            FinishReason::Stopped(_) | FinishReason::Length => self.stats.requests_finished += 1,
            FinishReason::Aborted(_) => self.stats.requests_aborted += 1,
            FinishReason::Rejected(_) => self.stats.requests_rejected += 1,
        }
        if !was_running {
            self.slots[slot as usize] = None;
            self.free_slots.push(slot);
        } else {
            self.to_release.push(slot);
        }
    }

    /// Drops finished sequences from the running list and frees their slots.
    fn release_finished(&mut self) {
        if self.to_release.is_empty() {
            return;
        }
        let slots = &self.slots;
        self.running.retain(|&s| slots[s as usize].as_ref().is_some_and(|q| q.state == RequestState::Running));
        for s in self.to_release.drain(..) {
            self.slots[s as usize] = None;
            self.free_slots.push(s);
        }
    }

    fn seq(&self, slot: Slot) -> &Seq {
        self.slots[slot as usize].as_ref().expect("live slot")
    }

    /// Where a request is in its lifecycle (`None` once finished and reported).
    pub fn state(&self, id: RequestId) -> Option<RequestState> {
        self.by_id.get(&id).map(|&s| self.seq(s).state)
    }

    /// A live request's known tokens so far: prompt then output.
    pub fn tokens(&self, id: RequestId) -> Option<&[TokenId]> {
        self.by_id.get(&id).map(|&s| self.seq(s).tokens.as_slice())
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Prompt tokens of live request `id` served from the prefix cache when it was first
    /// admitted; `None` for an unknown request or one not admitted yet.
    pub fn prompt_cached_tokens(&self, id: RequestId) -> Option<usize> {
        let seq = self.slots.get(*self.by_id.get(&id)? as usize)?.as_ref()?;
        seq.started.then_some(seq.prompt_cached)
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    /// Requests accepted and not yet finished.
    pub fn num_unfinished(&self) -> usize {
        self.by_id.len()
    }

    /// Steps scheduled whose update has not arrived.
    pub fn num_inflight(&self) -> usize {
        self.inflight.len()
    }

    /// A snapshot of gauges and counters.
    pub fn stats(&self) -> SchedulerStats {
        let pool = self.kv.pool();
        let host = self.kv.host();
        SchedulerStats {
            waiting: self.waiting.len(),
            running: self.running.len(),
            swapped: self.num_swapped,
            block_size: self.cfg.block_size,
            kv_blocks_total: pool.num_blocks(),
            kv_blocks_used: pool.num_used(),
            kv_blocks_cached: pool.num_cached(),
            host_blocks_total: host.num_blocks(),
            host_blocks_used: host.num_blocks() - host.num_free(),
            max_num_seqs: self.limits.max_num_seqs,
            max_num_batched_tokens: self.limits.max_num_batched_tokens,
            preemption_cost: self.preemption.cost(),
            prefill_backlog_tokens: self.prefill_backlog(),
            decoding: self
                .running
                .iter()
                .filter(|&&slot| self.seq(slot).tokens.len() <= self.seq(slot).num_computed + 1)
                .count(),
            ..self.stats.clone()
        }
    }

    /// Prompt (or recompute) tokens not yet fed, of every request waiting, preempted or
    /// running: the prefill work queued ahead of a new request (for admission by predicted
    /// wait). A decoding request's one pending token is not prefill.
    pub fn prefill_backlog(&self) -> usize {
        self.slots
            .iter()
            .flatten()
            .filter(|q| matches!(q.state, RequestState::Waiting | RequestState::Preempted | RequestState::Running))
            .map(|q| q.tokens.len().saturating_sub(q.num_computed))
            .filter(|&n| n > 1)
            .sum()
    }

    /// True when no request is live (nothing waits, runs or is swapped).
    pub fn is_idle(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests;
