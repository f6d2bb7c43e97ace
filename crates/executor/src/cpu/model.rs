//! The Llama-family forward over a packed variable-length batch.
//!
//! Per layer: RMSNorm → fused QKV projection (+ bias for Qwen2) → RoPE at each token's own
//! position → K/V written into the paged cache → causal attention per sequence through its block
//! table → output projection → residual; RMSNorm → fused gate/up → SiLU(gate)·up → down →
//! residual. The LM head runs only on the rows that sample. Matmuls are candle (gemm) on
//! contiguous f32; weights are stored pre-transposed (`in × out`).

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use tandem_core::BlockId;

use super::attention::{attend_sequence, AttnCall, AttnShape};
use super::config::{LlamaConfig, RopeStyle};
use super::kv_cache::PagedKvCache;
use crate::ExecError;

/// Most tokens of one sequence per attention work item (parallelism within long prefills).
const ATTN_CHUNK: usize = 16;

/// One transformer block's weights.
#[derive(Debug)]
pub struct Layer {
    pub attn_norm: Tensor,
    /// `hidden × (q + k + v)`.
    pub wqkv: Tensor,
    pub bqkv: Option<Tensor>,
    /// `heads·head_dim × hidden`.
    pub wo: Tensor,
    pub ffn_norm: Tensor,
    /// `hidden × 2·intermediate` (gate then up).
    pub w_gate_up: Tensor,
    /// `intermediate × hidden`.
    pub w_down: Tensor,
}

/// A loaded model: config, weights and RoPE tables.
#[derive(Debug)]
pub struct LlamaModel {
    pub config: LlamaConfig,
    /// `vocab × hidden`, for the embedding lookup.
    pub embed: Tensor,
    pub layers: Vec<Layer>,
    pub norm: Tensor,
    /// `hidden × vocab`.
    pub lm_head: Tensor,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// One sequence's slice of a packed batch.
#[derive(Debug, Clone)]
pub struct SeqSlice<'a> {
    /// Rows of the batch (`start_row .. start_row + len`).
    pub start_row: usize,
    pub len: usize,
    /// Position of the first fed token.
    pub start_pos: usize,
    pub table: &'a [BlockId],
}

impl LlamaModel {
    pub fn new(
        config: LlamaConfig,
        embed: Tensor,
        layers: Vec<Layer>,
        norm: Tensor,
        lm_head: Tensor,
    ) -> Result<Self, ExecError> {
        let half = config.head_dim / 2;
        let max = config.max_position.max(1);
        let (mut cos, mut sin) = (Vec::with_capacity(max * half), Vec::with_capacity(max * half));
        for p in 0..max {
            for i in 0..half {
                let inv = config.rope_theta.powf(-(2.0 * i as f64) / config.head_dim as f64);
                let a = p as f64 * inv;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        Ok(Self { config, embed, layers, norm, lm_head, cos, sin })
    }

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
        let c = &self.config;
        let t = ids.len();
        if let Some(&p) = positions.iter().find(|&&p| p >= c.max_position) {
            return Err(ExecError::InvalidStep(format!(
                "position {p} beyond the model's {} positions",
                c.max_position
            )));
        }
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= c.vocab) {
            return Err(ExecError::InvalidStep(format!("token {bad} beyond the vocabulary of {}", c.vocab)));
        }
        for s in seqs {
            cache.check_table(s.table)?;
        }
        let dev = Device::Cpu;
        let (qd, kvd, d) = (c.heads * c.head_dim, c.kv_dim(), c.head_dim);
        let shape = AttnShape { heads: c.heads, kv_heads: c.kv_heads, head_dim: d };
        let idx = Tensor::from_slice(ids, t, &dev)?;
        let mut x = self.embed.index_select(&idx, 0)?;
        let mut attn_out = vec![0.0f32; t * qd];
        for (li, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, c.rms_eps as f32)?;
            let mut qkv = h.matmul(&layer.wqkv)?;
            if let Some(b) = &layer.bqkv {
                qkv = qkv.broadcast_add(b)?;
            }
            let mut qkv: Vec<f32> = qkv.flatten_all()?.to_vec1()?;
            let row = qd + 2 * kvd;
            for (r, &pos) in positions.iter().enumerate() {
                let base = r * row;
                for head in 0..c.heads + c.kv_heads {
                    let o = base + head * d;
                    self.rope(&mut qkv[o..o + d], pos);
                }
            }
            for s in seqs {
                let rows = s.start_row..s.start_row + s.len;
                for (r, &pos) in rows.clone().zip(&positions[rows]) {
                    let base = r * row;
                    cache.write(li, s.table, pos, &qkv[base + qd..base + qd + kvd], &qkv[base + qd + kvd..base + row]);
                }
            }
            // Work items of at most ATTN_CHUNK tokens of one sequence, spread over the cores.
            let mut items = Vec::new();
            let mut rest: &mut [f32] = &mut attn_out;
            for s in seqs {
                let mut first = 0;
                while first < s.len {
                    let len = ATTN_CHUNK.min(s.len - first);
                    let (mine, tail) = std::mem::take(&mut rest).split_at_mut(len * qd);
                    rest = tail;
                    items.push((s, first, len, mine));
                    first += len;
                }
            }
            let cache_ref: &PagedKvCache = cache;
            let qkv_ref = &qkv;
            let run = |scratch: &mut Vec<f32>, (s, first, len, out): (&SeqSlice<'_>, usize, usize, &mut [f32])| {
                let mut q = Vec::with_capacity(len * qd);
                for r in s.start_row + first..s.start_row + first + len {
                    q.extend_from_slice(&qkv_ref[r * row..r * row + qd]);
                }
                let call =
                    AttnCall { cache: cache_ref, layer: li, table: s.table, start: s.start_pos + first, q: &q, shape };
                attend_sequence(call, out, scratch);
            };
            items.into_par_iter().for_each_init(Vec::new, run);
            let a = Tensor::from_slice(&attn_out, (t, qd), &dev)?;
            x = (x + a.matmul(&layer.wo)?)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, c.rms_eps as f32)?;
            let gu = h.matmul(&layer.w_gate_up)?;
            let gate = gu.narrow(1, 0, c.intermediate)?;
            let up = gu.narrow(1, c.intermediate, c.intermediate)?;
            let act = (candle_nn::ops::silu(&gate)? * up)?;
            x = (x + act.matmul(&layer.w_down)?)?;
        }
        if sample_rows.is_empty() {
            return Ok(Vec::new());
        }
        let rows =
            Tensor::from_vec(sample_rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), sample_rows.len(), &dev)?;
        let last = x.index_select(&rows, 0)?;
        let h = candle_nn::ops::rms_norm(&last, &self.norm, c.rms_eps as f32)?;
        let logits = h.matmul(&self.lm_head)?.to_dtype(DType::F32)?;
        Ok(logits.to_vec2()?)
    }
}
