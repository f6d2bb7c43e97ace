//! One scheduling step: expire deadlines, serve running requests, admit waiting ones, split the
//! step into micro-batches, emit the [`SchedulerOutput`].
//!
//! As vLLM v1's `Scheduler.schedule`: running requests are served first, in admission order,
//! each getting `min(remaining, threshold, budget)` tokens. When a running request cannot get
//! a block, the worst-ranked running request (lowest priority, then latest arrival) is preempted
//! until it can, or until it is the victim itself. Then, unless a preemption happened for KV
//! pressure, waiting requests are admitted in queue order while the batch has room, the budget
//! lasts, the batching strategy's quota lasts and the capacity policy agrees. Under the
//! `Priority` queue policy a waiting request that cannot be admitted may preempt a running
//! request of strictly lower priority that it also outranks (aged priority), so it cannot be
//! starved by it nor thrash with it.

use std::mem;

use super::seq::{Slot, WaitKey};
use super::{Inflight, Scheduler};
use crate::kv::{PrefixHit, SeqBlocks};
use crate::output::{ScheduledSeq, SchedulerOutput, PLACEHOLDER_TOKEN};
use crate::policy::{AdmissionView, BatchView, PreemptionMode, VictimView};
use crate::request::{AbortCause, FinishReason, RejectReason, RequestDelta, RequestState};
use crate::streams::assign_streams;
use crate::types::{BlockId, HostBlockId, RequestId, Time};

/// How many non-joining candidates a coalescing step skips before it stops looking.
const COALESCE_SCAN: usize = 64;

/// What the step has decided so far.
#[derive(Debug, Default)]
pub(super) struct Plan {
    /// (slot, tokens to feed, is a prefill, leaves the prompt partly fed) in output order.
    entries: Vec<(Slot, usize, bool, bool)>,
    budget: usize,
    /// Most sequences the step may take.
    max_entries: usize,
    /// What a sync-off stream step may take (`None`: a synchronised step takes anything).
    pick: Option<Pick>,
    /// Estimated cost ([`crate::streams::cost_of`]) of the entries so far.
    cost: f64,
    /// Prefill tokens of the entries so far.
    prefill_tokens: usize,
    /// Entries whose prompt is still partly fed after this step (a chunk, not its end).
    partial_prefills: usize,
    swap_out: Vec<(BlockId, HostBlockId)>,
    swap_in: Vec<(HostBlockId, BlockId)>,
    preempted: Vec<RequestId>,
    /// Sync-off steps: blocks this step copies from or to, freed when it completes.
    held: Vec<SeqBlocks>,
    /// A running request was preempted for lack of blocks: admit nothing this step.
    kv_pressure: bool,
}

/// The share of the runnable work a sync-off step for one stream takes (`stream_step.rs`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Pick {
    /// May take prefill chunks (and admit waiting requests).
    pub prefill: bool,
    /// May take decodes.
    pub decode: bool,
    /// Budget a prefill chunk must leave for the decodes other streams will run meanwhile.
    pub reserve: usize,
    /// Stop adding decodes once the step's estimated cost reaches this.
    pub max_cost: f64,
    /// Most prefill tokens the step may take, each from a request whose prompt left fits
    /// whole (a decode stream's short prompts); `usize::MAX`: no limit.
    pub max_prefill: usize,
}

impl Pick {
    /// Any work, decodes up to `max_cost`.
    pub(super) fn anything(max_cost: f64) -> Self {
        Self { prefill: true, decode: true, reserve: 0, max_cost, max_prefill: usize::MAX }
    }
}

impl Plan {
    pub(super) fn new(budget: usize, max_entries: usize, pick: Option<Pick>) -> Self {
        Self { budget, max_entries, pick, ..Self::default() }
    }

    fn push(&mut self, slot: Slot, n: usize, remaining: usize, start_pos: usize) {
        let (prefill, partial) = (remaining > 1, remaining > 1 && n < remaining);
        self.entries.push((slot, n, prefill, partial));
        self.budget -= n;
        self.partial_prefills += partial as usize;
        self.prefill_tokens += if prefill { n } else { 0 };
        self.cost += crate::streams::cost_of(n, start_pos);
    }

    /// Whether the step's pick lets it take one more sequence of this kind (the batch size is
    /// checked apart: a full batch is room a preemption may make).
    fn takes(&self, prefill: bool) -> bool {
        match self.pick {
            None => true,
            // A short-prompt allowance (decode streams) is apart from the cost share.
            Some(p) if prefill && p.max_prefill != usize::MAX => p.prefill && self.prefill_tokens < p.max_prefill,
            Some(p) if prefill => p.prefill && (self.entries.is_empty() || self.cost < p.max_cost),
            Some(p) => p.decode && (self.entries.is_empty() || self.cost < p.max_cost),
        }
    }

    /// Whether a prefill of `remaining` tokens is within the pick's prefill limit (it must fit
    /// whole when there is one).
    fn fits_prefill(&self, remaining: usize) -> bool {
        self.pick.is_none_or(|p| p.max_prefill == usize::MAX || self.prefill_tokens + remaining <= p.max_prefill)
    }

    /// Takes back `slot`'s entry, if it has one, returning its budget.
    fn unschedule(&mut self, slot: Slot) {
        if let Some(i) = self.entries.iter().position(|e| e.0 == slot) {
            let (_, n, prefill, partial) = self.entries.remove(i);
            self.budget += n;
            self.partial_prefills -= partial as usize;
            self.prefill_tokens -= if prefill { n } else { 0 };
            self.cost = (self.cost - n as f64).max(0.0); // the context term stays: an estimate
        }
    }
}

/// Outcome of trying to admit a waiting request.
enum Admission {
    Admitted,
    /// Not enough room (blocks, batch size, or the capacity policy said no): preemption may help.
    NoRoom,
    /// Blocked for a reason preemption cannot fix (budget, partial-prefill limit, pending sample).
    NotNow,
}

impl Scheduler {
    /// Decides the next step's work at time `now`. Must be answered by [`Scheduler::update`]
    /// (or [`Scheduler::fail_step`]).
    pub fn schedule(&mut self, now: Time) -> SchedulerOutput {
        self.expire_deadlines(now);
        let step = self.next_step;
        self.next_step += 1;
        let (budget, max_entries) = self.room_left();
        let plan = Plan::new(budget, max_entries, None);
        self.plan_step(plan, step, now, None)
    }

    /// Runs `plan` through the running list and the waiting queue and emits the step.
    pub(super) fn plan_step(&mut self, mut plan: Plan, step: u64, now: Time, stream: Option<usize>) -> SchedulerOutput {
        let running_at_step_start = self.running.len();
        self.schedule_running(&mut plan, step);
        if !plan.kv_pressure && plan.pick.is_none_or(|p| p.prefill) {
            self.admit_waiting(&mut plan, step, now, running_at_step_start);
        }
        let device_idle = !self.inflight.iter().any(|f| f.busy);
        if plan.entries.is_empty() && plan.pick.is_some() && device_idle {
            // The stream's share was empty and no stream is busy: take anything.
            plan.pick = Some(Pick::anything(f64::INFINITY));
            self.schedule_running(&mut plan, step);
            if !plan.kv_pressure {
                self.admit_waiting(&mut plan, step, now, running_at_step_start);
            }
        }
        self.materialize(plan, step, stream)
    }

    /// The token budget and batch size a new step may still use: the limits less what the
    /// sync-off steps in flight hold (together they never exceed one budget).
    pub(super) fn room_left(&self) -> (usize, usize) {
        let (tokens, seqs) = self.inflight_load();
        (self.limits.max_num_batched_tokens.saturating_sub(tokens), self.limits.max_num_seqs.saturating_sub(seqs))
    }

    /// Tokens and sequences of the sync-off steps in flight.
    pub(super) fn inflight_load(&self) -> (usize, usize) {
        let stream_steps = self.inflight.iter().filter(|f| f.stream.is_some());
        stream_steps.fold((0, 0), |(t, s), f| (t + f.tokens, s + f.entries.len()))
    }

    /// Tokens to feed a request with `remaining` uncomputed tokens, or `None` if it cannot run
    /// in this step under the chunking rules.
    fn chunk(&self, remaining: usize, plan: &Plan) -> Option<usize> {
        if remaining == 0 || plan.budget == 0 {
            return None;
        }
        let prefill = remaining > 1;
        // A sync-off prefill chunk leaves room for the decodes the other streams run meanwhile.
        let reserve = if prefill { plan.pick.map_or(0, |p| p.reserve) } else { 0 };
        let budget = plan.budget.saturating_sub(reserve);
        if budget == 0 {
            return None;
        }
        if !self.cfg.enable_chunked_prefill {
            return (remaining <= budget).then_some(remaining);
        }
        let mut n = remaining;
        if self.limits.long_prefill_token_threshold > 0 {
            n = n.min(self.limits.long_prefill_token_threshold);
        }
        let n = n.min(budget);
        // At most `max_num_partial_prefills` prompts left part-fed by a step (vLLM's
        // concurrent partial prefills); prompts that finish in it are bounded by the budget.
        if prefill && n < remaining && plan.partial_prefills >= self.cfg.max_num_partial_prefills {
            return None;
        }
        Some(n)
    }

    /// Tokens a running request could be fed now: its known tokens not yet computed. With one
    /// sample in flight, only a one-token placeholder decode, and only if the request cannot
    /// end by length on the pending token.
    pub(super) fn running_remaining(&self, slot: Slot) -> usize {
        let seq = self.seq(slot);
        let remaining = seq.num_known() - seq.num_computed;
        match seq.pending_samples {
            0 => remaining,
            1 if remaining == 1 && seq.num_known() < seq.max_len && !seq.params.structured => 1,
            _ => 0,
        }
    }

    fn schedule_running(&mut self, plan: &mut Plan, step: u64) {
        let mut i = 0;
        // After `set_limits` lowers the batch size, more may be running than one step serves.
        while i < self.running.len() && plan.budget > 0 && plan.entries.len() < plan.max_entries {
            let slot = self.running[i];
            let remaining = self.running_remaining(slot);
            let in_flight = self.seq(slot).stream_step.is_some();
            let prefill = remaining > 1;
            let allowed = plan.takes(prefill) && (!prefill || plan.fits_prefill(remaining));
            let chunk = if in_flight || !allowed { None } else { self.chunk(remaining, plan) };
            let Some(n) = chunk else {
                i += 1;
                continue;
            };
            let total = self.seq(slot).num_computed + n;
            loop {
                let seq = self.slots[slot as usize].as_mut().expect("running slot");
                if self.kv.allocate_slots(&mut seq.kv, &[], total).is_some() {
                    plan.push(slot, n, remaining, total - n);
                    i += 1;
                    break;
                }
                if !self.capacity.may_preempt() {
                    i += 1; // cannot happen under a reserving policy; skip rather than stall
                    break;
                }
                let Some((victim, victim_idx)) = self.worst_running() else { break };
                self.preempt(victim, plan, step);
                plan.kv_pressure = true;
                if victim == slot {
                    break; // the list shifted: running[i] is already the next request
                }
                if victim_idx < i {
                    i -= 1;
                }
            }
        }
    }

    fn admit_waiting(&mut self, plan: &mut Plan, step: u64, now: Time, running_at_step_start: usize) {
        let view = BatchView {
            now,
            running: self.running.len(),
            waiting: self.waiting.len(),
            resumable_waiting: self.waiting.resumable(),
            oldest_arrival: self.waiting.oldest_arrival(),
            draining: self.draining,
        };
        let Some(quota) = self.batching.admission(&view) else { return };
        let mut reserved: Option<usize> = None;
        let mut admitted = 0usize;
        let mut anchor: Option<usize> = None;
        let mut cursor: Option<WaitKey> = None;
        let mut skipped = 0usize;
        while plan.budget > 0 && admitted < quota && plan.takes(true) {
            let Some(cand) = self.waiting.next_after(cursor) else { break };
            let prompt_len = self.seq(cand.slot).prompt_len;
            let too_long = !plan.fits_prefill(self.seq(cand.slot).tokens.len());
            if too_long || anchor.is_some_and(|a| !self.batching.joins(a, prompt_len)) {
                skipped += 1;
                if skipped > COALESCE_SCAN {
                    break;
                }
                cursor = Some(cand);
                continue;
            }
            let outcome = if self.running.len() >= self.limits.max_num_seqs || plan.entries.len() >= plan.max_entries {
                Admission::NoRoom
            } else {
                self.try_admit(cand.slot, plan, step, running_at_step_start, &mut reserved)
            };
            match outcome {
                Admission::Admitted => {
                    admitted += 1;
                    anchor.get_or_insert(prompt_len);
                }
                Admission::NotNow => break,
                Admission::NoRoom => {
                    if !self.preempt_for_priority(cand.slot, plan, step) {
                        break;
                    }
                    reserved = None;
                }
            }
        }
        self.batching.admitted(admitted);
        if admitted > 0 && running_at_step_start == 0 {
            self.stats.batches_formed += 1;
        }
    }

    /// Blocks the running requests may still take before they finish.
    pub(super) fn reserved_blocks(&self) -> usize {
        self.running
            .iter()
            .map(|&s| {
                let q = self.seq(s);
                self.kv.blocks_for(q.max_len).saturating_sub(q.kv.blocks().len())
            })
            .sum()
    }

    fn try_admit(
        &mut self,
        slot: Slot,
        plan: &mut Plan,
        step: u64,
        running_at_step_start: usize,
        reserved: &mut Option<usize>,
    ) -> Admission {
        let seq = self.seq(slot);
        if seq.pending_samples > 0 || seq.preempted_at_step == Some(step) {
            return Admission::NotNow;
        }
        let swapped = seq.state == RequestState::Swapped;
        // A fresh or recomputed request may reuse cached prefix blocks.
        let hit = if swapped {
            PrefixHit::default()
        } else {
            let seq = self.slots[slot as usize].as_mut().expect("waiting slot");
            self.kv.find_prefix(&mut seq.kv, &seq.tokens)
        };
        let seq = self.seq(slot);
        let computed = if swapped { seq.num_computed } else { hit.num_tokens };
        let remaining = seq.tokens.len() - computed;
        let Some(n) = self.chunk(remaining, plan) else { return Admission::NotNow };
        let total = computed + n;
        let (blocks_now, blocks_to_completion) = if swapped {
            // Swap-in restores every host block, which may be more than `total` needs (a
            // victim can be swapped with a block allocated for a chunk that never ran).
            let held = seq.kv.host_blocks().len();
            (held.max(self.kv.blocks_for(total)), held.max(self.kv.blocks_for(seq.max_len)))
        } else {
            (
                self.kv.blocks_needed(&seq.kv, &hit.blocks, total),
                self.kv.blocks_needed(&seq.kv, &hit.blocks, seq.max_len),
            )
        };
        let reserved_now = if self.capacity.reserves_to_completion() {
            *reserved.get_or_insert_with(|| self.reserved_blocks())
        } else {
            0
        };
        let view = AdmissionView {
            running_at_step_start,
            free_blocks: self.kv.num_free(),
            reserved_blocks: reserved_now,
            blocks_now,
            blocks_to_completion,
        };
        if !self.capacity.admits(&view) || blocks_now > self.kv.num_free() {
            return Admission::NoRoom;
        }
        let prompt_len = seq.tokens.len();
        let key = seq.wait_key(slot);
        let resumable = seq.is_resumable();
        let seq = self.slots[slot as usize].as_mut().expect("waiting slot");
        let ok = if swapped {
            self.kv.swap_in(&mut seq.kv, &mut plan.swap_in) && self.kv.allocate_slots(&mut seq.kv, &[], total).is_some()
        } else {
            seq.num_computed = hit.num_tokens;
            if !seq.started {
                seq.prompt_cached = hit.num_tokens;
            }
            self.stats.prefix_cache_queries += prompt_len as u64;
            self.stats.prefix_cache_hits += hit.num_tokens as u64;
            self.stats.prefix_cache_rejections += u64::from(hit.rejected);
            self.kv.allocate_slots(&mut seq.kv, &hit.blocks, total).is_some()
        };
        debug_assert!(ok, "room was checked");
        if swapped {
            self.num_swapped -= 1;
        }
        seq.state = RequestState::Running;
        seq.started = true;
        self.waiting.remove(&key, resumable);
        self.running.push(slot);
        plan.push(slot, n, remaining, computed);
        if let Some(r) = reserved.as_mut() {
            *r += blocks_to_completion - blocks_now;
        }
        Admission::Admitted
    }

    /// The running request to preempt first, and its index in the running list (never one a
    /// sync-off step in flight is running).
    fn worst_running(&self) -> Option<(Slot, usize)> {
        self.running
            .iter()
            .enumerate()
            .filter(|(_, &s)| self.seq(s).stream_step.is_none())
            .max_by_key(|(_, &s)| self.seq(s).victim_key())
            .map(|(i, &s)| (s, i))
    }

    /// Preempts the worst running request for the waiting `cand`, if the queue policy allows
    /// and the victim has strictly lower priority and a worse rank. Returns whether it did.
    fn preempt_for_priority(&mut self, cand: Slot, plan: &mut Plan, step: u64) -> bool {
        if !self.queue.preempts_for_priority() || !self.capacity.may_preempt() {
            return false;
        }
        let Some((victim, _)) = self.worst_running() else { return false };
        let (c, v) = (self.seq(cand), self.seq(victim));
        if v.priority < c.priority && v.victim_key() > c.victim_key() {
            self.preempt(victim, plan, step);
            true
        } else {
            false
        }
    }

    /// Moves a running request back to the waiting queue, dropping or swapping its blocks.
    fn preempt(&mut self, slot: Slot, plan: &mut Plan, step: u64) {
        plan.unschedule(slot);
        if let Some(i) = self.running.iter().position(|&s| s == slot) {
            self.running.remove(i);
        }
        let host_free_blocks = self.kv.host().num_free();
        let seq = self.slots[slot as usize].as_mut().expect("running slot");
        let view = VictimView { computed_tokens: seq.num_computed, blocks: seq.kv.blocks().len(), host_free_blocks };
        let swapped = self.preemption.choose(&view) == PreemptionMode::Swap
            && match plan.pick.is_some() {
                // Sync off: the copy runs while other streams' steps are planned, so the
                // blocks stay taken until this step is back.
                true => match self.kv.swap_out_held(&mut seq.kv, &mut plan.swap_out) {
                    Some(held) => {
                        plan.held.push(held);
                        true
                    }
                    None => false,
                },
                false => self.kv.swap_out(&mut seq.kv, &mut plan.swap_out),
            };
        if swapped {
            seq.state = RequestState::Swapped;
            self.num_swapped += 1;
            self.stats.preemptions_swap += 1;
        } else {
            self.kv.free(&mut seq.kv);
            seq.num_computed = 0;
            seq.state = RequestState::Preempted;
            self.stats.preemptions_recompute += 1;
        }
        seq.kv_generation = seq.kv_generation.wrapping_add(1);
        seq.preempted_at_step = Some(step);
        plan.preempted.push(seq.id);
        self.waiting.insert(seq.wait_key(slot), true);
    }

    /// Ends requests whose deadline has passed; their deltas go out with the next update.
    pub(super) fn expire_deadlines(&mut self, now: Time) {
        while let Some(&(deadline, epoch, slot)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            let Some(seq) = self.slots[slot as usize].as_ref().filter(|q| q.epoch == epoch) else { continue };
            let reason = if seq.started {
                FinishReason::Aborted(AbortCause::Deadline)
            } else {
                FinishReason::Rejected(RejectReason::DeadlineExceeded)
            };
            let id = seq.id;
            self.finish_seq(slot, reason);
            self.pending_deltas.push(RequestDelta { id, token: None, finish: Some(reason) });
        }
        self.release_finished();
    }

    /// Advances the planned requests' computed counts, splits the step over streams and writes
    /// the output.
    fn materialize(&mut self, plan: Plan, step: u64, stream: Option<usize>) -> SchedulerOutput {
        let num_batched_tokens = plan.entries.iter().map(|e| e.1).sum();
        let mut out = SchedulerOutput {
            step,
            seqs: Vec::with_capacity(plan.entries.len()),
            token_ids: Vec::with_capacity(num_batched_tokens),
            swap_out: plan.swap_out,
            swap_in: plan.swap_in,
            preempted: plan.preempted,
            finished: mem::take(&mut self.finished_since_output),
            num_batched_tokens,
            stream,
            ..SchedulerOutput::default()
        };
        let mut entries = Vec::with_capacity(plan.entries.len());
        for &(slot, n, ..) in &plan.entries {
            let seq = self.slots[slot as usize].as_mut().expect("planned slot");
            let start = seq.num_computed;
            let known = seq.num_known();
            seq.num_computed += n;
            let sample = seq.num_computed == known;
            let placeholder = start + n > seq.tokens.len();
            seq.pending_samples += sample as u8;
            let t0 = out.token_ids.len();
            if placeholder {
                out.token_ids.push(PLACEHOLDER_TOKEN);
                self.stats.placeholder_tokens += 1;
            } else {
                out.token_ids.extend_from_slice(&seq.tokens[start..start + n]);
            }
            let c0 = out.token_ids.len();
            if !placeholder && start > 0 && seq.params.sampler.has_penalties() {
                out.token_ids.extend_from_slice(&seq.tokens[..start]);
            }
            let context = c0..out.token_ids.len();
            let b0 = out.block_ids.len();
            out.block_ids.extend_from_slice(seq.kv.blocks());
            let generated = known - seq.prompt_len;
            let n0 = out.banned_ids.len();
            if sample && generated < seq.params.min_tokens {
                if !seq.params.ignore_eos {
                    out.banned_ids.extend_from_slice(&self.cfg.eos_token_ids);
                }
                out.banned_ids.extend_from_slice(&seq.params.stop_token_ids);
            }
            let banned = n0..out.banned_ids.len();
            let l0 = out.logit_bias.len();
            if sample {
                out.logit_bias.extend_from_slice(&seq.params.logit_bias);
            }
            let bias = l0..out.logit_bias.len();
            out.seqs.push(ScheduledSeq {
                id: seq.id,
                tokens: t0..t0 + n,
                start_pos: start,
                blocks: b0..out.block_ids.len(),
                sample,
                sampler: seq.params.sampler,
                num_generated: generated,
                feeds_last_sample: placeholder,
                context,
                banned,
                bias,
                allowed: 0..0,
            });
            if stream.is_some() {
                seq.stream_step = Some(step);
            }
            entries.push((slot, seq.epoch, seq.kv_generation));
        }
        match stream {
            Some(s) if !out.seqs.is_empty() => {
                out.micro_batches = vec![0..0; s];
                out.micro_batches.push(0..out.seqs.len());
            }
            Some(_) => {}
            None => self.split_into_micro_batches(&mut out, &mut entries),
        }
        let busy = !out.is_empty();
        self.inflight.push_back(Inflight { step, stream, busy, tokens: num_batched_tokens, entries });
        if stream.is_some() {
            for held in plan.held {
                self.deferred_free.push((step, held));
            }
            let released = self.kv.take_released_host();
            if !released.host_blocks().is_empty() {
                self.deferred_free.push((step, released));
            }
        }
        self.kv.end_step();
        self.stats.steps += 1;
        self.stats.last_batch_size = out.seqs.len();
        self.stats.last_num_batched_tokens = out.num_batched_tokens;
        out
    }

    /// Groups the sequences by stream (stable within a stream) and records the ranges.
    fn split_into_micro_batches(&self, out: &mut SchedulerOutput, entries: &mut Vec<(Slot, u64, u32)>) {
        if out.seqs.is_empty() {
            return;
        }
        let streams = assign_streams(&out.seqs, &self.streams);
        let n = if streams.iter().all(|&s| s == 0) { 1 } else { self.streams.num_streams };
        if n == 1 {
            out.micro_batches.push(0..out.seqs.len());
            return;
        }
        let mut order: Vec<usize> = (0..out.seqs.len()).collect();
        order.sort_by_key(|&i| streams[i]);
        out.seqs = order.iter().map(|&i| out.seqs[i].clone()).collect();
        *entries = order.iter().map(|&i| entries[i]).collect();
        let mut start = 0;
        for s in 0..n {
            let len = streams.iter().filter(|&&x| x == s).count();
            out.micro_batches.push(start..start + len);
            start += len;
        }
    }
}
