//! Real model execution on the CPU: our own Llama-family forward (Llama, SmolLM2, Qwen2/2.5)
//! over the scheduler's packed, variable-length batch, reading and writing K/V through its block
//! tables (paged attention), on candle tensors for the matmuls.
//!
//! candle-transformers' models keep one dense KV cache and one position for the whole batch, so
//! they cannot serve a continuous batch; this module follows their layer math (and the Llama
//! paper / HF `modeling_llama.py`) but owns the batch layout and the cache. Weights are f32 on
//! the CPU: GGUF weights are dequantized at load (candle's quantized matmuls are scalar for some
//! types and about ten times slower), safetensors are converted.

mod attention;
mod config;
mod executor;
mod kv_cache;
mod load;
mod model;
mod sampling;

pub use config::{LlamaConfig, RopeStyle};
pub use executor::CpuExecutor;
pub use kv_cache::PagedKvCache;
pub use load::{load_model, LoadedModel, ModelFiles};
pub use model::{LlamaModel, SeqSlice};
pub use sampling::sample;
