//! Streams without synchronisation (`sync=off`): each execution stream is given its next step
//! as soon as it is free, planned from the requests no other stream is running, without waiting
//! for the slowest stream — typically decodes keep stepping on one stream while a long prefill
//! chunk runs on the other (seed 000's parallel streams with `synchronize=False`; NanoFlow's
//! overlap of compute-bound and memory-bound work, done by the scheduler rather than inside one
//! kernel launch).
//!
//! The rules that keep it exact:
//! - a sequence is in at most one step in flight (`Seq::stream_step`), so its tokens never
//!   depend on the stream plan, and a stream step's update may come back in any order;
//! - the steps in flight together never feed more than one `max_num_batched_tokens` budget nor
//!   more than `max_num_seqs` sequences ([`Scheduler::room_left`]);
//! - a request in flight is never a preemption victim, and the blocks of one that ends while in
//!   flight are freed only when its step comes back (`deferred_free`), so no other stream is
//!   handed a block that is still being written.
//!
//! What a free stream takes ([`Pick`]):
//! - `Smart` (without fusion): the first half of the streams are prefill streams — prefill
//!   chunks and admissions, each chunk leaving one token of budget per decode waiting to run
//!   (and room for one short prompt) — and take a share of the decodes only when there is no
//!   prefill work; the others are decode streams: their decodes plus short prompts (at most an
//!   eighth of the budget, admitted whole), and any prefill work while nothing decodes anywhere
//!   (the first prompts). Long prompts never delay a decode stream.
//! - `RoundRobin`: anything, up to its share by count of the runnable work (runnable requests
//!   over free streams, rounded up), so free streams split the work evenly.
//! - `Balanced`: anything, up to its share of the runnable work's estimated cost
//!   ([`crate::streams::estimated_cost`]).
//!
//! With fewer runnable requests than `min_requests_for_parallel`, only stream 0 is given work,
//! and all of it. A stream whose share comes out empty while no other stream is busy (say, a
//! prefill stream whose waiting requests the batching strategy does not admit yet) takes
//! anything instead: the streams never sit idle on work a single stream would have run.

use super::step::{Pick, Plan};
use super::Scheduler;
use crate::output::SchedulerOutput;
use crate::request::RequestState;
use crate::streams::{cost_of, StreamAssignment};
use crate::types::Time;

/// The runnable work no stream is running: decodes and prefills of running requests, and the
/// waiting requests that could be admitted.
#[derive(Debug, Default)]
struct Runnable {
    decodes: usize,
    decode_cost: f64,
    prefills: usize,
    prefill_cost: f64,
    waiting: usize,
    /// Some running request is decoding, here or in flight.
    decoding_anywhere: bool,
    /// A waiting request's prompt is short enough for a decode stream.
    short_waiting: bool,
}

impl Runnable {
    fn count(&self) -> usize {
        self.decodes + self.prefills + self.waiting
    }
    fn has_prefill_work(&self) -> bool {
        self.prefills + self.waiting > 0
    }
}

impl Scheduler {
    /// Sync off: plans the next step of stream `stream`, which must have no step in flight (a
    /// busy or unknown stream gets an empty step). Like [`Scheduler::schedule`] it must be
    /// answered by [`Scheduler::update`] or [`Scheduler::fail_step`], but in any order relative
    /// to other streams' steps.
    pub fn schedule_stream(&mut self, now: Time, stream: usize) -> SchedulerOutput {
        self.expire_deadlines(now);
        let step = self.next_step;
        self.next_step += 1;
        let (budget, max_entries) = self.room_left();
        let plan = match self.stream_pick(stream) {
            Some(pick) => Plan::new(budget, max_entries, Some(pick)),
            None => Plan::new(0, 0, None),
        };
        self.plan_step(plan, step, now, Some(stream))
    }

    /// Whether `stream` has no sync-off step in flight.
    pub fn stream_is_free(&self, stream: usize) -> bool {
        !self.inflight.iter().any(|f| f.busy && f.stream == Some(stream))
    }

    /// What a step for free stream `stream` may take now (see the module docs); `None` when
    /// it should take nothing.
    fn stream_pick(&self, stream: usize) -> Option<Pick> {
        let cfg = self.streams;
        let n = cfg.num_streams.max(1);
        if stream >= n || !self.stream_is_free(stream) {
            return None;
        }
        let work = self.runnable();
        if work.count() == 0 {
            return None;
        }
        let anything = Pick::anything;
        if work.count() + self.inflight_load().1 < cfg.min_requests_for_parallel {
            // Too little to go parallel: stream 0 alone, taking everything.
            return (stream == 0).then_some(anything(f64::INFINITY));
        }
        let free: Vec<usize> = (0..n).filter(|&s| self.stream_is_free(s)).collect();
        let total_cost = work.decode_cost + work.prefill_cost;
        let pick = match cfg.assignment {
            StreamAssignment::Smart if !cfg.context_generation_fusion && n >= 2 => {
                let split = n.div_ceil(2);
                let prefill_stream = stream < split;
                // A decode stream may admit a short prompt beside its decodes; the prefill
                // stream leaves it the budget for one.
                let short = self.short_prompt();
                let reserve = work.decodes + if work.short_waiting { short } else { 0 };
                let prefill_only = Pick { decode: false, reserve, ..anything(f64::INFINITY) };
                // Free streams that would take decodes now, this one included.
                let takers = free.iter().filter(|&&s| s >= split || !work.has_prefill_work()).count().max(1);
                let decode_share = Pick { prefill: false, ..anything(work.decode_cost / takers as f64) };
                if prefill_stream && work.has_prefill_work() {
                    prefill_only
                } else if prefill_stream {
                    if work.decodes == 0 {
                        return None;
                    }
                    decode_share
                } else if work.decoding_anywhere {
                    if work.decodes == 0 && !work.short_waiting {
                        return None;
                    }
                    Pick { prefill: true, max_prefill: short, ..decode_share }
                } else {
                    Pick { reserve: 0, ..prefill_only }
                }
            }
            StreamAssignment::Balanced => anything(total_cost / free.len().max(1) as f64),
            // Round-robin (and smart with fusion): a share by count, as a cost per sequence.
            _ => {
                let share = work.count().div_ceil(free.len().max(1));
                let per_seq = if work.count() == 0 { 1.0 } else { total_cost / work.count() as f64 };
                anything(per_seq * share as f64)
            }
        };
        Some(pick)
    }

    /// Longest prompt a decode stream admits beside its decodes: an eighth of the budget, at
    /// least a block (64 tokens at the default 512).
    fn short_prompt(&self) -> usize {
        (self.limits.max_num_batched_tokens / 8).max(self.cfg.block_size)
    }

    /// The work a free stream could take now (see [`Runnable`]).
    fn runnable(&self) -> Runnable {
        let mut w = Runnable::default();
        let threshold = match self.limits.long_prefill_token_threshold {
            0 => self.limits.max_num_batched_tokens,
            t => t,
        };
        for &slot in &self.running {
            let seq = self.seq(slot);
            w.decoding_anywhere |= seq.tokens.len() > seq.prompt_len || seq.pending_samples > 0;
            if seq.stream_step.is_some() || seq.state != RequestState::Running {
                continue;
            }
            let remaining = self.running_remaining(slot);
            let fed = remaining.min(threshold);
            let cost = cost_of(fed, seq.num_computed);
            match remaining {
                0 => {}
                1 => {
                    w.decodes += 1;
                    w.decode_cost += cost;
                }
                _ => {
                    w.prefills += 1;
                    w.prefill_cost += cost;
                }
            }
        }
        let room = self.limits.max_num_seqs.saturating_sub(self.running.len());
        let mut cursor = None;
        while w.waiting < room {
            let Some(k) = self.waiting.next_after(cursor) else { break };
            let len = self.seq(k.slot).tokens.len();
            w.short_waiting |= len <= self.short_prompt();
            let fed = len.min(threshold);
            w.waiting += 1;
            w.prefill_cost += cost_of(fed, 0);
            cursor = Some(k);
        }
        w
    }

    /// After a sync-off step's update or failure: its sequences may be scheduled again, and
    /// the blocks of those that ended meanwhile are freed.
    pub(super) fn release_stream_step(&mut self, step: u64, entries: &[(super::seq::Slot, u64, u32)]) {
        for &(slot, epoch, _) in entries {
            if let Some(seq) = self.slots[slot as usize].as_mut().filter(|q| q.epoch == epoch) {
                if seq.stream_step == Some(step) {
                    seq.stream_step = None;
                }
            }
        }
        let mut i = 0;
        while i < self.deferred_free.len() {
            if self.deferred_free[i].0 == step {
                let (_, mut blocks) = self.deferred_free.swap_remove(i);
                self.kv.free(&mut blocks);
                self.kv.free_host(&mut blocks);
            } else {
                i += 1;
            }
        }
    }

    /// Blocks held by requests that ended while in flight (for the invariant checks).
    pub(super) fn deferred_blocks(&self) -> impl Iterator<Item = &crate::types::BlockId> {
        self.deferred_free.iter().flat_map(|(_, b)| b.blocks())
    }
}
