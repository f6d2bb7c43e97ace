//! Real model execution on the CPU: our own Llama-family forward over the scheduler's packed,
//! variable-length batch (`forward.rs`), reading and writing K/V through its block tables
//! (paged attention, `attention.rs`, over `kv_cache.rs`), with f32 (candle's gemm), int8
//! ([`q8`]) or 4-bit ([`q4`]) linear layers (`linear.rs`), and the [`CpuExecutor`]. The model itself (config,
//! loading, weights, sampling) is device-neutral, in `crate::model`.
//!
//! candle-transformers' models keep one dense KV cache and one position for the whole batch, so
//! they cannot serve a continuous batch; this module follows their layer math (and the Llama
//! paper / HF `modeling_llama.py`) but owns the batch layout and the cache.

mod attention;
#[cfg(target_arch = "x86_64")]
mod attention_avx512;
mod executor;
mod forward;
pub(crate) use forward::LinearInput;
mod kv_cache;
mod linear;
pub mod q4;
pub mod q8;
mod streams;
mod unsynced;

pub use executor::CpuExecutor;
pub use kv_cache::PagedKvCache;
pub use linear::Linear;

/// Which kernel variants this CPU runs (chosen at run time), for reports: the int8 GEMM and
/// attention.
pub fn kernels() -> String {
    let (gemm, int4) = (q8::Kernel::detect().name(), q4::Kernel::detect().name());
    let attn = attention::kernel_name();
    format!("int8 GEMM: {gemm}; int4 GEMM: {int4}; {attn}")
}
