//! The scheduler: a deterministic state machine over requests and the paged KV cache.
//!
//! Driven like raft-rs's `RawNode`: the caller adds and aborts requests, calls
//! [`Scheduler::schedule`] with the current time to get a [`SchedulerOutput`], runs it, and
//! hands the result to [`Scheduler::update`], which returns per-request deltas. No threads, no
//! clock, no I/O. Every `schedule` must be answered by exactly one `update`, in order; several
//! may be in flight (vLLM's async scheduling), in which case a request waiting for its sampled
//! token is skipped until that token arrives.
//!
//! One rule for all phases (vLLM v1): each request's computed tokens catch up with its known
//! tokens under one per-step token budget, so prefill, chunked prefill and decode are the same
//! operation. See `step.rs` for the step and `update.rs` for applying results.

mod invariants;
mod seq;
mod step;
mod update;

use std::collections::{BTreeSet, VecDeque};

use rustc_hash::FxHashMap;

use crate::config::SchedulerConfig;
use crate::error::Error;
use crate::kv::{KvCacheManager, SeqBlocks};
use crate::policy::{CapacityPolicy, PreemptionPolicy, QueuePolicy};
use crate::request::{FinishReason, NewRequest, RequestDelta, RequestState};
use crate::stats::SchedulerStats;
use crate::types::{RequestId, Time, TokenId};

use seq::{Seq, Slot, WaitKey};

/// The steps scheduled but not yet updated, with the slots they refer to.
#[derive(Debug)]
struct Inflight {
    step: u64,
    /// Aligned with the output's `seqs`: (slot, epoch, kv_generation) at schedule time.
    entries: Vec<(Slot, u64, u32)>,
}

/// The scheduler state machine. See the module docs.
#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    max_len: usize,
    max_num_seqs: usize,
    max_num_batched_tokens: usize,
    capacity: Box<dyn CapacityPolicy>,
    queue: Box<dyn QueuePolicy>,
    preemption: Box<dyn PreemptionPolicy>,
    kv: KvCacheManager,
    slots: Vec<Option<Seq>>,
    free_slots: Vec<Slot>,
    by_id: FxHashMap<RequestId, Slot>,
    waiting: BTreeSet<WaitKey>,
    /// Running slots in admission order (the order the running loop serves them).
    running: Vec<Slot>,
    deadlines: BTreeSet<(Time, u64, Slot)>,
    inflight: VecDeque<Inflight>,
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

    /// A scheduler with caller-supplied policy objects (the config's policy kinds are ignored).
    pub fn with_policies(
        cfg: SchedulerConfig,
        capacity: Box<dyn CapacityPolicy>,
        queue: Box<dyn QueuePolicy>,
        preemption: Box<dyn PreemptionPolicy>,
    ) -> Result<Self, Error> {
        cfg.validate()?;
        let kv =
            KvCacheManager::new(cfg.num_gpu_blocks, cfg.num_host_blocks, cfg.block_size, cfg.enable_prefix_caching);
        Ok(Self {
            max_len: cfg.effective_max_len(),
            max_num_seqs: cfg.max_num_seqs,
            max_num_batched_tokens: cfg.max_num_batched_tokens,
            capacity,
            queue,
            preemption,
            kv,
            slots: Vec::new(),
            free_slots: Vec::new(),
            by_id: FxHashMap::default(),
            waiting: BTreeSet::new(),
            running: Vec::new(),
            deadlines: BTreeSet::new(),
            inflight: VecDeque::new(),
            finished_since_output: Vec::new(),
            pending_deltas: Vec::new(),
            to_release: Vec::new(),
            next_epoch: 0,
            next_step: 0,
            num_swapped: 0,
            stats: SchedulerStats::default(),
            cfg,
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    /// The KV cache (read-only), e.g. for usage gauges.
    pub fn kv(&self) -> &KvCacheManager {
        &self.kv
    }

    /// Current batch-size and token-budget limits.
    pub fn limits(&self) -> (usize, usize) {
        (self.max_num_seqs, self.max_num_batched_tokens)
    }

    /// Changes the batch-size and token-budget limits from the next step on (adaptive batching).
    /// Lowering `max_num_seqs` preempts nobody: no step serves more than the new limit, the
    /// running requests beyond it keep their blocks and take turns, and no new one is admitted
    /// until the running count is below the limit.
    pub fn set_limits(&mut self, max_num_seqs: usize, max_num_batched_tokens: usize) -> Result<(), Error> {
        let cfg = SchedulerConfig { max_num_seqs, max_num_batched_tokens, ..self.cfg.clone() };
        cfg.validate()?;
        self.max_num_seqs = max_num_seqs;
        self.max_num_batched_tokens = max_num_batched_tokens;
        Ok(())
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
            kv: SeqBlocks::default(),
            pending_sample: false,
            started: false,
            max_len,
            kv_generation: 0,
            preempted_at_step: None,
        };
        self.next_epoch += 1;
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as Slot
            }
        };
        self.waiting.insert(seq.wait_key(slot));
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
        match seq.state {
            RequestState::Finished(_) => return,
            RequestState::Swapped => self.num_swapped -= 1,
            _ => {}
        }
        let key = seq.wait_key(slot);
        self.waiting.remove(&key);
        if let Some(k) = seq.deadline_key(slot) {
            self.deadlines.remove(&k);
        }
        self.kv.free(&mut seq.kv);
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

    /// A live request's tokens so far: prompt then output.
    pub fn tokens(&self, id: RequestId) -> Option<&[TokenId]> {
        self.by_id.get(&id).map(|&s| self.seq(s).tokens.as_slice())
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
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
            kv_blocks_total: pool.num_blocks(),
            kv_blocks_used: pool.num_used(),
            kv_blocks_cached: pool.num_cached(),
            host_blocks_total: host.num_blocks(),
            host_blocks_used: host.num_blocks() - host.num_free(),
            ..self.stats.clone()
        }
    }

    /// True when no request is live (nothing waits, runs or is swapped).
    pub fn is_idle(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests;
