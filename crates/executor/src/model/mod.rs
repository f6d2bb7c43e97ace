//! The Llama-family model independent of the device that runs it (Llama, SmolLM2, Qwen2/2.5):
//! its config from GGUF metadata or `config.json` ([`LlamaConfig`]), loading weights and
//! tokenizer from a GGUF file or an HF directory ([`load_model_as`]), the weights as loaded
//! ([`LlamaModel`], [`WeightFormat`]), the packed batch's per-sequence slices ([`SeqSlice`]) and
//! sampling from logits. The CPU forward and kernels are in `crate::cpu`; the candle-tensor
//! forward (CUDA) in `crate::tensor`.
//!
//! GGUF weights are dequantized at load (candle's quantized matmuls are scalar for some types
//! and about ten times slower) and safetensors converted, to f32; the linear layers then stay
//! f32 or are requantized to tandem's int8 format (`crate::cpu::q8`).

mod config;
mod format;
mod load;
pub mod outliers;
mod sampling;
mod score;
pub mod smooth;
mod weights;

pub use config::{LlamaConfig, RopeStyle};
pub use format::{StoredWeights, WeightFormat};
pub use load::{load_model, load_model_as, load_tokenizer, model_bytes, LoadedModel, ModelFiles};
pub use sampling::{sample, token_logprobs};
pub use score::{score_text, TextScore};
pub use weights::{Layer, LlamaModel, SeqSlice};
