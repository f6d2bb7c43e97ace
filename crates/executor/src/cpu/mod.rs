//! Real model execution on the CPU: our own Llama-family forward (Llama, SmolLM2, Qwen2/2.5)
//! over the scheduler's packed, variable-length batch, reading and writing K/V through its block
//! tables (paged attention), on candle tensors for the matmuls.
//!
//! candle-transformers' models keep one dense KV cache and one position for the whole batch, so
//! they cannot serve a continuous batch; this module follows their layer math (and the Llama
//! paper / HF `modeling_llama.py`) but owns the batch layout and the cache. GGUF weights are
//! dequantized at load (candle's quantized matmuls are scalar for some types and about ten times
//! slower) and safetensors converted, to f32; the linear layers then stay f32 or are requantized
//! to our own int8 format ([`q8`], [`WeightFormat`]).

mod attention;
mod config;
mod executor;
mod kv_cache;
mod linear;
mod load;
mod model;
pub mod q8;
mod sampling;

pub use config::{LlamaConfig, RopeStyle};
pub use executor::CpuExecutor;
pub use kv_cache::PagedKvCache;
pub use linear::{Linear, WeightFormat};
pub use load::{load_model, load_model_as, model_bytes, LoadedModel, ModelFiles};
pub use model::{LlamaModel, SeqSlice};
pub use sampling::{sample, token_logprobs};
