//! Applying a step's results: append sampled tokens, cache newly computed blocks, check stop
//! conditions, feed the step time to the batching strategy, and return per-request deltas
//! (vLLM v1's `update_from_output`). Also the failure path, [`Scheduler::fail_step`].

use std::mem;

use super::{Inflight, Scheduler};
use crate::error::Error;
use crate::output::{ModelOutput, SchedulerOutput};
use crate::policy::{CostSample, StepFeedback};
use crate::request::{AbortCause, FinishReason, RequestDelta, RequestState, StopCause};
use crate::types::{Time, TokenId};

/// What a finished step measured, for the preemption policy.
fn cost_sample(out: &SchedulerOutput, model: &ModelOutput) -> CostSample {
    let swap = model.timing.swap.as_secs_f64();
    CostSample {
        swapped_blocks: out.swap_out.len() + out.swap_in.len(),
        swap_secs: swap,
        tokens_fed: out.num_batched_tokens,
        prefill_tokens: out.seqs.iter().map(|s| s.tokens.len()).filter(|&n| n > 1).sum(),
        compute_secs: (model.timing.device.as_secs_f64() - swap).max(0.0),
    }
}

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
        let lines_up = model.sampled.len() == out.seqs.len()
            && out.seqs.iter().zip(&model.sampled).all(|(s, t)| s.sample == t.is_some());
        let inflight = self.pop_inflight(out, lines_up)?;
        let mut deltas = mem::take(&mut self.pending_deltas);
        deltas.reserve(out.seqs.len());
        for ((s, sampled), &(slot, epoch, kv_gen)) in out.seqs.iter().zip(&model.sampled).zip(&inflight.entries) {
            let Some(seq) = self.slots[slot as usize].as_mut().filter(|q| q.epoch == epoch) else { continue };
            if matches!(seq.state, RequestState::Finished(_)) {
                continue;
            }
            let Some(token) = *sampled else {
                if seq.state == RequestState::Running && seq.kv_generation == kv_gen {
                    self.kv.cache_computed(&mut seq.kv, &seq.tokens, s.start_pos + s.tokens.len());
                }
                continue;
            };
            seq.pending_samples = seq.pending_samples.saturating_sub(1);
            seq.tokens.push(token);
            if seq.state == RequestState::Running && seq.kv_generation == kv_gen {
                self.kv.cache_computed(&mut seq.kv, &seq.tokens, s.start_pos + s.tokens.len());
            }
            self.stats.tokens_generated += 1;
            let finish = stop_reason(&self.cfg.eos_token_ids, seq, token);
            let id = seq.id;
            deltas.push(RequestDelta { id, token: Some(token), finish });
            if let Some(reason) = finish {
                self.finish_seq(slot, reason);
            }
        }
        self.release_finished();
        if inflight.stream.is_some() {
            self.release_stream_step(out.step, &inflight.entries);
        }
        let sample = cost_sample(out, model);
        self.stats.prefill_tokens_fed += sample.prefill_tokens as u64;
        self.preemption.observe(&sample);
        let feedback = StepFeedback {
            device_time: model.timing.device,
            batch_size: out.seqs.len(),
            num_batched_tokens: out.num_batched_tokens,
            waiting: self.waiting.len(),
        };
        if let Some(limits) = self.batching.observe(&feedback, self.limits) {
            self.limits = self.sanitize(limits);
        }
        Ok(deltas)
    }

    /// The executor could not run the oldest step in flight: every request in it ends with
    /// [`AbortCause::ExecutorError`] (their KV may be garbage) and the scheduler goes on.
    ///
    /// The step's swap-outs may not have happened either, so its swap victims lose their host
    /// copy: one still waiting falls back to recompute; one already swapped back in by a later
    /// step in flight ends like the step's own requests.
    pub fn fail_step(&mut self, out: &SchedulerOutput, _now: Time) -> Result<Vec<RequestDelta>, Error> {
        let inflight = self.pop_inflight(out, true)?;
        let mut deltas = mem::take(&mut self.pending_deltas);
        let reason = FinishReason::Aborted(AbortCause::ExecutorError);
        let mut doomed: Vec<_> = inflight.entries.iter().map(|&(slot, epoch, _)| (slot, epoch)).collect();
        if !out.swap_out.is_empty() {
            for id in &out.preempted {
                let Some(&slot) = self.by_id.get(id) else { continue };
                let seq = self.slots[slot as usize].as_mut().expect("live slot");
                match seq.state {
                    RequestState::Swapped => {
                        self.kv.free_host(&mut seq.kv);
                        seq.num_computed = 0;
                        seq.state = RequestState::Preempted;
                        seq.kv_generation = seq.kv_generation.wrapping_add(1);
                        self.num_swapped -= 1;
                    }
                    RequestState::Running if seq.preempted_at_step == Some(out.step) => doomed.push((slot, seq.epoch)),
                    _ => {}
                }
            }
        }
        for (slot, epoch) in doomed {
            let Some(seq) = self.slots[slot as usize].as_ref().filter(|q| q.epoch == epoch) else { continue };
            if matches!(seq.state, RequestState::Finished(_)) {
                continue;
            }
            deltas.push(RequestDelta { id: seq.id, token: None, finish: Some(reason) });
            self.finish_seq(slot, reason);
        }
        self.release_finished();
        if inflight.stream.is_some() {
            self.release_stream_step(out.step, &inflight.entries);
        }
        Ok(deltas)
    }

    /// Checks `out` is the oldest step in flight, or a sync-off step with only sync-off steps
    /// before it (those share no sequence, so they complete in any order), and that it
    /// `lines_up`; then takes it off the queue.
    fn pop_inflight(&mut self, out: &SchedulerOutput, lines_up: bool) -> Result<Inflight, Error> {
        let expected = self.inflight.front().map(|f| f.step);
        let at = self.inflight.iter().position(|f| f.step == out.step);
        let in_order = match at {
            Some(0) => true,
            Some(i) => self.inflight.iter().take(i + 1).all(|f| f.stream.is_some()),
            None => false,
        };
        let (Some(i), true) = (at, in_order) else {
            return Err(Error::StepOutOfOrder { expected, got: out.step });
        };
        let entries = self.inflight[i].entries.len();
        if !lines_up || entries != out.seqs.len() {
            return Err(Error::OutputMismatch { expected: entries, got: out.seqs.len() });
        }
        self.inflight.remove(i).ok_or(Error::StepOutOfOrder { expected, got: out.step })
    }
}

/// EOS (unless ignored), then stop tokens, then length; for the first `min_tokens` generated
/// tokens (the ones the sampler was banned from ending with), only length.
fn stop_reason(eos: &[TokenId], seq: &super::seq::Seq, token: TokenId) -> Option<FinishReason> {
    let below_min = seq.tokens.len().saturating_sub(seq.prompt_len) <= seq.params.min_tokens;
    if below_min {
        return (seq.tokens.len() >= seq.max_len).then_some(FinishReason::Length);
    }
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
