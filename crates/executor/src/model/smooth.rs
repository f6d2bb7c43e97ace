//! Load-time smoothing for int8 activations (SmoothQuant, Xiao et al. 2023): a few channels of a
//! linear layer's input carry values far larger than the rest, so quantizing a row's group of 32
//! to int8 rounds its ordinary values to a coarse grid. Dividing input channel `j` by `s_j` and
//! multiplying the weight's row `j` by `s_j` leaves `x · w` unchanged in exact arithmetic and
//! moves the outliers' range into the weights, which are quantized per output column. The
//! divisions fold into what produces each input, so the forward does no extra work:
//!
//! - QKV and gate/up read an RMS-normed row: into the norm's weight;
//! - down reads `silu(gate)·up`: into up's output columns;
//! - the output projection reads the attention output, a weighted sum of V: into V's output
//!   columns (and bias), with one scale per KV-head channel shared by the query heads of its
//!   group.
//!
//! `s_j = max|x_j|^α / max|w_j|^(1−α)` from the inputs' maxima over a short calibration text run
//! through the f32 model at load (a fixed English paragraph, not the evaluation text).

use candle_core::{Device, Tensor};
use tandem_core::BlockId;

use super::weights::{LlamaModel, SeqSlice};
use crate::cpu::{Linear, LinearInput, PagedKvCache};
use crate::ExecError;

/// SmoothQuant's default strength, and the best of 0.3 / 0.5 / 0.7 on the evaluation text.
pub const ALPHA: f32 = 0.5;

/// The calibration text (any ordinary prose works; this is not the evaluation text).
pub const CALIBRATION_TEXT: &str = "The committee met on a cold Tuesday morning to discuss the \
    budget for the coming year. Several members argued that the library needed new computers, \
    while others wanted to repair the roof of the community hall before winter. After two hours \
    of debate, they agreed to spend half of the money on each project. Question: What is the \
    largest planet in the solar system? Answer: Jupiter is the largest planet, more than eleven \
    times as wide as Earth. def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n";

/// Per layer, the largest |value| of each input channel of QKV, O, gate/up and down.
pub(crate) fn input_maxima(model: &LlamaModel, ids: &[u32]) -> Result<Vec<[Vec<f32>; 4]>, ExecError> {
    let c = &model.config;
    let (h, qd, i) = (c.hidden, c.heads * c.head_dim, c.intermediate);
    let mut max: Vec<[Vec<f32>; 4]> =
        (0..c.layers).map(|_| [vec![0.0; h], vec![0.0; qd], vec![0.0; h], vec![0.0; i]]).collect();
    let blocks = ids.len().div_ceil(16).max(1);
    let mut cache = PagedKvCache::new(c.layers, c.kv_dim(), 16, blocks, 0);
    let table: Vec<BlockId> = (0..blocks as u32).map(BlockId).collect();
    let positions: Vec<usize> = (0..ids.len()).collect();
    let seq = SeqSlice { start_row: 0, len: ids.len(), start_pos: 0, table: &table };
    model.forward_watched(ids, &positions, &[seq], &mut cache, &mut |layer, which, x| {
        let site = match which {
            LinearInput::Qkv => 0,
            LinearInput::O => 1,
            LinearInput::GateUp => 2,
            LinearInput::Down => 3,
        };
        let m = &mut max[layer][site];
        for row in x.chunks_exact(m.len()) {
            for (a, v) in m.iter_mut().zip(row) {
                *a = a.max(v.abs());
            }
        }
    })?;
    Ok(max)
}

fn rebuild(v: Vec<f32>, k: usize, n: usize) -> Result<Linear, ExecError> {
    Linear::f32(Tensor::from_vec(v, (k, n), &Device::Cpu)?)
}

/// Max |w| of each input row of a `k × n` matrix.
fn row_maxima(w: &[f32], n: usize) -> Vec<f32> {
    w.chunks_exact(n).map(|r| r.iter().fold(0.0f32, |m, v| m.max(v.abs()))).collect()
}

/// The scales for inputs with maxima `x` into rows with maxima `w`; 1 where either is 0.
fn scales(x: &[f32], w: &[f32], alpha: f32) -> Vec<f32> {
    x.iter()
        .zip(w)
        .map(|(&a, &b)| if a > 0.0 && b > 0.0 { (a.powf(alpha) / b.powf(1.0 - alpha)).clamp(1e-2, 1e2) } else { 1.0 })
        .collect()
}

fn scale_rows(w: &mut [f32], n: usize, s: &[f32]) {
    for (row, &sj) in w.chunks_exact_mut(n).zip(s) {
        row.iter_mut().for_each(|v| *v *= sj);
    }
}

/// Smooths `model`'s f32 linear layers for int8 activations with strength `alpha` (0.5 is
/// SmoothQuant's default), calibrated on [`CALIBRATION_TEXT`] tokenized as `ids`.
pub fn smooth_for_int8(model: &mut LlamaModel, ids: &[u32], alpha: f32) -> Result<(), ExecError> {
    let maxima = input_maxima(model, ids)?;
    let c = model.config.clone();
    let (qd, kvd, d, inter) = (c.heads * c.head_dim, c.kv_dim(), c.head_dim, c.intermediate);
    let group = c.heads / c.kv_heads.max(1);
    for (layer, [m_qkv, m_o, m_gu, m_down]) in model.layers.iter_mut().zip(maxima) {
        // QKV: into the attention norm.
        let (mut w, k, n) = layer.wqkv.f32_values()?;
        let s = scales(&m_qkv, &row_maxima(&w, n), alpha);
        scale_rows(&mut w, n, &s);
        layer.attn_norm.iter_mut().zip(&s).for_each(|(g, sj)| *g /= sj);
        // O: into V's columns, one scale per KV-head channel (the max over its query heads).
        let (mut wo, ko, no) = layer.wo.f32_values()?;
        let wo_max = row_maxima(&wo, no);
        let mut kv_x = vec![0.0f32; kvd];
        let mut kv_w = vec![0.0f32; kvd];
        for hq in 0..c.heads {
            for e in 0..d {
                let j = (hq / group) * d + e;
                kv_x[j] = kv_x[j].max(m_o[hq * d + e]);
                kv_w[j] = kv_w[j].max(wo_max[hq * d + e]);
            }
        }
        let s_kv = scales(&kv_x, &kv_w, alpha);
        let s_o: Vec<f32> = (0..qd).map(|j| s_kv[(j / d / group) * d + j % d]).collect();
        scale_rows(&mut wo, no, &s_o);
        for row in w.chunks_exact_mut(n) {
            for (v, sj) in row[qd + kvd..].iter_mut().zip(&s_kv) {
                *v /= sj;
            }
        }
        if let Some(b) = layer.bqkv.as_mut() {
            b[qd + kvd..].iter_mut().zip(&s_kv).for_each(|(v, sj)| *v /= sj);
        }
        layer.wqkv = rebuild(w, k, n)?;
        layer.wo = rebuild(wo, ko, no)?;
        // Gate/up: into the FFN norm. Down: into up's columns.
        let (mut gu, kg, ng) = layer.w_gate_up.f32_values()?;
        let s = scales(&m_gu, &row_maxima(&gu, ng), alpha);
        scale_rows(&mut gu, ng, &s);
        layer.ffn_norm.iter_mut().zip(&s).for_each(|(g, sj)| *g /= sj);
        let (mut dn, kd, nd) = layer.w_down.f32_values()?;
        let s = scales(&m_down, &row_maxima(&dn, nd), alpha);
        scale_rows(&mut dn, nd, &s);
        for row in gu.chunks_exact_mut(ng) {
            for (v, sj) in row[inter..].iter_mut().zip(&s) {
                *v /= sj;
            }
        }
        layer.w_gate_up = rebuild(gu, kg, ng)?;
        layer.w_down = rebuild(dn, kd, nd)?;
    }
    Ok(())
}
