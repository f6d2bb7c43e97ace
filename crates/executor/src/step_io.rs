//! A step's input and output as the real executors (CPU and tensor) need them: the scheduler
//! output packed into token ids, positions, per-sequence slices and the rows that sample, with
//! placeholders (`feeds_last_sample`) filled from the previous step's samples; and the logits
//! turned back into sampled tokens; and [`execute_packed`], the one step skeleton both run
//! (forget finished requests, swap out, swap in, pack, forward, sample, time).

use std::collections::{HashMap, HashSet};

use tandem_core::{ModelOutput, RequestId, SamplerParams, ScheduledSeq, SchedulerOutput, TokenId};

use crate::model::{sample, token_logprobs, SeqSlice};
use crate::ExecError;

/// A real executor's part of a step; [`execute_packed`] does the rest.
pub(crate) trait PackedForward {
    fn sampling(&mut self) -> &mut SamplingState;
    /// The step's swap-outs, then its swap-ins.
    fn swap(&mut self, out: &SchedulerOutput) -> Result<(), ExecError>;
    /// One logits vector per sample row of `p` (`p` has at least one token), and each stream's
    /// measured busy time when the micro-batches of `out` ran apart (`None`: one fused forward).
    fn forward(&mut self, p: &Packed<'_>, out: &SchedulerOutput) -> Result<Forwarded, ExecError>;
}

/// Logits per sample row, and per-stream busy time where measured.
pub(crate) type Forwarded = (Vec<Vec<f32>>, Option<Vec<std::time::Duration>>);

/// Runs one step on a real executor: the contract's order (swap-out, swap-in, then the model),
/// placeholders filled from the last samples, every sampling request answered, the step timed.
/// Streams report their measured busy time; a fused step is all on the first stream.
pub(crate) fn execute_packed(e: &mut impl PackedForward, out: &SchedulerOutput) -> Result<ModelOutput, ExecError> {
    let started = std::time::Instant::now();
    e.sampling().forget(&out.finished);
    e.swap(out)?;
    let swap = started.elapsed();
    let p = pack(out, &e.sampling().last);
    let (logits, busy) = if p.ids.is_empty() { (Vec::new(), None) } else { e.forward(&p, out)? };
    let mut output = e.sampling().sample_all(out, &p.ids, &logits)?;
    let device = started.elapsed();
    let stream_busy = busy.unwrap_or_else(|| crate::fused_busy(out, device));
    output.timing = tandem_core::StepTiming { device, stream_busy, swap };
    Ok(output)
}

/// A step packed for a forward.
#[derive(Debug)]
pub(crate) struct Packed<'a> {
    pub ids: Vec<u32>,
    pub positions: Vec<usize>,
    pub seqs: Vec<SeqSlice<'a>>,
    pub sample_rows: Vec<usize>,
}

/// Packs `out`; a placeholder token is replaced by the token `last` holds for its request.
pub(crate) fn pack<'a>(out: &'a SchedulerOutput, last: &HashMap<RequestId, TokenId>) -> Packed<'a> {
    let t = out.num_batched_tokens;
    let mut p = Packed {
        ids: Vec::with_capacity(t),
        positions: Vec::with_capacity(t),
        seqs: Vec::with_capacity(out.seqs.len()),
        sample_rows: Vec::new(),
    };
    for s in &out.seqs {
        let start_row = p.ids.len();
        for (i, &tok) in out.tokens(s).iter().enumerate() {
            p.ids.push(if s.feeds_last_sample { last.get(&s.id).copied().unwrap_or(0) } else { tok });
            p.positions.push(s.start_pos + i);
        }
        p.seqs.push(SeqSlice { start_row, len: s.tokens.len(), start_pos: s.start_pos, table: out.block_table(s) });
        if s.sample {
            p.sample_rows.push(p.ids.len() - 1);
        }
    }
    p
}

/// What a real executor remembers between steps for sampling: each live request's latest
/// sampled token (the next step's placeholder reads it), and, for requests with penalties, the
/// tokens fed so far by position (completed by the scheduler's `context` where positions were
/// never fed here: prefix-cache hits).
#[derive(Debug)]
pub(crate) struct SamplingState {
    pub last: HashMap<RequestId, TokenId>,
    /// Token at each position, as fed (prompt, then the generated tokens as they are fed back).
    /// Built from what is fed rather than what is sampled, so a sample the scheduler drops
    /// (its request preempted while the step was in flight) never counts, and a recompute
    /// rewrites the same tokens.
    fed: HashMap<RequestId, Vec<TokenId>>,
    /// Seed for requests without one (random per executor).
    nonce: u64,
}

/// The tokens the repetition, presence and frequency penalties look at.
#[derive(Debug, Default)]
struct PenaltyHistory {
    /// Prompt and generated tokens (repetition penalty).
    seen: HashSet<TokenId>,
    /// Generated tokens and how often (presence and frequency penalties).
    generated: HashMap<TokenId, u32>,
}

impl SamplingState {
    pub fn new() -> Self {
        let nonce =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        Self { last: HashMap::new(), fed: HashMap::new(), nonce }
    }

    /// Drops the state of requests that ended.
    pub fn forget(&mut self, finished: &[RequestId]) {
        for id in finished {
            self.last.remove(id);
            self.fed.remove(id);
        }
    }

    /// Records this step's feed of `s` (`ids` from `start_pos`, and `context`, the tokens
    /// before it, when the scheduler sent them); returns the tokens up to its end.
    fn record(&mut self, s: &ScheduledSeq, context: &[TokenId], ids: &[TokenId]) -> &[TokenId] {
        let fed = self.fed.entry(s.id).or_default();
        let end = s.start_pos + ids.len();
        if fed.len() < end {
            fed.resize(end, 0);
        }
        if context.len() == s.start_pos {
            fed[..s.start_pos].copy_from_slice(context);
        }
        fed[s.start_pos..end].copy_from_slice(ids);
        &fed[..end]
    }

    /// Samples one token per sampling sequence of `out` from `logits` (one row each, in
    /// order); `ids` are the step's fed tokens as packed (placeholders resolved). The output
    /// carries the log-probabilities of the sequences that asked for them (of the raw logits),
    /// and no timing.
    pub fn sample_all(
        &mut self,
        out: &SchedulerOutput,
        ids: &[TokenId],
        logits: &[Vec<f32>],
    ) -> Result<ModelOutput, ExecError> {
        let mut rows = logits.iter();
        let mut logprobs = Vec::new();
        let mut sampled = Vec::with_capacity(out.seqs.len());
        let mut row_start = 0;
        for (i, s) in out.seqs.iter().enumerate() {
            let fed = ids.get(row_start..row_start + s.num_tokens()).unwrap_or_default();
            row_start += s.num_tokens();
            // Every feed is recorded; the history is built only where a token is sampled.
            let history = if s.sampler.has_penalties() {
                let context = out.token_ids.get(s.context.clone()).unwrap_or_default();
                let tokens = self.record(s, context, fed);
                s.sample.then(|| PenaltyHistory::of(tokens, s.num_generated))
            } else {
                None
            };
            if !s.sample {
                sampled.push(None);
                continue;
            }
            let row = rows.next().ok_or_else(|| ExecError::Device("missing logits row".into()))?;
            let seed = self.nonce ^ s.id.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
            let banned = out.banned(s);
            let allowed = out.allowed(s);
            let bias = out.bias(s);
            let tok = match (&history, banned.is_empty() && bias.is_empty(), allowed) {
                (None, true, None) => sample(row, &s.sampler, s.num_generated, seed),
                _ => {
                    let mut adjusted = match &history {
                        Some(h) => penalize(row, &s.sampler, h),
                        None => row.clone(),
                    };
                    // OpenAI's logit_bias, then the tokens the request may not end with yet
                    // (`min_tokens`).
                    for &(t, b) in bias {
                        if let Some(x) = adjusted.get_mut(t as usize) {
                            *x += b;
                        }
                    }
                    for &b in banned {
                        if let Some(x) = adjusted.get_mut(b as usize) {
                            *x = f32::NEG_INFINITY;
                        }
                    }
                    if let Some(mask) = allowed {
                        apply_mask(&mut adjusted, mask);
                    }
                    sample(&adjusted, &s.sampler, s.num_generated, seed)
                }
            };
            self.last.insert(s.id, tok);
            sampled.push(Some(tok));
            if let Some(k) = s.sampler.logprobs {
                logprobs.resize(out.seqs.len(), None);
                logprobs[i] = Some(token_logprobs(row, tok, k as usize));
            }
        }
        Ok(ModelOutput { sampled, logprobs, ..ModelOutput::default() })
    }
}

/// Structured output: every token the mask does not allow (bit `t % 32` of word `t / 32`;
/// tokens past the mask are not allowed) gets −∞. A mask that allows none of the logits' tokens
/// is ignored rather than leaving nothing to sample.
fn apply_mask(logits: &mut [f32], mask: &[u32]) {
    let allowed = |t: usize| mask.get(t / 32).is_some_and(|w| w >> (t % 32) & 1 == 1);
    if !(0..logits.len()).any(allowed) {
        return;
    }
    for (t, x) in logits.iter_mut().enumerate() {
        if !allowed(t) {
            *x = f32::NEG_INFINITY;
        }
    }
}

impl PenaltyHistory {
    /// From a request's tokens up to its sampling position, the last `generated` of them its
    /// output.
    fn of(tokens: &[TokenId], generated: usize) -> Self {
        let mut h = Self { seen: tokens.iter().copied().collect(), generated: HashMap::new() };
        for &t in &tokens[tokens.len().saturating_sub(generated)..] {
            *h.generated.entry(t).or_insert(0) += 1;
        }
        h
    }
}

/// `logits` with the penalties applied: vLLM's (and HF's) repetition penalty divides a positive
/// logit of a seen token by it and multiplies a negative one; OpenAI's presence and frequency
/// penalties subtract `presence + frequency × count` from each generated token's logit.
fn penalize(logits: &[f32], p: &SamplerParams, h: &PenaltyHistory) -> Vec<f32> {
    let mut out = logits.to_vec();
    if p.repetition_penalty != 1.0 {
        for &t in &h.seen {
            if let Some(x) = out.get_mut(t as usize) {
                *x = if *x > 0.0 { *x / p.repetition_penalty } else { *x * p.repetition_penalty };
            }
        }
    }
    for (&t, &n) in &h.generated {
        if let Some(x) = out.get_mut(t as usize) {
            *x -= p.presence_penalty + p.frequency_penalty * n as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mask_leaves_only_its_tokens() {
        // Word 0 = 0b1010: tokens 1 and 3 allowed; token 33 (word 1, bit 1) too.
        let mut l = vec![1.0; 40];
        apply_mask(&mut l, &[0b1010, 0b10]);
        let live: Vec<usize> = (0..40).filter(|&t| l[t].is_finite()).collect();
        assert_eq!(live, vec![1, 3, 33]);
        // A mask allowing nothing present is ignored.
        let mut l = vec![1.0; 4];
        apply_mask(&mut l, &[0b1_0000]);
        assert!(l.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn penalties_follow_vllms_arithmetic() {
        // Token 0 seen in the prompt only, token 1 generated twice, token 2 never.
        let h = PenaltyHistory { seen: [0, 1].into_iter().collect(), generated: [(1, 2)].into_iter().collect() };
        let p = SamplerParams { repetition_penalty: 2.0, ..SamplerParams::default() };
        // Seen: 4 / 2 = 2 and -4 * 2 = -8; unseen unchanged.
        assert_eq!(penalize(&[4.0, -4.0, 4.0], &p, &h), vec![2.0, -8.0, 4.0]);
        let p = SamplerParams { presence_penalty: 0.5, frequency_penalty: 1.0, ..SamplerParams::default() };
        // Token 1: 3 - (0.5 + 1.0 × 2) = 0.5; the prompt's token 0 is not "generated".
        assert_eq!(penalize(&[3.0, 3.0, 3.0], &p, &h), vec![3.0, 0.5, 3.0]);
        assert!(!SamplerParams::default().has_penalties());
    }
}
