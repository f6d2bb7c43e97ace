//! The model on candle tensors of any device: [`TensorModel`] (the Llama-family forward over
//! the packed batch and a paged KV cache in device memory) and [`TensorExecutor`]. This is the
//! CUDA path — built with the `cuda` feature (`Device::new_cuda`, bf16) — and runs on the CPU
//! too, where it is tested against `crate::cpu` (f32). Attention, the KV write and the swap
//! copies are `paged`'s kernels (their CPU reference on the CPU). See docs/cuda.md for what is
//! still to be built and measured on a GPU.

mod executor;
mod model;
pub mod paged;
pub mod parity;

pub use executor::TensorExecutor;
pub use model::{TensorKvCache, TensorModel, TensorSeq};

/// The first CUDA device (on its own stream), when built with the `cuda` feature and a GPU and
/// driver are present.
pub fn cuda_device() -> Result<candle_core::Device, crate::ExecError> {
    #[cfg(feature = "cuda")]
    {
        // cudarc panics rather than erring without a driver: catch it.
        match std::panic::catch_unwind(|| candle_core::Device::new_cuda_with_stream(0)) {
            Ok(Ok(d)) => Ok(d),
            // candle's error text carries a backtrace: keep its first line.
            Ok(Err(e)) => {
                let e = e.to_string();
                Err(crate::ExecError::Device(format!("no CUDA device: {}", e.lines().next().unwrap_or("")).into()))
            }
            Err(_) => Err(crate::ExecError::Device("no CUDA driver on this machine".into())),
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err(crate::ExecError::Device("this build has no CUDA support (build with --features cuda)".into()))
    }
}

/// Where the tensor executor runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorDevice {
    /// The first CUDA GPU, bf16 weights and KV cache.
    Cuda,
    /// The CPU, f32 (for checking the CUDA path without a GPU).
    Cpu,
}

/// The candle device and dtype of the tensor executor on `device`: the GPU in bf16; the CPU in
/// f32, or in bf16 with `bf16_on_cpu` (to see bf16's own error without a GPU).
pub fn device_and_dtype(
    device: TensorDevice,
    bf16_on_cpu: bool,
) -> Result<(candle_core::Device, candle_core::DType), crate::ExecError> {
    Ok(match device {
        TensorDevice::Cuda => (cuda_device()?, candle_core::DType::BF16),
        TensorDevice::Cpu if bf16_on_cpu => (candle_core::Device::Cpu, candle_core::DType::BF16),
        TensorDevice::Cpu => (candle_core::Device::Cpu, candle_core::DType::F32),
    })
}

/// A tensor executor for `model` (loaded with f32 weights) on `device`, with as many
/// `block_size`-token KV blocks as fit in `kv_bytes`; also that block count.
pub fn build(
    model: crate::model::LlamaModel,
    device: TensorDevice,
    block_size: usize,
    kv_bytes: u64,
) -> Result<(TensorExecutor, usize), crate::ExecError> {
    let (dev, dtype) = device_and_dtype(device, false)?;
    if device == TensorDevice::Cuda && !paged::kernels_cover(model.config.head_dim, dtype) {
        return Err(crate::ExecError::Device(
            format!(
                "head_dim {} has no paged-attention kernel (built for {:?})",
                model.config.head_dim,
                paged::KERNEL_HEAD_DIMS
            )
            .into(),
        ));
    }
    let tm = TensorModel::from_cpu(&model, &dev, dtype)?;
    drop(model);
    let per_block = tm.config.kv_bytes_per_block(block_size, dtype.size_in_bytes());
    let blocks = ((kv_bytes / per_block.max(1)) as usize).max(1);
    Ok((TensorExecutor::new(tm, block_size, blocks)?, blocks))
}
