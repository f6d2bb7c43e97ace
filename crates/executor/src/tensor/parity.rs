//! The tensor path against the CPU executor's f32 forward, and against itself batched: the
//! device checks of issue 19 (`tandem parity`). Seeded random prompts of several lengths (one
//! past a split-K partition), each prefilled and then decoded greedily for a few steps on the
//! CPU in f32 — the reference; the same tokens are fed to the tensor model on its device
//! (teacher forcing, so both see the same inputs) alone, and then all prompts together in one
//! prefill step and batched decode steps. Reported: the largest logit difference, the RMS
//! difference relative to the logits' RMS, and top-1 agreement, for device vs reference and
//! batched vs alone.

use candle_core::{DType, Device};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tandem_core::BlockId;

use super::{TensorKvCache, TensorModel};
use crate::cpu::PagedKvCache;
use crate::model::{LlamaModel, SeqSlice};
use crate::ExecError;

/// Block size of the parity runs (tandem's default).
const BLOCK: usize = 16;

/// What to run.
#[derive(Debug, Clone)]
pub struct ParityOptions {
    /// Prompt lengths (one prompt each).
    pub prompt_lens: Vec<usize>,
    /// Greedy decode steps after each prefill.
    pub steps: usize,
    pub seed: u64,
}

impl Default for ParityOptions {
    fn default() -> Self {
        // 600 tokens: a decode context past one 512-token partition.
        Self { prompt_lens: vec![7, 60, 257, 600], steps: 8, seed: 0 }
    }
}

/// Differences between two sets of logits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LogitDiff {
    pub max_abs: f32,
    /// RMS of the difference over RMS of the first set.
    pub rel_rms: f32,
    /// Positions whose argmax agrees, of `positions`.
    pub top1_agree: usize,
    pub positions: usize,
}

impl LogitDiff {
    fn of(a: &[Vec<f32>], b: &[Vec<f32>]) -> Self {
        let (mut d2, mut a2, mut max_abs, mut agree) = (0f64, 0f64, 0f32, 0);
        for (x, y) in a.iter().zip(b) {
            for (&p, &q) in x.iter().zip(y) {
                d2 += ((p - q) as f64).powi(2);
                a2 += (p as f64).powi(2);
                max_abs = max_abs.max((p - q).abs());
            }
            agree += usize::from(argmax(x) == argmax(y));
        }
        Self { max_abs, rel_rms: (d2 / a2.max(f64::MIN_POSITIVE)).sqrt() as f32, top1_agree: agree, positions: a.len() }
    }
}

/// The two comparisons.
#[derive(Debug, Clone, Serialize)]
pub struct ParityReport {
    pub device: String,
    pub dtype: String,
    pub prompt_lens: Vec<usize>,
    pub steps: usize,
    /// The device alone vs the CPU f32 reference.
    pub vs_reference: LogitDiff,
    /// The device batched vs the device alone.
    pub batched_vs_alone: LogitDiff,
    /// Whether the greedy tokens the device picks batched equal those it picks alone.
    pub greedy_batch_invariant: bool,
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i)
}

/// Blocks of each sequence: sequence `i` owns a descending run, so tables are not identity maps.
fn tables(lens: &[usize], steps: usize) -> Vec<Vec<BlockId>> {
    let mut next = lens.iter().map(|l| (l + steps).div_ceil(BLOCK)).sum::<usize>();
    lens.iter()
        .map(|l| {
            let n = (l + steps).div_ceil(BLOCK);
            next -= n;
            (next..next + n).rev().map(|b| BlockId(b as u32)).collect()
        })
        .collect()
}

/// One prompt, alone: its prefill and `steps` decode steps, feeding `tokens` after the prompt
/// (or, when `tokens` is empty, greedy picks, returned). Returns (logits per step, tokens fed).
fn alone<F>(prompt: &[u32], steps: usize, given: &[u32], mut forward: F) -> Result<(Vec<Vec<f32>>, Vec<u32>), ExecError>
where
    F: FnMut(&[u32], usize) -> Result<Vec<f32>, ExecError>,
{
    let mut logits = vec![forward(prompt, 0)?];
    let mut fed = Vec::with_capacity(steps);
    for s in 0..steps {
        let next = given.get(s).copied().unwrap_or_else(|| argmax(&logits[s]) as u32);
        fed.push(next);
        logits.push(forward(&[next], prompt.len() + s)?);
    }
    Ok((logits, fed))
}

/// Runs the checks of `model` (loaded with f32 weights) on `device` in `dtype`.
pub fn check(
    model: &LlamaModel,
    device: &Device,
    dtype: DType,
    opts: &ParityOptions,
) -> Result<ParityReport, ExecError> {
    let c = &model.config;
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let hi = (c.vocab as u32).clamp(2, 30_000);
    let prompts: Vec<Vec<u32>> =
        opts.prompt_lens.iter().map(|&n| (0..n.max(1)).map(|_| rng.random_range(1..hi)).collect()).collect();
    // Tables sized for the prompts as generated (a length of 0 gets one token).
    let lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let tables = tables(&lens, opts.steps);
    let blocks = tables.iter().map(Vec::len).sum::<usize>();
    let tm = TensorModel::from_cpu(model, device, dtype)?;

    let (mut reference, mut device_alone, mut fed) = (Vec::new(), Vec::new(), Vec::new());
    for (p, table) in prompts.iter().zip(&tables) {
        let mut cache = PagedKvCache::new(c.layers, c.kv_dim(), BLOCK, blocks, 0);
        let (logits, tokens) = alone(p, opts.steps, &[], |ids, start| {
            let seq = [SeqSlice { start_row: 0, len: ids.len(), start_pos: start, table }];
            let pos: Vec<usize> = (start..start + ids.len()).collect();
            Ok(model.forward(ids, &pos, &seq, &[ids.len() - 1], &mut cache)?.remove(0))
        })?;
        let mut dcache = TensorKvCache::new(&tm, BLOCK, blocks)?;
        let (dlogits, _) = alone(p, opts.steps, &tokens, |ids, start| {
            let seq = [SeqSlice { start_row: 0, len: ids.len(), start_pos: start, table }];
            let pos: Vec<usize> = (start..start + ids.len()).collect();
            Ok(tm.forward(ids, &pos, &seq, &[ids.len() - 1], &mut dcache)?.remove(0))
        })?;
        reference.extend(logits);
        device_alone.push(dlogits);
        fed.push(tokens);
    }

    // Batched: every prompt in one prefill step, then the decode steps together.
    let mut cache = TensorKvCache::new(&tm, BLOCK, blocks)?;
    let mut batched: Vec<Vec<Vec<f32>>> = vec![Vec::new(); prompts.len()];
    for s in 0..=opts.steps {
        let (mut ids, mut pos, mut seqs, mut rows) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (i, p) in prompts.iter().enumerate() {
            let (feed, start): (&[u32], usize) = if s == 0 { (p, 0) } else { (&fed[i][s - 1..s], p.len() + s - 1) };
            seqs.push(SeqSlice { start_row: ids.len(), len: feed.len(), start_pos: start, table: &tables[i] });
            ids.extend_from_slice(feed);
            pos.extend(start..start + feed.len());
            rows.push(ids.len() - 1);
        }
        for (i, l) in tm.forward(&ids, &pos, &seqs, &rows, &mut cache)?.into_iter().enumerate() {
            batched[i].push(l);
        }
    }
    let greedy = |runs: &[Vec<Vec<f32>>]| -> Vec<Vec<usize>> {
        runs.iter().map(|r| r.iter().map(|l| argmax(l)).collect()).collect()
    };
    let flat = |runs: &[Vec<Vec<f32>>]| -> Vec<Vec<f32>> { runs.iter().flatten().cloned().collect() };
    Ok(ParityReport {
        device: format!("{device:?}"),
        dtype: format!("{dtype:?}"),
        prompt_lens: opts.prompt_lens.clone(),
        steps: opts.steps,
        vs_reference: LogitDiff::of(&reference, &flat(&device_alone)),
        batched_vs_alone: LogitDiff::of(&flat(&device_alone), &flat(&batched)),
        greedy_batch_invariant: greedy(&device_alone) == greedy(&batched),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logit_differences() {
        // a = [[3, 4]], b = [[3, 1]]: Δ = (0, 3), |a| = 5 → rel RMS 3/5; argmax 1 vs 0.
        let d = LogitDiff::of(&[vec![3.0, 4.0]], &[vec![3.0, 1.0]]);
        assert_eq!((d.max_abs, d.top1_agree, d.positions), (3.0, 0, 1));
        assert!((d.rel_rms - 0.6).abs() < 1e-6);
    }

    #[test]
    fn tables_are_disjoint_and_cover_each_context() {
        // Lengths 7 and 40 with 8 steps: 15 → 1 block, 48 → 3 blocks; 4 blocks in all.
        let t = tables(&[7, 40], 8);
        assert_eq!(t, vec![vec![BlockId(3)], vec![BlockId(2), BlockId(1), BlockId(0)]]);
    }
}
