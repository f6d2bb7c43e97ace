//! Real model execution on the CPU: our own Llama-family forward over the scheduler's packed,
//! variable-length batch (`forward.rs`), reading and writing K/V through its block tables
//! (paged attention, `attention.rs`, over `kv_cache.rs`), with f32 (candle's gemm), int8
//! ([`q8`]) or 4-bit ([`q4`]) linear layers (`linear.rs`), and the [`CpuExecutor`]. The model itself (config,
//! loading, weights, sampling) is device-neutral, in `crate::model`.
//!
//! candle-transformers' models keep one dense KV cache and one position for the whole batch, so
//! they cannot serve a continuous batch; this module follows their layer math (and the Llama
//! paper / HF `modeling_llama.py`) but owns the batch layout and the cache.

mod activation;
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

/// The widest integer GEMM kernel this process may run, from `TANDEM_CPU_GEMM`: `avx512` (no
/// limit, the default), `vnni` (the 256-bit AVX-512 VNNI tiles), `avx-vnni`, `avx2` or
/// `portable`. Each format runs the fastest of its kernels at or below the limit that the CPU
/// has, so one machine can compare them side by side (`tandem bench-model` prints which ran);
/// all give the same bits. Read once.
pub(crate) fn gemm_limit() -> u8 {
    static LIMIT: std::sync::OnceLock<u8> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        let Some(v) = std::env::var_os("TANDEM_CPU_GEMM") else { return GEMM_AVX512 };
        match v.to_string_lossy().as_ref() {
            "avx512" => GEMM_AVX512,
            "vnni" => GEMM_VNNI,
            "avx-vnni" => GEMM_AVX_VNNI,
            "avx2" => GEMM_AVX2,
            "portable" => GEMM_PORTABLE,
            other => {
                eprintln!(
                    "tandem: TANDEM_CPU_GEMM={other:?} is not one of avx512, vnni, avx-vnni, avx2, portable; not limiting"
                );
                GEMM_AVX512
            }
        }
    })
}

/// [`gemm_limit`]'s levels.
pub(crate) const GEMM_AVX512: u8 = 4;
pub(crate) const GEMM_VNNI: u8 = 3;
pub(crate) const GEMM_AVX_VNNI: u8 = 2;
pub(crate) const GEMM_AVX2: u8 = 1;
pub(crate) const GEMM_PORTABLE: u8 = 0;

/// Which kernel variants this CPU runs (chosen at run time), for reports: the int8 GEMM and
/// attention.
pub fn kernels() -> String {
    let (gemm, int4) = (q8::Kernel::detect().name(), q4::Kernel::detect().name());
    let attn = attention::kernel_name();
    format!("int8 GEMM: {gemm}; int4 GEMM: {int4}; {attn}")
}
