//! The Llama-family forward on the CPU over a packed variable-length batch.
//!
//! Per layer: RMSNorm → fused QKV projection (+ bias for Qwen2) → RoPE at each token's own
//! position → K/V written into the paged cache → causal attention per sequence through its block
//! table → output projection → residual; RMSNorm → fused gate/up → SiLU(gate)·up → down →
//! residual. The LM head runs only on the rows that sample. Activations are plain row-major
//! `Vec<f32>`; the linear layers are [`Linear`]s (f32 through candle's gemm, or int8), weights
//! stored pre-transposed (`in × out`).

use candle_core::Tensor;
use rayon::prelude::*;

use super::attention::{attend_sequence, AttnCall, AttnShape};
use super::kv_cache::{KvView, PagedKvCache};
use crate::model::{LlamaModel, RopeStyle, SeqSlice};
use crate::ExecError;

/// Most tokens of one sequence per attention work item (parallelism within long prefills).
const ATTN_CHUNK: usize = 16;

/// Which linear layer of a block an observed input feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinearInput {
    Qkv,
    O,
    GateUp,
    Down,
}

/// Rows of a step from which the element-wise parts of a layer (norms, RoPE, SiLU) run on
/// all cores (below it they are too short to pay for the fork).
const PARALLEL_ROWS: usize = 16;

/// `f(row index, row)` for each `width`-wide row of `data`, on all cores for long steps. Each
/// row's arithmetic is its own, so the split does not change results.
fn each_row(data: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if data.len() >= PARALLEL_ROWS * width {
        data.par_chunks_exact_mut(width).enumerate().for_each(|(r, row)| f(r, row));
    } else {
        data.chunks_exact_mut(width).enumerate().for_each(|(r, row)| f(r, row));
    }
}

/// `out[r] = x[r] / rms(x[r]) · w` for each row of `x` (width `w.len()`).
fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut Vec<f32>) {
    let width = w.len();
    out.clear();
    out.resize(x.len(), 0.0);
    each_row(out, width, |r, o| {
        let row = &x[r * width..(r + 1) * width];
        let mean_sq = row.iter().map(|v| v * v).sum::<f32>() / width as f32;
        let inv = 1.0 / (mean_sq + eps).sqrt();
        for ((o, v), g) in o.iter_mut().zip(row).zip(w) {
            *o = v * inv * g;
        }
    });
}

/// `x += y`, element-wise.
fn add_into(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

impl LlamaModel {
    /// Rotates one head vector in place for position `pos`.
    fn rope(&self, x: &mut [f32], pos: usize) {
        let half = self.config.head_dim / 2;
        let (c, s) = (&self.cos[pos * half..(pos + 1) * half], &self.sin[pos * half..(pos + 1) * half]);
        match self.config.rope_style {
            RopeStyle::Interleaved => {
                for i in 0..half {
                    let (a, b) = (x[2 * i], x[2 * i + 1]);
                    x[2 * i] = a * c[i] - b * s[i];
                    x[2 * i + 1] = a * s[i] + b * c[i];
                }
            }
            RopeStyle::Half => {
                for i in 0..half {
                    let (a, b) = (x[i], x[i + half]);
                    x[i] = a * c[i] - b * s[i];
                    x[i + half] = a * s[i] + b * c[i];
                }
            }
        }
    }

    /// Runs the batch: `ids` and `positions` per row, `seqs` the sequences' slices, `sample_rows`
    /// the rows whose logits are wanted. Returns one logits vector per sample row.
    pub fn forward(
        &self,
        ids: &[u32],
        positions: &[usize],
        seqs: &[SeqSlice<'_>],
        sample_rows: &[usize],
        cache: &mut PagedKvCache,
    ) -> Result<Vec<Vec<f32>>, ExecError> {
        let view = cache.view();
        // SAFETY: the view is used by this forward alone.
        unsafe { self.forward_on(ids, positions, seqs, sample_rows, &view) }
    }

    /// [`Self::forward`] over a view other forwards may share (one per execution stream).
    ///
    /// # Safety
    /// Forwards running at once on one view must write disjoint blocks (the blocks holding the
    /// positions they feed), none of which another of them reads.
    pub(crate) unsafe fn forward_on(
        &self,
        ids: &[u32],
        positions: &[usize],
        seqs: &[SeqSlice<'_>],
        sample_rows: &[usize],
        cache: &KvView<'_>,
    ) -> Result<Vec<Vec<f32>>, ExecError> {
        // SAFETY: the caller's contract, passed on.
        unsafe { self.forward_observed(ids, positions, seqs, sample_rows, cache, &mut |_, _, _| {}) }
    }

    /// [`Self::forward`], showing `observe` every linear layer's input (layer, which layer,
    /// rows × inputs) — what load-time calibration reads ([`crate::model::smooth`]).
    pub(crate) fn forward_watched(
        &self,
        ids: &[u32],
        positions: &[usize],
        seqs: &[SeqSlice<'_>],
        cache: &mut PagedKvCache,
        observe: &mut impl FnMut(usize, LinearInput, &[f32]),
    ) -> Result<(), ExecError> {
        let view = cache.view();
        // SAFETY: the view is used by this forward alone.
        unsafe { self.forward_observed(ids, positions, seqs, &[], &view, observe) }.map(drop)
    }

    /// # Safety
    /// As [`Self::forward_on`].
    unsafe fn forward_observed(
        &self,
        ids: &[u32],
        positions: &[usize],
        seqs: &[SeqSlice<'_>],
        sample_rows: &[usize],
        cache: &KvView<'_>,
        observe: &mut impl FnMut(usize, LinearInput, &[f32]),
    ) -> Result<Vec<Vec<f32>>, ExecError> {
        let c = &self.config;
        let t = ids.len();
        c.check_step(ids, positions)?;
        for s in seqs {
            cache.check_table(s.table)?;
        }
        let (qd, kvd, d) = (c.heads * c.head_dim, c.kv_dim(), c.head_dim);
        let shape = AttnShape { heads: c.heads, kv_heads: c.kv_heads, head_dim: d };
        let eps = c.rms_eps as f32;
        let idx = Tensor::from_slice(ids, t, self.embed.device())?;
        let mut x: Vec<f32> = self.embed.index_select(&idx, 0)?.flatten_all()?.to_vec1()?;
        let mut h = Vec::with_capacity(t * c.hidden);
        let mut attn_out = vec![0.0f32; t * qd];
        for (li, layer) in self.layers.iter().enumerate() {
            rms_norm_rows(&x, &layer.attn_norm, eps, &mut h);
            observe(li, LinearInput::Qkv, &h);
            let mut qkv = layer.wqkv.forward(&h, t)?;
            let row = qd + 2 * kvd;
            each_row(&mut qkv, row, |r, vals| {
                if let Some(b) = &layer.bqkv {
                    add_into(vals, b);
                }
                for head in vals[..(c.heads + c.kv_heads) * d].chunks_exact_mut(d) {
                    self.rope(head, positions[r]);
                }
            });
            for s in seqs {
                let rows = s.start_row..s.start_row + s.len;
                for (r, &pos) in rows.clone().zip(&positions[rows]) {
                    let base = r * row;
                    // SAFETY: this forward's own blocks (the caller's contract).
                    unsafe {
                        cache.write(
                            li,
                            s.table,
                            pos,
                            &qkv[base + qd..base + qd + kvd],
                            &qkv[base + qd + kvd..base + row],
                        )
                    };
                }
            }
            // Work items of at most ATTN_CHUNK tokens of one sequence, spread over the cores.
            let mut items = Vec::new();
            let mut rest: &mut [f32] = &mut attn_out;
            for s in seqs {
                if s.len == 1 {
                    // A decode token: one item per KV head (and its query heads), so that even
                    // a batch of one reads its cache on every core.
                    let per_kv = (c.heads / c.kv_heads) * d;
                    for kvh in 0..c.kv_heads {
                        let (mine, tail) = std::mem::take(&mut rest).split_at_mut(per_kv);
                        rest = tail;
                        items.push((s, 0, 1, kvh..kvh + 1, mine));
                    }
                    continue;
                }
                let mut first = 0;
                while first < s.len {
                    let len = ATTN_CHUNK.min(s.len - first);
                    let (mine, tail) = std::mem::take(&mut rest).split_at_mut(len * qd);
                    rest = tail;
                    items.push((s, first, len, 0..c.kv_heads, mine));
                    first += len;
                }
            }
            let cache_ref: &KvView<'_> = cache;
            let qkv_ref = &qkv;
            type Item<'s, 'o> = (&'s SeqSlice<'s>, usize, usize, std::ops::Range<usize>, &'o mut [f32]);
            let run = |scratch: &mut Vec<f32>, (s, first, len, kv_heads, out): Item<'_, '_>| {
                let mut q = Vec::with_capacity(len * qd);
                for r in s.start_row + first..s.start_row + first + len {
                    q.extend_from_slice(&qkv_ref[r * row..r * row + qd]);
                }
                let start = s.start_pos + first;
                let call = AttnCall { cache: cache_ref, layer: li, table: s.table, start, q: &q, shape, kv_heads };
                attend_sequence(call, out, scratch);
            };
            items.into_par_iter().for_each_init(Vec::new, run);
            observe(li, LinearInput::O, &attn_out);
            add_into(&mut x, &layer.wo.forward(&attn_out, t)?);
            rms_norm_rows(&x, &layer.ffn_norm, eps, &mut h);
            observe(li, LinearInput::GateUp, &h);
            let gu = layer.w_gate_up.forward(&h, t)?;
            let inter = c.intermediate;
            let mut act = vec![0.0f32; t * inter];
            each_row(&mut act, inter, |r, out| {
                let (gate, up) = gu[r * 2 * inter..(r + 1) * 2 * inter].split_at(inter);
                super::activation::silu_mul(out, gate, up);
            });
            observe(li, LinearInput::Down, &act);
            add_into(&mut x, &layer.w_down.forward(&act, t)?);
        }
        if sample_rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut last = Vec::with_capacity(sample_rows.len() * c.hidden);
        for &r in sample_rows {
            last.extend_from_slice(&x[r * c.hidden..(r + 1) * c.hidden]);
        }
        let mut normed = Vec::with_capacity(last.len());
        rms_norm_rows(&last, &self.norm, eps, &mut normed);
        let logits = self.lm_head.forward(&normed, sample_rows.len())?;
        Ok(logits.chunks_exact(c.vocab).map(<[f32]>::to_vec).collect())
    }
}
