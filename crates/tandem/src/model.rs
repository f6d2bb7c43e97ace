//! The model flags shared by `serve`, `generate` and `bench`, turned into the engine side's
//! [`ModelSource`] and [`Sizing`]; assembling the engine is `tandem_engine::build`'s job.

use std::path::PathBuf;

use clap::Args;
use tandem_engine::build::{self, DeviceKind, ModelSource, Running, Sizing};
use tandem_executor::model::WeightFormat;

/// Flags that choose and size the model.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// A .gguf file or an HF directory (config.json + *.safetensors + tokenizer.json);
    /// default: the embedded SmolLM2-135M-Instruct, fetched once into the cache.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Linear-layer weights: `auto` (int8 for a quantized GGUF file, f32 otherwise), `f32` (the
    /// file's values exactly) or `q8` (int8 weights and activations, ~4× faster matmuls).
    #[arg(long, default_value_t = WeightFormat::Auto)]
    pub weights: WeightFormat,
    /// Where the model runs: `cpu` (the CPU executor), `cuda` (the tensor executor on the first
    /// GPU, bf16; needs a build with `--features cuda`), or `tensor-cpu` (the CUDA path's
    /// executor on the CPU, f32, for checking it without a GPU).
    #[arg(long, default_value_t = DeviceKind::Cpu)]
    pub device: DeviceKind,
    /// Memory for the KV cache, in MiB.
    #[arg(long, default_value_t = 512)]
    pub kv_memory_mb: u64,
    /// Host memory for swapped-out KV blocks, in MiB (vLLM's `--swap-space`): with it,
    /// `--set preemption=swap` or `auto` copies a preempted request's blocks out and back
    /// instead of recomputing them. 0: no host tier (every preemption recomputes).
    #[arg(long, default_value_t = 0)]
    pub swap_space_mb: u64,
    /// Most requests decoding at once.
    #[arg(long, default_value_t = 64)]
    pub max_num_seqs: usize,
    /// Token budget of one step.
    #[arg(long, default_value_t = 512)]
    pub max_num_batched_tokens: usize,
    /// Requests accepted but not yet running before new ones are refused with HTTP 429 and a
    /// Retry-After (vLLM's scheduler has no bound; TGI's `--max-concurrent-requests` is one).
    #[arg(long, default_value_t = tandem_engine::build::MAX_QUEUED)]
    pub max_queued_requests: usize,
    /// Prompt tokens queued (waiting to be fed) before new requests are refused with HTTP 429
    /// and a Retry-After from the predicted drain time; 0: no bound.
    #[arg(long, default_value_t = 0)]
    pub max_queued_tokens: usize,
    /// Scheduler overrides, `key=value` (repeatable or comma-separated): batching, streams,
    /// assignment, min_parallel, fusion, sync, stream_priority, capacity, queue, preemption, max_num_seqs,
    /// max_num_batched_tokens. E.g. `--set batching=fixed:4 --set streams=2`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

impl ModelArgs {
    /// The model file (the embedded default unless `--model`), device and format.
    pub fn source(&self) -> Result<ModelSource, String> {
        ModelSource::resolve(self.model.as_deref(), self.device, self.weights).map_err(|e| e.to_string())
    }

    /// The engine's size, with `extra` overrides applied after `--set`.
    pub fn sizing(&self, extra: &[String]) -> Sizing {
        Sizing {
            kv_bytes: self.kv_memory_mb << 20,
            swap_bytes: self.swap_space_mb << 20,
            max_num_seqs: self.max_num_seqs,
            max_num_batched_tokens: self.max_num_batched_tokens,
            overrides: self.overrides.iter().chain(extra).cloned().collect(),
            max_queued: self.max_queued_requests,
            max_queued_tokens: self.max_queued_tokens,
        }
    }
}

/// Loads the model and starts its engine.
pub fn start(args: &ModelArgs) -> Result<Running, String> {
    start_with(args, &[])
}

/// Like [`start`], with `extra` overrides applied after `args.overrides`.
pub fn start_with(args: &ModelArgs, extra: &[String]) -> Result<Running, String> {
    build::start(&args.source()?, &args.sizing(extra)).map_err(|e| e.to_string())
}
