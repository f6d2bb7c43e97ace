//! The model flags shared by `serve`, `generate` and `bench`, turned into the engine side's
//! [`ModelSource`] and [`Sizing`]; assembling the engine is `tandem_engine::build`'s job.

use std::path::PathBuf;

use clap::Args;
use tandem_engine::build::{self, DeviceKind, ModelSource, Running, SimSpec, Sizing};
use tandem_engine::KvEventSender;
use tandem_executor::model::WeightFormat;

/// Flags that choose and size the model.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// A .gguf file or an HF directory (config.json + *.safetensors + tokenizer.json);
    /// default: the embedded SmolLM2-135M-Instruct, fetched once into the cache.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Linear-layer weights: `auto` (q4 for a GGUF file whose layers are Q4_1, q8 for another
    /// quantized GGUF file, f32 otherwise), `f32` (the file's values exactly), `q8` (int8
    /// weights and activations, ~4× faster matmuls) or `q4` (4-bit weights on Q4_1's grid ×
    /// int8 activations: half q8's bytes, ~1.4× its batch-1 decode).
    #[arg(long, default_value_t = WeightFormat::Auto)]
    pub weights: WeightFormat,
    /// Where the model runs: `cpu` (the CPU executor), `cuda` (the tensor executor on the first
    /// GPU, bf16; needs a build with `--features cuda`), `tensor-cpu` (the CUDA path's
    /// executor on the CPU, f32, for checking it without a GPU), or `sim` (the roofline-modelled
    /// device of `tandem simulate`, in real time: `--sim-model` on `--sim-profile`, no weights;
    /// `--model` then gives only the tokenizer).
    #[arg(long, default_value_t = DeviceKind::Cpu)]
    pub device: DeviceKind,
    /// With `--device sim`: the modelled shape (smollm2-135m, qwen2.5-0.5b, qwen2.5-1.5b,
    /// llama3-8b); also the served model's name.
    #[arg(long, default_value = "qwen2.5-0.5b")]
    pub sim_model: String,
    /// With `--device sim`: the device profile (h100, a100, cpu-2c).
    #[arg(long, default_value = "h100")]
    pub sim_profile: String,
    /// Memory for the KV cache, in MiB. Default: 512, or with `--device sim` 90% of the
    /// profile's memory after the modelled weights (vLLM's default utilisation).
    #[arg(long)]
    pub kv_memory_mb: Option<u64>,
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
        let source =
            ModelSource::resolve(self.model.as_deref(), self.device, self.weights).map_err(|e| e.to_string())?;
        Ok(match self.device {
            DeviceKind::Sim => source.with_sim(self.sim_spec()?),
            _ => source,
        })
    }

    fn sim_spec(&self) -> Result<SimSpec, String> {
        SimSpec::named(&self.sim_model, &self.sim_profile).map_err(|e| e.to_string())
    }

    /// The engine's size, with `extra` overrides applied after `--set`.
    pub fn sizing(&self, extra: &[String]) -> Result<Sizing, String> {
        let kv_bytes = match (self.kv_memory_mb, self.device) {
            (Some(mb), _) => mb << 20,
            (None, DeviceKind::Sim) => self.sim_spec()?.kv_bytes(0.9),
            (None, _) => DEFAULT_KV_MB << 20,
        };
        Ok(Sizing {
            kv_bytes,
            swap_bytes: self.swap_space_mb << 20,
            max_num_seqs: self.max_num_seqs,
            max_num_batched_tokens: self.max_num_batched_tokens,
            overrides: self.overrides.iter().chain(extra).cloned().collect(),
            max_queued: self.max_queued_requests,
            max_queued_tokens: self.max_queued_tokens,
        })
    }
}

/// KV cache memory of a real device unless `--kv-memory-mb`, in MiB.
const DEFAULT_KV_MB: u64 = 512;

/// Loads the model and starts its engine.
pub fn start(args: &ModelArgs) -> Result<Running, String> {
    start_with(args, &[])
}

/// Like [`start`], with `extra` overrides applied after `args.overrides`.
pub fn start_with(args: &ModelArgs, extra: &[String]) -> Result<Running, String> {
    build::start(&args.source()?, &args.sizing(extra)?).map_err(|e| e.to_string())
}

/// Like [`start`], sending the prefix cache's block events to `kv_events` (if any).
pub fn start_publishing(args: &ModelArgs, kv_events: Option<KvEventSender>) -> Result<Running, String> {
    build::start_publishing(&args.source()?, &args.sizing(&[])?, kv_events).map_err(|e| e.to_string())
}
