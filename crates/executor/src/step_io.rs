//! A step's input and output as the real executors (CPU and tensor) need them: the scheduler
//! output packed into token ids, positions, per-sequence slices and the rows that sample, with
//! placeholders (`feeds_last_sample`) filled from the previous step's samples; and the logits
//! turned back into sampled tokens.

use std::collections::HashMap;

use tandem_core::{ModelOutput, RequestId, SchedulerOutput, TokenId};

use crate::cpu::{sample, token_logprobs, SeqSlice};
use crate::ExecError;

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

/// Samples one token per sampling sequence of `out` from `logits` (one row each, in order),
/// remembering it in `last` for the next step's placeholders. `nonce` seeds unseeded requests.
/// The output carries the log-probabilities of the sequences that asked for them, and no timing.
pub(crate) fn sample_all(
    out: &SchedulerOutput,
    logits: &[Vec<f32>],
    last: &mut HashMap<RequestId, TokenId>,
    nonce: u64,
) -> Result<ModelOutput, ExecError> {
    let mut rows = logits.iter();
    let mut logprobs = Vec::new();
    let mut sampled = Vec::with_capacity(out.seqs.len());
    for (i, s) in out.seqs.iter().enumerate() {
        if !s.sample {
            sampled.push(None);
            continue;
        }
        let row = rows.next().ok_or_else(|| ExecError::Device("missing logits row".into()))?;
        let tok = sample(row, &s.sampler, s.num_generated, nonce ^ s.id.0.wrapping_mul(0x2545_f491_4f6c_dd1d));
        last.insert(s.id, tok);
        sampled.push(Some(tok));
        if let Some(k) = s.sampler.logprobs {
            logprobs.resize(out.seqs.len(), None);
            logprobs[i] = Some(token_logprobs(row, tok, k as usize));
        }
    }
    Ok(ModelOutput { sampled, logprobs, ..ModelOutput::default() })
}
