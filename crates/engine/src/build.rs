//! Assembling engines: "a model file + a device + a size" → a running [`Engine`] with its
//! tokenizer. The one place that chooses the executor, sizes its KV pool and derives the
//! scheduler's config from the model — used by `tandem serve`, `generate`, `bench` and the
//! multi-model loader ([`DeviceLoader`], a [`ModelLoader`] for [`crate::ModelRegistry`]). The
//! counterpart of vLLM's `EngineArgs → LLMEngine` and llama.cpp's `common_init_from_params`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tandem_core::contexts::ContextSpec;
use tandem_core::SchedulerConfig;
use tandem_executor::cpu::CpuExecutor;
use tandem_executor::model::{
    load_model_as, load_tokenizer, model_bytes, LlamaConfig, LlamaModel, LoadedModel, WeightFormat,
};
use tandem_executor::sim::{ClockMode, DeviceProfile, ModelShape, SimExecutor};
use tandem_executor::tensor::TensorDevice;
use tandem_executor::text::TextTokenizer;
use tandem_executor::{ExecError, Executor};

use crate::engine::{Engine, EngineConfig, KvEventSender};
use crate::error::EngineError;
use crate::gate::GateHandle;
use crate::registry::{ModelLoader, ServedModel};

/// Tokens per KV block, for every real executor (vLLM's default on GPUs too).
pub const BLOCK_SIZE: usize = 16;
/// Requests an engine queues (accepted, not yet running) before refusing more (HTTP 429), by
/// default.
pub const MAX_QUEUED: usize = 1024;

/// Where a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceKind {
    /// The CPU executor (f32, int8 or 4-bit weights).
    #[default]
    Cpu,
    /// The tensor executor on the first GPU, bf16 (a build with `--features cuda`).
    Cuda,
    /// The tensor executor on the CPU, f32: the CUDA path checked without a GPU.
    TensorCpu,
    /// The roofline-modelled device of `tandem simulate` in real time ([`SimSpec`]): no
    /// weights, the tokenizer only, tokens a hash of (request, position).
    Sim,
}

impl DeviceKind {
    /// Bytes of one KV element on this device.
    pub fn kv_dtype_bytes(self) -> usize {
        match self {
            DeviceKind::Cuda | DeviceKind::Sim => 2,
            DeviceKind::Cpu | DeviceKind::TensorCpu => 4,
        }
    }

    /// The weights format this device loads: the tensor executor takes f32 weights from the
    /// loader (it converts them to its own dtype on the device).
    pub fn weights_for(self, asked: WeightFormat) -> Result<WeightFormat, BuildError> {
        match (self, asked) {
            (DeviceKind::Cpu | DeviceKind::Sim, w) => Ok(w),
            (_, WeightFormat::Q8 | WeightFormat::Q4) => Err(BuildError::WeightsForDevice { device: self }),
            (_, _) => Ok(WeightFormat::F32),
        }
    }
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
            DeviceKind::TensorCpu => "tensor-cpu",
            DeviceKind::Sim => "sim",
        })
    }
}

impl FromStr for DeviceKind {
    type Err = BuildError;
    fn from_str(s: &str) -> Result<Self, BuildError> {
        match s {
            "cpu" => Ok(DeviceKind::Cpu),
            "cuda" => Ok(DeviceKind::Cuda),
            "tensor-cpu" => Ok(DeviceKind::TensorCpu),
            "sim" => Ok(DeviceKind::Sim),
            _ => Err(BuildError::UnknownDevice(s.to_string())),
        }
    }
}

/// Why an engine could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("--weights q8 and q4 are for the CPU executor; the tensor executor on `{device}` uses bf16/f32")]
    WeightsForDevice { device: DeviceKind },
    #[error("unknown device `{0}`: cpu, cuda, tensor-cpu or sim")]
    UnknownDevice(String),
    #[error("unknown simulated model shape `{0}`: smollm2-135m, qwen2.5-0.5b, qwen2.5-1.5b or llama3-8b")]
    UnknownShape(String),
    #[error("unknown device profile `{0}`: h100, a100 or cpu-2c")]
    UnknownProfile(String),
    #[error("the simulated device serves one model; contexts (`--models`) need real ones")]
    SimContexts,
    #[error("the simulated device runs no weights (it models them): here it needs cpu, cuda or tensor-cpu")]
    SimWeights,
    /// The model could not be found, fetched or loaded, or its executor not built.
    #[error(transparent)]
    Model(#[from] ExecError),
    /// The scheduler overrides or the derived config are invalid.
    #[error(transparent)]
    Scheduler(#[from] tandem_core::Error),
    /// The engine's threads did not start.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A size that cannot work (a queue of no requests).
    #[error("{0}")]
    Sizing(&'static str),
    /// The multi-model loader has no file for this context.
    #[error("no model file for context `{0}`")]
    NoSource(String),
}

/// A model to run: its file, the device and the weights format; on the simulated device, the
/// file gives only the tokenizer and `sim` the modelled shape and device.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSource {
    pub path: PathBuf,
    pub device: DeviceKind,
    pub weights: WeightFormat,
    /// For [`DeviceKind::Sim`] (default when absent: [`SimSpec::default`]).
    pub sim: Option<SimSpec>,
}

/// What the simulated device models: a transformer's shape on a device profile (the roofline
/// numbers of `tandem simulate`).
#[derive(Debug, Clone, PartialEq)]
pub struct SimSpec {
    pub shape: ModelShape,
    pub profile: DeviceProfile,
}

impl Default for SimSpec {
    fn default() -> Self {
        Self { shape: ModelShape::qwen2_5_0_5b(), profile: DeviceProfile::h100() }
    }
}

impl SimSpec {
    /// By names: `qwen2.5-0.5b` on `h100`, ….
    pub fn named(shape: &str, profile: &str) -> Result<Self, BuildError> {
        Ok(Self {
            shape: ModelShape::by_name(shape).ok_or_else(|| BuildError::UnknownShape(shape.to_string()))?,
            profile: DeviceProfile::by_name(profile).ok_or_else(|| BuildError::UnknownProfile(profile.to_string()))?,
        })
    }

    /// KV bytes in `fraction` of the device's memory once the weights are in (vLLM's
    /// `--gpu-memory-utilization`).
    pub fn kv_bytes(&self, fraction: f64) -> u64 {
        self.profile.kv_memory(&self.shape, fraction)
    }
}

impl ModelSource {
    /// `path`, or the embedded default model (fetched once into the cache).
    pub fn resolve(path: Option<&Path>, device: DeviceKind, weights: WeightFormat) -> Result<Self, BuildError> {
        let path = match path {
            Some(p) => p.to_path_buf(),
            None => tandem_executor::store::default_model()?,
        };
        Ok(Self { path, device, weights, sim: None })
    }

    /// The simulated device's shape and profile.
    pub fn with_sim(mut self, spec: SimSpec) -> Self {
        self.sim = Some(spec);
        self
    }

    /// The model's name for clients: the file or directory name up to its first dot (on the
    /// simulated device, the modelled shape's name).
    pub fn name(&self) -> String {
        if self.device == DeviceKind::Sim {
            return self.sim.clone().unwrap_or_default().shape.name.to_string();
        }
        let stem = self.path.file_stem().map_or_else(|| "model".to_string(), |s| s.to_string_lossy().into_owned());
        stem.split('.').next().filter(|s| !s.is_empty()).unwrap_or("model").to_string()
    }

    /// What `/v1/models` reports as the model's `root` (vLLM: the local path it was served
    /// from), chosen so clients that load the server's tokenizer from it (`vllm bench serve`
    /// without `--model`, guidellm, AIPerf) encode as the server does: a Hugging Face directory
    /// itself; for a GGUF file, its tokenizer exported as one under the cache
    /// (`tokenizers/<name>-<path hash>`, rewritten at every load).
    pub fn tokenizer_root(&self, tok: &TextTokenizer, config: &LlamaConfig) -> Result<PathBuf, ExecError> {
        let path = self.path.canonicalize().unwrap_or_else(|_| self.path.clone());
        if path.join("tokenizer.json").is_file() {
            return Ok(path);
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&path, &mut h);
        let dir = tandem_executor::store::cache_dir().join("tokenizers").join(format!(
            "{}-{:016x}",
            self.name(),
            std::hash::Hasher::finish(&h)
        ));
        tok.write_hf_dir(&dir)?;
        // The shape too: clients read `config.json` before the tokenizer (no weights here).
        std::fs::write(dir.join("config.json"), config.to_hf_json().to_string())
            .map_err(|e| ExecError::Tokenizer(e.into()))?;
        Ok(dir)
    }

    /// Loads the weights and tokenizer in the format the device takes.
    pub fn load(&self) -> Result<LoadedModel, BuildError> {
        Ok(load_model_as(&self.path, self.device.weights_for(self.weights)?)?)
    }

    /// The model's shape and the bytes its weights will take once loaded for the device,
    /// read from the file's metadata without loading it.
    pub fn footprint(&self) -> Result<(LlamaConfig, u64), BuildError> {
        Ok(model_bytes(&self.path, self.device.weights_for(self.weights)?)?)
    }
}

/// How big an engine is: KV memory and scheduler limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Sizing {
    pub kv_bytes: u64,
    /// Host memory for swapped-out blocks (0: none, so preemption always recomputes).
    pub swap_bytes: u64,
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    /// Scheduler overrides, `key=value` (see `tandem_core::config_text`).
    pub overrides: Vec<String>,
    /// Requests accepted but not yet running before `submit` refuses (HTTP 429).
    pub max_queued: usize,
    /// Prompt tokens queued (not yet fed) before `submit` refuses (HTTP 429); 0: no bound.
    pub max_queued_tokens: usize,
}

impl Default for Sizing {
    fn default() -> Self {
        Self {
            kv_bytes: 512 << 20,
            swap_bytes: 0,
            max_num_seqs: 64,
            max_num_batched_tokens: 512,
            overrides: Vec::new(),
            max_queued: MAX_QUEUED,
            max_queued_tokens: 0,
        }
    }
}

/// A started engine with its tokenizer.
pub struct Running {
    pub engine: Engine,
    pub tokenizer: TextTokenizer,
    /// The executor and the model file, for logs.
    pub describe: String,
    /// The model's name for clients.
    pub name: String,
    /// Its `root` for `/v1/models` ([`ModelSource::tokenizer_root`]; the name when the
    /// tokenizer could not be exported).
    pub root: String,
    pub max_model_len: usize,
}

/// KV bytes for at least `tokens` tokens of `config` on `device`, in whole blocks.
pub fn kv_bytes_for_tokens(config: &LlamaConfig, device: DeviceKind, tokens: u64) -> u64 {
    config.kv_bytes_per_block(BLOCK_SIZE, device.kv_dtype_bytes()) * tokens.div_ceil(BLOCK_SIZE as u64)
}

/// An executor for `model` on `device` with a KV pool of about `kv_bytes`; also its block count.
/// The executor for `device` with `kv_bytes` of device KV and room for `host_blocks` swapped
/// blocks; returns it with its device block count.
pub fn executor_for(
    device: DeviceKind,
    model: LlamaModel,
    kv_bytes: u64,
    host_blocks: usize,
) -> Result<(Box<dyn Executor>, usize), BuildError> {
    match device {
        DeviceKind::Cpu => {
            let blocks = CpuExecutor::blocks_for_memory(&model, BLOCK_SIZE, kv_bytes).max(1);
            Ok((Box::new(CpuExecutor::new(model, BLOCK_SIZE, blocks, host_blocks)), blocks))
        }
        DeviceKind::Cuda | DeviceKind::TensorCpu => {
            let on = if device == DeviceKind::Cuda { TensorDevice::Cuda } else { TensorDevice::Cpu };
            let (exec, blocks) = tandem_executor::tensor::build(model, on, BLOCK_SIZE, kv_bytes)?;
            Ok((Box::new(exec), blocks))
        }
        DeviceKind::Sim => Err(BuildError::SimWeights),
    }
}

/// Loads `source` and starts its engine.
pub fn start(source: &ModelSource, sizing: &Sizing) -> Result<Running, BuildError> {
    start_publishing(source, sizing, None)
}

/// [`start`], sending the prefix cache's block events to `kv_events`.
pub fn start_publishing(
    source: &ModelSource,
    sizing: &Sizing,
    kv_events: Option<KvEventSender>,
) -> Result<Running, BuildError> {
    if source.device == DeviceKind::Sim {
        return start_sim(source, sizing, kv_events);
    }
    start_loaded(source.load()?, source, sizing, None, kv_events)
}

/// The simulated device: the tokenizer from `source`'s file, the rest modelled.
fn start_sim(source: &ModelSource, sizing: &Sizing, kv_events: Option<KvEventSender>) -> Result<Running, BuildError> {
    let spec = source.sim.clone().unwrap_or_default();
    let (config, tokenizer) = load_tokenizer(&source.path)?;
    let exec = SimExecutor::new(spec.shape.clone(), spec.profile.clone(), BLOCK_SIZE, ClockMode::RealTime)
        .avoiding(tokenizer.eos_token_ids.clone())
        .sampling_below(tokenizer.vocab_size());
    let spec_kv = exec.kv_spec();
    let blocks = spec_kv.blocks_in(sizing.kv_bytes).max(1);
    let host_blocks = (sizing.swap_bytes / spec_kv.bytes_per_block.max(1)) as usize;
    let parts = Parts { executor: Box::new(exec), blocks, host_blocks, max_position: SIM_MAX_POSITION };
    launch(parts, source, sizing, &config, tokenizer, None, kv_events)
}

/// Longest sequence on the simulated device (the shapes carry no position limit).
const SIM_MAX_POSITION: usize = 32_768;

/// An executor ready to run, with what the scheduler must know of it.
struct Parts {
    executor: Box<dyn Executor>,
    blocks: usize,
    host_blocks: usize,
    max_position: usize,
}

/// Starts an engine for a model already loaded from `source`, stepping through `gate` when it
/// shares the device with other engines.
pub fn start_loaded(
    loaded: LoadedModel,
    source: &ModelSource,
    sizing: &Sizing,
    gate: Option<GateHandle>,
    kv_events: Option<KvEventSender>,
) -> Result<Running, BuildError> {
    let max_position = loaded.model.config.max_position;
    let config = loaded.model.config.clone();
    let block_bytes = config.kv_bytes_per_block(BLOCK_SIZE, source.device.kv_dtype_bytes()).max(1);
    let host_blocks = (sizing.swap_bytes / block_bytes) as usize;
    let (executor, blocks) = executor_for(source.device, loaded.model, sizing.kv_bytes, host_blocks)?;
    let parts = Parts { executor, blocks, host_blocks, max_position };
    launch(parts, source, sizing, &config, loaded.tokenizer, gate, kv_events)
}

/// The scheduler's config from the executor's pool and the sizing, and the engine started.
fn launch(
    parts: Parts,
    source: &ModelSource,
    sizing: &Sizing,
    config: &LlamaConfig,
    tokenizer: TextTokenizer,
    gate: Option<GateHandle>,
    kv_events: Option<KvEventSender>,
) -> Result<Running, BuildError> {
    if sizing.max_queued == 0 {
        return Err(BuildError::Sizing("--max-queued-requests must be at least 1"));
    }
    let Parts { executor, blocks, host_blocks, max_position } = parts;
    let max_model_len = max_position.min(blocks * BLOCK_SIZE).max(2);
    let mut scheduler = SchedulerConfig {
        block_size: BLOCK_SIZE,
        num_gpu_blocks: blocks,
        max_num_seqs: sizing.max_num_seqs,
        max_num_batched_tokens: sizing.max_num_batched_tokens.max(BLOCK_SIZE),
        max_model_len,
        num_host_blocks: host_blocks,
        eos_token_ids: tokenizer.eos_token_ids.clone(),
        ..SchedulerConfig::default()
    };
    // `auto` preemption starts from the real block size (and learns the speeds as it runs).
    scheduler.preemption_cost.kv_bytes_per_block = executor.kv_spec().bytes_per_block;
    scheduler.apply_overrides(&sizing.overrides)?;
    let describe = format!("{} from {}", executor.describe(), source.path.display());
    let engine = Engine::start(
        EngineConfig {
            scheduler,
            max_queued: sizing.max_queued,
            max_queued_tokens: sizing.max_queued_tokens,
            async_scheduling: true,
            gate,
            kv_events,
        },
        executor,
    )?;
    let root = match source.tokenizer_root(&tokenizer, config) {
        Ok(dir) => dir.display().to_string(),
        Err(e) => {
            tracing::warn!("cannot export the tokenizer for /v1/models' `root` ({e}); reporting the name");
            source.name()
        }
    };
    Ok(Running { engine, tokenizer, describe, name: source.name(), root, max_model_len })
}

/// Loads the contexts of a [`crate::ModelRegistry`] onto their device: each context's file
/// and format by name; the KV pool gets the context's budget less its weights.
pub struct DeviceLoader {
    sources: HashMap<String, ModelSource>,
    /// Scheduler limits of every context (`kv_bytes` is per load).
    pub sizing: Sizing,
}

impl DeviceLoader {
    pub fn new(sources: HashMap<String, ModelSource>, sizing: Sizing) -> Self {
        Self { sources, sizing }
    }
}

impl ModelLoader for DeviceLoader {
    fn load(&self, spec: &ContextSpec, bytes: u64, gate: GateHandle) -> Result<ServedModel, BuildError> {
        let src = self.sources.get(&spec.name).ok_or_else(|| BuildError::NoSource(spec.name.clone()))?;
        if src.device == DeviceKind::Sim {
            return Err(BuildError::SimContexts);
        }
        let loaded = src.load()?;
        let weights = loaded.model.memory_bytes() as u64;
        let sizing = Sizing { kv_bytes: bytes.saturating_sub(weights), ..self.sizing.clone() };
        let running = start_loaded(loaded, src, &sizing, Some(gate), None)?;
        let describe = format!("{} ({} MiB budget)", running.describe, bytes >> 20);
        Ok(ServedModel::new(spec.name.clone(), running.engine, running.tokenizer, running.max_model_len, describe)
            .with_root(running.root))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_print_and_pick_their_weights() {
        for d in [DeviceKind::Cpu, DeviceKind::Cuda, DeviceKind::TensorCpu, DeviceKind::Sim] {
            assert_eq!(d.to_string().parse::<DeviceKind>().unwrap(), d);
        }
        assert!(matches!("tpu".parse::<DeviceKind>(), Err(BuildError::UnknownDevice(_))));
        assert_eq!(DeviceKind::Cpu.weights_for(WeightFormat::Q8).unwrap(), WeightFormat::Q8);
        assert_eq!(DeviceKind::TensorCpu.weights_for(WeightFormat::Auto).unwrap(), WeightFormat::F32);
        assert!(DeviceKind::Cuda.weights_for(WeightFormat::Q8).is_err());
    }

    #[test]
    fn names_are_the_file_stem_up_to_the_first_dot() {
        let src =
            |p: &str| ModelSource { path: p.into(), device: DeviceKind::Cpu, weights: WeightFormat::Auto, sim: None };
        assert_eq!(src("/m/SmolLM2-135M-Instruct.Q4_1.gguf").name(), "SmolLM2-135M-Instruct");
        assert_eq!(src("/m/tiny").name(), "tiny");
    }

    #[test]
    fn kv_memory_is_whole_blocks_of_the_devices_dtype() {
        let c = LlamaConfig {
            architecture: "llama".into(),
            layers: 2,
            hidden: 8,
            intermediate: 16,
            heads: 2,
            kv_heads: 1,
            head_dim: 4,
            vocab: 32,
            rms_eps: 1e-5,
            rope_theta: 1e4,
            rope_style: tandem_executor::model::RopeStyle::Half,
            max_position: 64,
            tie_embeddings: true,
            bos_token_id: None,
            eos_token_ids: vec![],
        };
        // One 16-token block: 2 (K, V) · 2 layers · 16 tokens · 4 floats · 4 bytes = 1,024 bytes.
        assert_eq!(kv_bytes_for_tokens(&c, DeviceKind::Cpu, 1), 1024);
        // 17 tokens need two blocks; bf16 on CUDA halves each.
        assert_eq!(kv_bytes_for_tokens(&c, DeviceKind::Cpu, 17), 2048);
        assert_eq!(kv_bytes_for_tokens(&c, DeviceKind::Cuda, 17), 1024);
    }
}
