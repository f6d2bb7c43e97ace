//! Applying a step's results: append sampled tokens, cache newly computed blocks, check stop
//! conditions, and return per-request deltas (vLLM v1's `update_from_output`).

use std::mem;

use super::Scheduler;
use crate::error::Error;
use crate::output::{ModelOutput, SchedulerOutput};
use crate::request::{FinishReason, RequestDelta, RequestState, StopCause};
use crate::types::{Time, TokenId};

impl Scheduler {
    /// Applies the executor's answer to the oldest step in flight. Returns the deltas of this
    /// step (one per sampled token) and of anything that ended since (deadlines).
    ///
    /// Fails, changing nothing, if `out` is not the oldest step in flight or `model` does not
    /// line up with it.
    pub fn update(
        &mut self,
        out: &SchedulerOutput,
        model: &ModelOutput,
        _now: Time,
    ) -> Result<Vec<RequestDelta>, Error> {
        let expected = self.inflight.front().map(|f| f.step);
        if expected != Some(out.step) {
            return Err(Error::StepOutOfOrder { expected, got: out.step });
        }
        let lines_up = model.sampled.len() == out.seqs.len()
            && out.seqs.iter().zip(&model.sampled).all(|(s, t)| s.sample == t.is_some());
        if !lines_up {
            return Err(Error::OutputMismatch { expected: out.seqs.len(), got: model.sampled.len() });
        }
        let Some(inflight) = self.inflight.pop_front() else {
            return Err(Error::StepOutOfOrder { expected, got: out.step });
        };
        if inflight.entries.len() != out.seqs.len() {
            return Err(Error::OutputMismatch { expected: inflight.entries.len(), got: out.seqs.len() });
        }
        let mut deltas = mem::take(&mut self.pending_deltas);
        deltas.reserve(out.seqs.len());
        for ((s, sampled), &(slot, epoch, kv_gen)) in out.seqs.iter().zip(&model.sampled).zip(&inflight.entries) {
            let Some(seq) = self.slots[slot as usize].as_mut().filter(|q| q.epoch == epoch) else { continue };
            if matches!(seq.state, RequestState::Finished(_)) {
                continue;
            }
            if seq.state == RequestState::Running && seq.kv_generation == kv_gen {
                self.kv.cache_computed(&mut seq.kv, &seq.tokens, s.start_pos + s.tokens.len());
            }
            let Some(token) = *sampled else { continue };
            seq.pending_sample = false;
            seq.tokens.push(token);
            self.stats.tokens_generated += 1;
            let finish = stop_reason(&self.cfg.eos_token_ids, seq, token);
            let id = seq.id;
            deltas.push(RequestDelta { id, token: Some(token), finish });
            if let Some(reason) = finish {
                self.finish_seq(slot, reason);
            }
        }
        self.release_finished();
        Ok(deltas)
    }
}

/// EOS (unless ignored), then stop tokens, then length.
fn stop_reason(eos: &[TokenId], seq: &super::seq::Seq, token: TokenId) -> Option<FinishReason> {
    if !seq.params.ignore_eos && eos.contains(&token) {
        Some(FinishReason::Stopped(StopCause::Eos(token)))
    } else if seq.params.stop_token_ids.contains(&token) {
        Some(FinishReason::Stopped(StopCause::StopToken(token)))
    } else if seq.tokens.len() >= seq.max_len {
        Some(FinishReason::Length)
    } else {
        None
    }
}
