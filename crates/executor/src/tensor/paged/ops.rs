//! The kernels as candle ops: [`attention`] (a custom op on the step's queries reading one
//! layer's cache through the plan), [`write_slots`] (in place on a cache), [`gather_blocks`]
//! and [`scatter_blocks`] (the block copy, for swap). On a CUDA tensor each launches its kernel
//! on the device's stream (`cuda.rs`); on a CPU tensor each runs the reference. Inputs must be
//! contiguous; f32 or bf16 on the CPU, bf16 on the GPU.

use candle_core::{bail, CpuStorage, CustomOp1, DType, Device, InplaceOp2, Layout, Shape, Storage, Tensor};

use super::plan::AttentionPlan;
use super::reference;
use crate::ExecError;

/// A step's plan, with its tables copied to the device when that is a GPU (built once per
/// step, read by every layer).
#[derive(Debug)]
pub struct DevicePlan {
    pub host: AttentionPlan,
    #[cfg(feature = "cuda")]
    pub(super) tables: Option<DeviceTables>,
}

/// The plan's tables on a CUDA device.
#[cfg(feature = "cuda")]
#[derive(Debug)]
pub(super) struct DeviceTables {
    pub block_tables: Tensor,
    pub ctx_lens: Tensor,
    pub slots: Tensor,
    pub decode_rows: Tensor,
    pub tiles: Tensor,
}

/// `v` as a u32 tensor on `dev` (one 0 when empty: no zero-length device allocations; the
/// kernels never read it then, as their grid is empty).
#[cfg(feature = "cuda")]
pub(super) fn table(v: &[u32], dev: &Device) -> candle_core::Result<Tensor> {
    if v.is_empty() {
        return Tensor::from_slice(&[0u32], 1, dev);
    }
    Tensor::from_slice(v, v.len(), dev)
}

impl DevicePlan {
    pub fn new(host: AttentionPlan, dev: &Device) -> Result<Self, ExecError> {
        #[cfg(feature = "cuda")]
        let tables = match dev.is_cuda() {
            true => Some(DeviceTables {
                block_tables: table(&host.block_tables, dev)?,
                ctx_lens: table(&host.ctx_lens, dev)?,
                slots: table(&host.slots, dev)?,
                decode_rows: table(&host.decode_rows, dev)?,
                tiles: table(&host.tiles, dev)?,
            }),
            false => None,
        };
        #[cfg(not(feature = "cuda"))]
        let _ = dev;
        Ok(Self {
            host,
            #[cfg(feature = "cuda")]
            tables,
        })
    }
}

/// The contiguous elements of a CPU tensor's storage.
fn contiguous<'a, T>(v: &'a [T], l: &Layout) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("paged attention: a non-contiguous input"),
    }
}

fn contiguous_mut<'a, T>(v: &'a mut [T], l: &Layout) -> candle_core::Result<&'a mut [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&mut v[a..b]),
        None => bail!("paged attention: a non-contiguous destination"),
    }
}

/// Attention of the plan's rows (`q`: `rows × heads·head_dim`) over one layer's cache
/// (`k`, `v`: `num_blocks·block_size × kv_heads·head_dim`); the result is shaped like `q`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, plan: &DevicePlan, scale: f32) -> Result<Tensor, ExecError> {
    let p = &plan.host;
    let s = p.shape;
    let (qd, kvd) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
    let cache = (p.num_blocks * s.block_size, kvd);
    if q.dims2()? != (p.rows, qd) || k.dims2()? != cache || v.dims2()? != cache {
        return Err(ExecError::InvalidStep(format!(
            "paged attention: q {:?}, K {:?}, V {:?} against a plan of {} rows over {} blocks",
            q.dims(),
            k.dims(),
            v.dims(),
            p.rows,
            p.num_blocks
        )));
    }
    if p.rows == 0 {
        return Ok(q.clone());
    }
    Ok(q.contiguous()?.apply_op1_no_bwd(&Attention { k, v, plan, scale })?)
}

struct Attention<'a> {
    k: &'a Tensor,
    v: &'a Tensor,
    plan: &'a DevicePlan,
    scale: f32,
}

impl CustomOp1 for Attention<'_> {
    fn name(&self) -> &'static str {
        "paged-attention"
    }

    fn cpu_fwd(&self, q: &CpuStorage, ql: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (ks, kl) = self.k.storage_and_layout();
        let (vs, vl) = self.v.storage_and_layout();
        let p = &self.plan.host;
        let out = match (q, &*ks, &*vs) {
            (CpuStorage::F32(q), Storage::Cpu(CpuStorage::F32(k)), Storage::Cpu(CpuStorage::F32(v))) => {
                CpuStorage::F32(reference::attention(
                    p,
                    contiguous(q, ql)?,
                    contiguous(k, kl)?,
                    contiguous(v, vl)?,
                    self.scale,
                ))
            }
            (CpuStorage::BF16(q), Storage::Cpu(CpuStorage::BF16(k)), Storage::Cpu(CpuStorage::BF16(v))) => {
                CpuStorage::BF16(reference::attention(
                    p,
                    contiguous(q, ql)?,
                    contiguous(k, kl)?,
                    contiguous(v, vl)?,
                    self.scale,
                ))
            }
            _ => bail!("paged attention: q, K and V on the CPU, all f32 or all bf16"),
        };
        Ok((out, ql.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        q: &candle_core::CudaStorage,
        ql: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let out = super::cuda::attention(q, ql, self.k, self.v, self.plan, self.scale)?;
        Ok((out, ql.shape().clone()))
    }
}

/// Which copying kernel.
#[derive(Debug, Clone, Copy)]
enum CopyKind {
    /// `write_kv_slots`: row `r` of the source into slot `index[r]`; `scalar` = kv_dim.
    Slots,
    /// `copy_blocks`: block `index[2i]` of the source to block `index[2i + 1]`; `scalar` =
    /// elements of a block.
    Blocks,
}

/// A copying kernel with its index on the host (for the reference) and, on a CUDA device, on
/// the device.
struct CopyOp<'a> {
    kind: CopyKind,
    index: &'a [u32],
    #[cfg(feature = "cuda")]
    index_t: Option<&'a Tensor>,
    scalar: usize,
}

impl CopyOp<'_> {
    fn copy<T: Copy>(&self, dst: &mut [T], src: &[T]) {
        match self.kind {
            CopyKind::Slots => reference::write_slots(dst, src, self.index, self.scalar),
            CopyKind::Blocks => reference::copy_blocks(dst, src, self.index, self.scalar),
        }
    }
}

impl InplaceOp2 for CopyOp<'_> {
    fn name(&self) -> &'static str {
        match self.kind {
            CopyKind::Slots => "write_kv_slots_bf16",
            CopyKind::Blocks => "copy_blocks_bf16",
        }
    }

    fn cpu_fwd(&self, dst: &mut CpuStorage, dl: &Layout, src: &CpuStorage, sl: &Layout) -> candle_core::Result<()> {
        match (dst, src) {
            (CpuStorage::F32(d), CpuStorage::F32(s)) => self.copy(contiguous_mut(d, dl)?, contiguous(s, sl)?),
            (CpuStorage::BF16(d), CpuStorage::BF16(s)) => self.copy(contiguous_mut(d, dl)?, contiguous(s, sl)?),
            _ => bail!("{}: both tensors f32 or both bf16", self.name()),
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        dst: &mut candle_core::CudaStorage,
        dl: &Layout,
        src: &candle_core::CudaStorage,
        sl: &Layout,
    ) -> candle_core::Result<()> {
        let Some(index) = self.index_t else { bail!("{}: its index is not on the device", self.name()) };
        let (grid, threads) = match self.kind {
            CopyKind::Slots => (self.index.len(), super::plan::NUM_THREADS as u32),
            CopyKind::Blocks => (self.index.len() / 2, 256),
        };
        super::cuda::launch_copy(self.name(), dst, dl, src, sl, index, grid, threads, self.scalar)
    }
}

/// Writes row `r` of `rows` (`rows × kv_dim`) into slot `plan.slots[r]` of `cache`, in place.
pub fn write_slots(cache: &Tensor, rows: &Tensor, plan: &DevicePlan) -> Result<(), ExecError> {
    let (n, kvd) = rows.dims2()?;
    if n != plan.host.rows || cache.dim(1)? != kvd || cache.dtype() != rows.dtype() {
        return Err(ExecError::InvalidStep(format!(
            "KV write of {:?} rows into a {:?} cache",
            rows.dims(),
            cache.dims()
        )));
    }
    if n == 0 {
        return Ok(());
    }
    let op = CopyOp {
        kind: CopyKind::Slots,
        index: &plan.host.slots,
        #[cfg(feature = "cuda")]
        index_t: plan.tables.as_ref().map(|t| &t.slots),
        scalar: kvd,
    };
    Ok(cache.inplace_op2(&rows.contiguous()?, &op)?)
}

/// Checks that `cache` is `blocks·block_size × kv_dim` and that every block named is in it.
fn check_blocks(cache: &Tensor, blocks: &[u32], block_size: usize) -> Result<usize, ExecError> {
    let (slots, kvd) = cache.dims2()?;
    let num_blocks = slots / block_size.max(1);
    if let Some(b) = blocks.iter().find(|&&b| b as usize >= num_blocks) {
        return Err(ExecError::InvalidStep(format!("block copy of block {b} beyond the pool of {num_blocks}")));
    }
    Ok(block_size * kvd)
}

/// The `blocks` of `cache` copied out, in order: `blocks.len() × block_size·kv_dim`.
pub fn gather_blocks(cache: &Tensor, blocks: &[u32], block_size: usize) -> Result<Tensor, ExecError> {
    let elems = check_blocks(cache, blocks, block_size)?;
    // Pair i: cache block blocks[i] → staging block i.
    let pairs: Vec<u32> = blocks.iter().enumerate().flat_map(|(i, &b)| [b, i as u32]).collect();
    let out = Tensor::zeros((blocks.len(), elems), cache.dtype(), cache.device())?;
    if blocks.is_empty() {
        return Ok(out);
    }
    copy_blocks(&out, cache, &pairs, elems)?;
    Ok(out)
}

/// Writes `staging` (`blocks.len() × block_size·kv_dim`) into the `blocks` of `cache`, in place.
pub fn scatter_blocks(cache: &Tensor, staging: &Tensor, blocks: &[u32], block_size: usize) -> Result<(), ExecError> {
    let elems = check_blocks(cache, blocks, block_size)?;
    if staging.dims2()? != (blocks.len(), elems) || staging.dtype() != cache.dtype() {
        return Err(ExecError::InvalidStep(format!("block copy of {:?} into {} blocks", staging.dims(), blocks.len())));
    }
    if blocks.is_empty() {
        return Ok(());
    }
    let pairs: Vec<u32> = blocks.iter().enumerate().flat_map(|(i, &b)| [i as u32, b]).collect();
    copy_blocks(cache, staging, &pairs, elems)
}

/// `copy_blocks` of `pairs` from `src` into `dst`, in place.
fn copy_blocks(dst: &Tensor, src: &Tensor, pairs: &[u32], block_elems: usize) -> Result<(), ExecError> {
    #[cfg(feature = "cuda")]
    let index_t = if dst.device().is_cuda() { Some(table(pairs, dst.device())?) } else { None };
    let op = CopyOp {
        kind: CopyKind::Blocks,
        index: pairs,
        #[cfg(feature = "cuda")]
        index_t: index_t.as_ref(),
        scalar: block_elems,
    };
    Ok(dst.inplace_op2(&src.contiguous()?, &op)?)
}

/// Whether the GPU kernels cover `head_dim` and `dtype` (checked when a model is moved to CUDA).
pub fn kernels_cover(head_dim: usize, dtype: DType) -> bool {
    super::plan::KERNEL_HEAD_DIMS.contains(&head_dim) && dtype == DType::BF16
}
