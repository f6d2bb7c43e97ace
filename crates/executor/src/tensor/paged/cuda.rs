//! Launching the paged-attention kernels on a candle CUDA device's stream (cudarc's launch
//! builder, as candle's own kernels launch). The kernels are `kernels/paged_attention.cu`,
//! compiled to PTX for `CUDA_COMPUTE_CAP` by build.rs when this crate is built with the `cuda`
//! feature, embedded in the binary and loaded (JIT-compiled by the driver) on first use.
//!
//! Why PTX built with the binary rather than NVRTC at run time: the `cuda` build already runs
//! nvcc (candle's kernels), so a kernel that does not compile fails the build here and not the
//! first request on the GPU machine; nothing beyond the driver is needed where tandem runs; and
//! the specialisations (head_dim 32/64/96/128) are few enough to ship all of them.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{bail, CudaStorage, Layout, Storage, Tensor};
use half::bf16;

use super::ops::DevicePlan;
use super::plan::{KERNEL_HEAD_DIMS, NUM_THREADS};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/paged_attention.ptx"));
const MODULE: &str = "tandem_paged_attention";

fn view<'a, T: CudaDType>(s: &'a CudaStorage, l: &Layout) -> candle_core::Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(s.as_cuda_slice::<T>()?.slice(a..b)),
        None => bail!("paged attention: a non-contiguous input"),
    }
}

fn cuda(s: &Storage) -> candle_core::Result<&CudaStorage> {
    match s {
        Storage::Cuda(c) => Ok(c),
        _ => bail!("paged attention: every input on the same CUDA device"),
    }
}

/// A u32 table of the plan, as the kernels read it.
fn u32s(t: &Tensor) -> candle_core::Result<(candle_core::StorageRef<'_>, Layout)> {
    let (s, l) = t.storage_and_layout();
    Ok((s, l.clone()))
}

fn cfg(grid: (u32, u32, u32), threads: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: grid, block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

pub(super) fn attention(
    q: &CudaStorage,
    ql: &Layout,
    k: &Tensor,
    v: &Tensor,
    plan: &DevicePlan,
    scale: f32,
) -> candle_core::Result<CudaStorage> {
    let p = &plan.host;
    let s = p.shape;
    if !KERNEL_HEAD_DIMS.contains(&s.head_dim) {
        bail!("paged attention: no kernel for head_dim {} (built for {KERNEL_HEAD_DIMS:?})", s.head_dim)
    }
    // Rows and tiles go on grid x (2^31 - 1); heads and partitions on y and z (65,535).
    if s.heads > 65_535 || p.max_partitions > 65_535 {
        bail!("paged attention: {} heads, {} partitions exceed the grid", s.heads, p.max_partitions)
    }
    let dev = q.device().clone();
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let (q, k, v) = (view::<bf16>(q, ql)?, view::<bf16>(cuda(&ks)?, kl)?, view::<bf16>(cuda(&vs)?, vl)?);
    let Some(t) = &plan.tables else { bail!("paged attention: the plan is not on the device") };
    let (tables, tl) = u32s(&t.block_tables)?;
    let (ctx, cl) = u32s(&t.ctx_lens)?;
    let (rows, rl) = u32s(&t.decode_rows)?;
    let (tiles, til) = u32s(&t.tiles)?;
    let tables = view::<u32>(cuda(&tables)?, &tl)?;
    let ctx = view::<u32>(cuda(&ctx)?, &cl)?;
    let rows = view::<u32>(cuda(&rows)?, &rl)?;
    let tiles = view::<u32>(cuda(&tiles)?, &til)?;
    let out = dev.alloc_zeros::<bf16>(p.rows * s.heads * s.head_dim)?;
    let (heads, kv_heads, bs, max_blocks) =
        (s.heads as u32, s.kv_heads as u32, s.block_size as u32, p.max_blocks as u32);
    let hd = s.head_dim;

    let decodes = p.num_decode() as u32;
    if decodes > 0 {
        let parts = p.max_partitions as u32;
        // Temporaries for the split-K reduce (one f32 each when one partition suffices).
        let per = if parts > 1 { (decodes * heads * parts) as usize } else { 1 };
        let tmp_out = dev.alloc_zeros::<f32>(per * if parts > 1 { hd } else { 1 })?;
        let max_logits = dev.alloc_zeros::<f32>(per)?;
        let exp_sums = dev.alloc_zeros::<f32>(per)?;
        let func = dev.get_or_load_custom_func(&format!("paged_decode_bf16_hd{hd}"), MODULE, PTX)?;
        let mut b = func.builder();
        b.arg(&out).arg(&tmp_out).arg(&max_logits).arg(&exp_sums).arg(&q).arg(&k).arg(&v);
        b.arg(&tables)
            .arg(&ctx)
            .arg(&rows)
            .arg(&max_blocks)
            .arg(&heads)
            .arg(&kv_heads)
            .arg(&bs)
            .arg(&parts)
            .arg(&scale);
        // SAFETY: the arguments match the kernel's signature; every index it reads was checked
        // on the host (AttentionPlan::new, ops::attention's shapes).
        unsafe { b.launch(cfg((decodes, heads, parts), NUM_THREADS as u32)) }.w()?;
        if parts > 1 {
            let func = dev.get_or_load_custom_func(&format!("paged_decode_reduce_bf16_hd{hd}"), MODULE, PTX)?;
            let mut b = func.builder();
            b.arg(&out).arg(&tmp_out).arg(&max_logits).arg(&exp_sums).arg(&ctx).arg(&rows).arg(&heads).arg(&parts);
            // SAFETY: as above; the temporaries hold decodes × heads × parts entries.
            unsafe { b.launch(cfg((decodes, heads, 1), hd as u32)) }.w()?;
        }
    }
    let ntiles = p.num_tiles() as u32;
    if ntiles > 0 {
        let func = dev.get_or_load_custom_func(&format!("paged_prefill_bf16_hd{hd}"), MODULE, PTX)?;
        let mut b = func.builder();
        b.arg(&out).arg(&q).arg(&k).arg(&v).arg(&tables).arg(&tiles);
        b.arg(&max_blocks).arg(&heads).arg(&kv_heads).arg(&bs).arg(&scale);
        // SAFETY: as above.
        unsafe { b.launch(cfg((ntiles, heads, 1), NUM_THREADS as u32)) }.w()?;
    }
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

/// A copying kernel's launch: `kernel(dst, src, index, scalar)` over `grid` blocks of `threads`.
#[allow(clippy::too_many_arguments)]
pub(super) fn launch_copy(
    kernel: &str,
    dst: &mut CudaStorage,
    dl: &Layout,
    src: &CudaStorage,
    sl: &Layout,
    index: &Tensor,
    grid: usize,
    threads: u32,
    scalar: usize,
) -> candle_core::Result<()> {
    let dev = dst.device().clone();
    let src = view::<bf16>(src, sl)?;
    let (it, itl) = u32s(index)?;
    let index = view::<u32>(cuda(&it)?, &itl)?;
    let Some((a, b)) = dl.contiguous_offsets() else { bail!("{kernel}: a non-contiguous destination") };
    let mut out = dst.as_cuda_slice_mut::<bf16>()?.slice_mut(a..b);
    let scalar = scalar as u32;
    let func = dev.get_or_load_custom_func(kernel, MODULE, PTX)?;
    let mut builder = func.builder();
    builder.arg(&mut out).arg(&src).arg(&index).arg(&scalar);
    // SAFETY: the arguments match the kernel's signature; every index was checked on the host
    // (the plan's slots, ops::check_blocks's blocks).
    unsafe { builder.launch(cfg((grid as u32, 1, 1), threads)) }.w()?;
    Ok(())
}
