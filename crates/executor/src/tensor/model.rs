//! The Llama-family forward on candle tensors of any device — CUDA (bf16) under the `cuda`
//! feature, the CPU (f32) in tests — over the scheduler's packed batch and a paged KV cache.
//!
//! Same math and layout as `crate::cpu`'s forward (which it is tested against), written with
//! candle ops so that every op has a CUDA kernel: cuBLAS matmuls, candle's `rms_norm`, `rope` /
//! `rope_i`. The paged cache is one `(blocks · block_size) × kv_dim` tensor per layer for K and
//! for V. Attention is `super::paged`'s: once per step the block tables, slots, decode rows and
//! prefill tiles go to the device ([`DevicePlan`]); per layer one kernel writes the step's new
//! K/V rows into their slots and the attention kernels (decode split-K + reduce, prefill tiles)
//! read K/V through the block tables — on the CPU device, their reference runs instead.

use candle_core::{DType, Device, IndexOp, Tensor};

use super::paged::{self, AttentionPlan, AttentionShape, DevicePlan};
use crate::cpu::Linear;
use crate::model::{LlamaConfig, LlamaModel, RopeStyle, SeqSlice};
use crate::ExecError;

/// One layer's weights on the device.
#[derive(Debug)]
struct Layer {
    attn_norm: Tensor,
    wqkv: Tensor,
    bqkv: Option<Tensor>,
    wo: Tensor,
    ffn_norm: Tensor,
    w_gate_up: Tensor,
    w_down: Tensor,
}

/// A model's weights on a candle device.
#[derive(Debug)]
pub struct TensorModel {
    pub config: LlamaConfig,
    device: Device,
    dtype: DType,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Tensor,
    /// `max_position × head_dim/2`, f32.
    cos: Tensor,
    sin: Tensor,
}

/// The paged KV cache on the device: per layer, `slots × kv_dim` for K and for V.
#[derive(Debug)]
pub struct TensorKvCache {
    pub block_size: usize,
    pub num_blocks: usize,
    pub k: Vec<Tensor>,
    pub v: Vec<Tensor>,
}

impl TensorKvCache {
    pub fn new(model: &TensorModel, block_size: usize, num_blocks: usize) -> Result<Self, ExecError> {
        let c = &model.config;
        let zeros = || Tensor::zeros((num_blocks * block_size, c.kv_dim()), model.dtype, &model.device);
        let (mut k, mut v) = (Vec::with_capacity(c.layers), Vec::with_capacity(c.layers));
        for _ in 0..c.layers {
            k.push(zeros()?);
            v.push(zeros()?);
        }
        Ok(Self { block_size, num_blocks, k, v })
    }
}

/// One sequence of a packed batch: the CPU forward's [`SeqSlice`].
pub type TensorSeq<'a> = SeqSlice<'a>;

fn weight(l: &Linear, dev: &Device, dtype: DType) -> Result<Tensor, ExecError> {
    match l {
        Linear::F32(t) => Ok(t.to_device(dev)?.to_dtype(dtype)?),
        Linear::Q8(_) | Linear::Q4(_) => {
            Err(ExecError::Device("load the model with f32 weights for the tensor executor".into()))
        }
    }
}

fn vector(v: &[f32], dev: &Device, dtype: DType) -> Result<Tensor, ExecError> {
    Ok(Tensor::from_slice(v, v.len(), dev)?.to_dtype(dtype)?)
}

impl TensorModel {
    /// Moves a model loaded with f32 weights onto `device` in `dtype` (bf16 on a GPU).
    pub fn from_cpu(m: &LlamaModel, device: &Device, dtype: DType) -> Result<Self, ExecError> {
        let c = m.config.clone();
        let layers = m
            .layers
            .iter()
            .map(|l| {
                Ok(Layer {
                    attn_norm: vector(&l.attn_norm, device, dtype)?,
                    wqkv: weight(&l.wqkv, device, dtype)?,
                    bqkv: l.bqkv.as_ref().map(|b| vector(b, device, dtype)).transpose()?,
                    wo: weight(&l.wo, device, dtype)?,
                    ffn_norm: vector(&l.ffn_norm, device, dtype)?,
                    w_gate_up: weight(&l.w_gate_up, device, dtype)?,
                    w_down: weight(&l.w_down, device, dtype)?,
                })
            })
            .collect::<Result<Vec<_>, ExecError>>()?;
        let (half, max) = (c.head_dim / 2, c.max_position.max(1));
        let (cos, sin) = m.rope_tables();
        Ok(Self {
            embed: m.embed.to_device(device)?.to_dtype(dtype)?,
            layers,
            norm: vector(&m.norm, device, dtype)?,
            lm_head: weight(&m.lm_head, device, dtype)?,
            cos: Tensor::from_slice(cos, (max, half), device)?,
            sin: Tensor::from_slice(sin, (max, half), device)?,
            device: device.clone(),
            dtype,
            config: c,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Rotates `x` (`t × heads·d`) at `positions` (a u32 tensor of `t`).
    fn rope(&self, x: &Tensor, heads: usize, positions: &Tensor) -> Result<Tensor, ExecError> {
        let c = &self.config;
        let t = x.dim(0)?;
        let cos = self.cos.index_select(positions, 0)?.to_dtype(self.dtype)?;
        let sin = self.sin.index_select(positions, 0)?.to_dtype(self.dtype)?;
        // (t, heads, d) → (1, heads, t, d), what candle's rope kernels take.
        let xs = x.reshape((t, heads, c.head_dim))?.transpose(0, 1)?.unsqueeze(0)?.contiguous()?;
        let out = match c.rope_style {
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&xs, &cos, &sin)?,
            RopeStyle::Half => candle_nn::rotary_emb::rope(&xs, &cos, &sin)?,
        };
        Ok(out.squeeze(0)?.transpose(0, 1)?.reshape((t, heads * c.head_dim))?)
    }

    /// Runs the packed batch; returns the logits (f32, on the host) of `sample_rows`.
    pub fn forward(
        &self,
        ids: &[u32],
        positions: &[usize],
        seqs: &[TensorSeq<'_>],
        sample_rows: &[usize],
        cache: &mut TensorKvCache,
    ) -> Result<Vec<Vec<f32>>, ExecError> {
        let c = &self.config;
        let t = ids.len();
        c.check_step(ids, positions)?;
        let dev = &self.device;
        let shape =
            AttentionShape { heads: c.heads, kv_heads: c.kv_heads, head_dim: c.head_dim, block_size: cache.block_size };
        // The step's tables, built once and read by every layer's KV write and attention.
        let plan = DevicePlan::new(AttentionPlan::new(shape, seqs, t, cache.num_blocks)?, dev)?;
        let (qd, kvd) = (c.heads * c.head_dim, c.kv_dim());
        let eps = c.rms_eps as f32;
        let scale = 1.0 / (c.head_dim as f32).sqrt();
        let pos = Tensor::from_vec(positions.iter().map(|&p| p as u32).collect::<Vec<_>>(), t, dev)?;
        let mut x = self.embed.index_select(&Tensor::from_slice(ids, t, dev)?, 0)?;
        for (li, l) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &l.attn_norm, eps)?;
            let mut qkv = h.matmul(&l.wqkv)?;
            if let Some(b) = &l.bqkv {
                qkv = qkv.broadcast_add(b)?;
            }
            let q = self.rope(&qkv.narrow(1, 0, qd)?, c.heads, &pos)?;
            let k = self.rope(&qkv.narrow(1, qd, kvd)?, c.kv_heads, &pos)?;
            let v = qkv.narrow(1, qd + kvd, kvd)?.contiguous()?;
            paged::write_slots(&cache.k[li], &k, &plan)?;
            paged::write_slots(&cache.v[li], &v, &plan)?;
            let attn = paged::attention(&q, &cache.k[li], &cache.v[li], &plan, scale)?;
            x = (x + attn.matmul(&l.wo)?)?;
            let h = candle_nn::ops::rms_norm(&x, &l.ffn_norm, eps)?;
            let gu = h.matmul(&l.w_gate_up)?;
            let act = (candle_nn::ops::silu(&gu.narrow(1, 0, c.intermediate)?)?
                * gu.narrow(1, c.intermediate, c.intermediate)?)?;
            x = (x + act.matmul(&l.w_down)?)?;
        }
        if sample_rows.is_empty() {
            return Ok(Vec::new());
        }
        let rows = Tensor::from_vec(sample_rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), sample_rows.len(), dev)?;
        let last = candle_nn::ops::rms_norm(&x.index_select(&rows, 0)?, &self.norm, eps)?;
        let logits = last.matmul(&self.lm_head)?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        Ok((0..sample_rows.len()).map(|i| logits.i(i).and_then(|r| r.to_vec1())).collect::<Result<_, _>>()?)
    }
}
