//! Whole-state consistency checks, run after every operation by the randomized tests.
//!
//! What must always hold: every device block's reference count equals the number of live
//! sequences whose table holds it (no leak, no double free); every host block in use belongs to
//! exactly one swapped sequence; each live request is in exactly one of the waiting queue or the
//! running list, in a state that matches; reserving capacity policies never promise more blocks
//! than are free; a sequence marked in a sync-off step is running and that step is in flight,
//! and the blocks of requests that ended in flight stay counted until their step returns.

use std::collections::HashSet;

use super::Scheduler;
use crate::error::InvariantViolation;
use crate::request::RequestState;

fn fail<T>(msg: String) -> Result<T, InvariantViolation> {
    Err(InvariantViolation(msg))
}

impl Scheduler {
    /// Checks every invariant in the module docs; `Err` names the first one broken.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let pool = self.kv.pool();
        pool.check()?;
        let mut refs = vec![0u32; pool.num_blocks()];
        let mut host_owner = vec![false; self.kv.host().num_blocks()];
        let mut live = 0;
        let mut swapped = 0;
        let mut resumable = 0;
        for (slot, seq) in self.slots.iter().enumerate() {
            let Some(seq) = seq else { continue };
            if matches!(seq.state, RequestState::Finished(_)) {
                return fail(format!("{} is finished but still holds slot {slot}", seq.id));
            }
            live += 1;
            if seq.is_resumable() {
                resumable += 1;
            }
            if self.by_id.get(&seq.id) != Some(&(slot as u32)) {
                return fail(format!("{} in slot {slot} is not indexed by id", seq.id));
            }
            for b in seq.kv.blocks() {
                refs[b.index()] += 1;
            }
            if let Some(step) = seq.stream_step {
                let listed = self.inflight.iter().any(|f| f.step == step && f.stream.is_some());
                if !listed || seq.state != RequestState::Running {
                    return fail(format!("{} is marked in stream step {step}, which is not in flight", seq.id));
                }
            }
            for h in seq.kv.host_blocks() {
                if !self.kv.host().is_in_use(*h) || std::mem::replace(&mut host_owner[h.index()], true) {
                    return fail(format!("host block {} of {} is free or shared", h.0, seq.id));
                }
            }
            let in_waiting = self.waiting.contains(&seq.wait_key(slot as u32));
            let in_running = self.running.contains(&(slot as u32));
            let need = self.kv.blocks_for(seq.num_computed);
            let ok = match seq.state {
                RequestState::Running => {
                    !in_waiting && in_running && seq.kv.blocks().len() >= need && seq.kv.host_blocks().is_empty()
                }
                RequestState::Waiting | RequestState::Preempted => {
                    in_waiting
                        && !in_running
                        && seq.kv.blocks().is_empty()
                        && seq.num_computed == 0
                        && seq.kv.host_blocks().is_empty()
                }
                RequestState::Swapped => {
                    swapped += 1;
                    in_waiting && !in_running && seq.kv.blocks().is_empty() && seq.kv.host_blocks().len() >= need
                }
                RequestState::Finished(_) => false,
            };
            if !ok {
                return fail(format!(
                    "{} in state {:?}: waiting={in_waiting} running={in_running} blocks={} host={} computed={}",
                    seq.id,
                    seq.state,
                    seq.kv.blocks().len(),
                    seq.kv.host_blocks().len(),
                    seq.num_computed
                ));
            }
            if seq.num_computed > seq.num_known() || seq.tokens.len() > seq.max_len || seq.pending_samples > 2 {
                return fail(format!(
                    "{}: computed {} of {} tokens, max {}",
                    seq.id,
                    seq.num_computed,
                    seq.tokens.len(),
                    seq.max_len
                ));
            }
        }
        for b in self.deferred_blocks() {
            refs[b.index()] += 1;
        }
        for (b, &n) in refs.iter().enumerate() {
            if pool.ref_count(crate::types::BlockId(b as u32)) != n {
                return fail(format!(
                    "block {b}: ref count {} but {n} sequences hold it",
                    pool.ref_count(crate::types::BlockId(b as u32))
                ));
            }
        }
        let host_used = self.kv.host().num_blocks() - self.kv.host().num_free();
        let owned = host_owner.iter().filter(|&&o| o).count()
            + self.kv.deferred_host_blocks().len()
            + self.deferred_free.iter().map(|(_, b)| b.host_blocks().len()).sum::<usize>();
        if host_used != owned {
            return fail(format!("{host_used} host blocks in use but {owned} owned"));
        }
        if live != self.by_id.len() || self.waiting.len() + self.running.len() != live {
            return fail(format!(
                "{live} live sequences, {} ids, {} waiting + {} running",
                self.by_id.len(),
                self.waiting.len(),
                self.running.len()
            ));
        }
        if self.running.iter().collect::<HashSet<_>>().len() != self.running.len() {
            return fail("a slot is twice in the running list".into());
        }
        if resumable != self.waiting.resumable() {
            return fail(format!("{resumable} resumable sequences but the queue counts {}", self.waiting.resumable()));
        }
        if swapped != self.num_swapped {
            return fail(format!("{swapped} swapped sequences but the counter says {}", self.num_swapped));
        }
        if self.capacity.reserves_to_completion() && self.reserved_blocks() > self.kv.num_free() {
            return fail(format!("{} blocks reserved but only {} free", self.reserved_blocks(), self.kv.num_free()));
        }
        Ok(())
    }
}
