//! Model resolution and engine start-up shared by `generate` and `serve`.

use std::path::PathBuf;

use clap::Args;
use tandem_core::SchedulerConfig;
use tandem_engine::{Engine, EngineConfig};
use tandem_executor::cpu::{load_model_as, CpuExecutor, WeightFormat};
use tandem_executor::text::TextTokenizer;

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
    /// Most requests decoding at once.
    #[arg(long, default_value_t = 64)]
    pub max_num_seqs: usize,
    /// Token budget of one step.
    #[arg(long, default_value_t = 512)]
    pub max_num_batched_tokens: usize,
    /// Scheduler overrides, `key=value` (repeatable or comma-separated): batching, streams,
    /// assignment, min_parallel, fusion, capacity, queue, preemption, max_num_seqs,
    /// max_num_batched_tokens. E.g. `--set batching=fixed:4 --set streams=2`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

/// Where a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceKind {
    Cpu,
    Cuda,
    TensorCpu,
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
            DeviceKind::TensorCpu => "tensor-cpu",
        })
    }
}

/// The weights format a device needs: the tensor executor takes f32 weights from the loader
/// (it converts them to its own dtype on the device).
pub fn weights_for(device: DeviceKind, asked: WeightFormat) -> Result<WeightFormat, String> {
    match (device, asked) {
        (DeviceKind::Cpu, w) => Ok(w),
        (_, WeightFormat::Q8) => Err("--weights q8 is for the CPU executor; the tensor executor uses bf16/f32".into()),
        (_, _) => Ok(WeightFormat::F32),
    }
}

/// An executor for `model` on `device` with a KV pool of about `kv_bytes`; also its block count.
pub fn executor_for(
    device: DeviceKind,
    model: tandem_executor::cpu::LlamaModel,
    block_size: usize,
    kv_bytes: u64,
) -> Result<(Box<dyn tandem_executor::Executor>, usize), String> {
    use tandem_executor::tensor::TensorDevice;
    let e = |e: tandem_executor::ExecError| e.to_string();
    match device {
        DeviceKind::Cpu => {
            let blocks = CpuExecutor::blocks_for_memory(&model, block_size, kv_bytes).max(1);
            Ok((Box::new(CpuExecutor::new(model, block_size, blocks, 0)), blocks))
        }
        DeviceKind::Cuda | DeviceKind::TensorCpu => {
            let on = if device == DeviceKind::Cuda { TensorDevice::Cuda } else { TensorDevice::Cpu };
            let (exec, blocks) = tandem_executor::tensor::build(model, on, block_size, kv_bytes).map_err(e)?;
            Ok((Box::new(exec), blocks))
        }
    }
}

/// A started engine with its tokenizer.
pub struct Running {
    pub engine: Engine,
    pub tokenizer: TextTokenizer,
    pub describe: String,
    /// The model's name for clients (the file or directory name without extension).
    pub name: String,
    pub max_model_len: usize,
}

pub fn start(args: &ModelArgs) -> Result<Running, String> {
    start_with(args, &[])
}

/// Like [`start`], with `extra` overrides applied after `args.overrides`.
pub fn start_with(args: &ModelArgs, extra: &[String]) -> Result<Running, String> {
    let path = resolve(args.model.as_deref())?;
    let loaded = load_model_as(&path, weights_for(args.device, args.weights)?).map_err(|e| e.to_string())?;
    let overrides: Vec<String> = args.overrides.iter().chain(extra).cloned().collect();
    let sizing = Sizing {
        kv_bytes: args.kv_memory_mb << 20,
        max_num_seqs: args.max_num_seqs,
        max_num_batched_tokens: args.max_num_batched_tokens,
        overrides,
        device: args.device,
    };
    engine_for(loaded, &path, &sizing, None)
}

/// The model file: `path`, or the embedded default (fetched once into the cache).
pub fn resolve(path: Option<&std::path::Path>) -> Result<PathBuf, String> {
    match path {
        Some(p) => Ok(p.to_path_buf()),
        None => tandem_executor::store::default_model().map_err(|e| e.to_string()),
    }
}

/// How big an engine is: KV memory and scheduler limits.
#[derive(Debug, Clone)]
pub struct Sizing {
    pub kv_bytes: u64,
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    /// Scheduler overrides, `key=value`.
    pub overrides: Vec<String>,
    pub device: DeviceKind,
}

/// Starts an engine for a loaded model with a KV pool of `sizing.kv_bytes`, stepping through
/// `gate` when it shares the device.
pub fn engine_for(
    loaded: tandem_executor::cpu::LoadedModel,
    path: &std::path::Path,
    sizing: &Sizing,
    gate: Option<tandem_engine::GateHandle>,
) -> Result<Running, String> {
    let block_size = 16;
    let max_position = loaded.model.config.max_position;
    let (executor, blocks) = executor_for(sizing.device, loaded.model, block_size, sizing.kv_bytes)?;
    let max_model_len = max_position.min(blocks * block_size);
    let mut scheduler = SchedulerConfig {
        block_size,
        num_gpu_blocks: blocks,
        max_num_seqs: sizing.max_num_seqs,
        max_num_batched_tokens: sizing.max_num_batched_tokens.max(block_size),
        max_model_len: max_model_len.max(2),
        eos_token_ids: loaded.tokenizer.eos_token_ids.clone(),
        ..SchedulerConfig::default()
    };
    crate::config_spec::apply_all(&mut scheduler, &sizing.overrides)?;
    let describe = format!("{} from {}", executor.describe(), path.display());
    let engine = Engine::start(EngineConfig { scheduler, max_queued: 1024, async_scheduling: true, gate }, executor)
        .map_err(|e| e.to_string())?;
    let name = path.file_stem().map_or_else(|| "model".to_string(), |s| s.to_string_lossy().into_owned());
    let name = name.split('.').next().unwrap_or("model").to_string();
    Ok(Running { engine, tokenizer: loaded.tokenizer, describe, name, max_model_len: max_model_len.max(2) })
}
