//! `tandem simulate`: workload and configuration flags → `tandem_bench::simulate` runs (or, with
//! `--engine`, the real engine thread in real time) → seed 001's comparison table (and
//! optionally JSON).

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tandem_bench::output::comparison_table;
use tandem_bench::sim::SIM_PERCENTILES;
use tandem_bench::{
    simulate, Arrival, DatasetSpec, EngineTarget, LengthDist, Probe, PromptSet, RunResult, RunSpec, SimConfig, Slo,
    Stats, Target, Workload, WorkloadSpec,
};
use tandem_core::{named_config, SchedulerConfig, StreamConfig};

use tandem_executor::sim::{DeviceProfile, ModelShape};
use tandem_executor::KvSpec;

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Number of requests.
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// Arrival rate in requests/s; omit to send everything at once.
    #[arg(long)]
    rate: Option<f64>,
    /// Arrival process when --rate is given: poisson or fixed.
    #[arg(long, default_value = "poisson")]
    arrival: String,
    /// Prompt lengths: sharegpt, fixed:N or uniform:LO:HI.
    #[arg(long, default_value = "sharegpt")]
    prompt_len: String,
    /// Output lengths: sharegpt, fixed:N or uniform:LO:HI.
    #[arg(long, default_value = "sharegpt")]
    output_len: String,
    /// Priority levels (priorities drawn uniformly from 0..K).
    #[arg(long, default_value_t = 1)]
    priorities: u32,
    /// Fraction of requests sharing a 64-token prefix.
    #[arg(long, default_value_t = 0.0)]
    shared_prefix: f64,
    /// The mixed workload of `tandem bench --dataset mixed`: this many short requests
    /// (--background-prompt-len, --background-output-len) sent at once ahead of the
    /// --requests, whose --prompt-len is then typically long and --output-len fixed:N.
    #[arg(long, default_value_t = 0)]
    background: usize,
    #[arg(long, default_value_t = 64)]
    background_prompt_len: usize,
    #[arg(long, default_value_t = 256)]
    background_output_len: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Model shape: smollm2-135m, qwen2.5-0.5b or llama3-8b.
    #[arg(long, default_value = "qwen2.5-0.5b")]
    model: String,
    /// Device profile: h100, a100 or cpu-2c.
    #[arg(long, default_value = "h100")]
    device: String,
    /// KV blocks; default: 90% of device memory after the weights.
    #[arg(long)]
    kv_blocks: Option<usize>,
    #[arg(long, default_value_t = 16)]
    block_size: usize,
    #[arg(long, default_value_t = 256)]
    max_num_seqs: usize,
    #[arg(long, default_value_t = 2048)]
    max_num_batched_tokens: usize,
    /// max_utilization, guaranteed_no_evict or static_batch.
    #[arg(long, default_value = "max_utilization")]
    capacity: String,
    /// fcfs or priority:AGING_PER_SEC.
    #[arg(long, default_value = "fcfs")]
    queue: String,
    /// recompute, swap or auto.
    #[arg(long, default_value = "recompute")]
    preemption: String,
    /// Host (swap) blocks.
    #[arg(long, default_value_t = 0)]
    host_blocks: usize,
    /// Batching strategy: continuous, fixed:N[:WAIT], size_or_timeout:N:T, adaptive:T, coalescing:TOL, latency, throughput.
    #[arg(long, default_value = "continuous")]
    batching: String,
    /// Execution streams per step.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Stream assignment: round_robin, smart or balanced.
    #[arg(long, default_value = "smart")]
    assignment: String,
    /// Minimum scheduled sequences to split a step over streams.
    #[arg(long, default_value_t = 2)]
    min_parallel: usize,
    /// Let prefill and decode share streams under `smart`.
    #[arg(long)]
    fusion: bool,
    /// A configuration to compare, as NAME or NAME:key=value,... overriding the flags above
    /// (keys: batching, streams, assignment, min_parallel, fusion, sync, stream_priority,
    /// capacity, queue, preemption, max_num_seqs, max_num_batched_tokens). Repeat to compare
    /// several.
    #[arg(long = "compare")]
    compare: Vec<String>,
    /// A ready-made comparison: simple-vs-parallel (1 stream vs 2 streams with each assignment).
    #[arg(long)]
    preset: Option<String>,
    /// Run through the real engine thread in real time (the device sleeps its modelled time)
    /// instead of the virtual clock; reports live engine stats, including CPU time hidden by
    /// async scheduling. Slower: use small workloads.
    #[arg(long)]
    engine: bool,
    /// With --engine: schedule one step at a time (no overlap of CPU and device work); a
    /// --compare configuration whose name starts with `sync` does the same.
    #[arg(long)]
    no_async: bool,
    /// Write the summaries as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

type CliResult<T> = Result<T, String>;

fn base_config(a: &SimulateArgs, model: &ModelShape, device: &DeviceProfile) -> CliResult<SchedulerConfig> {
    let spec = KvSpec { block_size: a.block_size, bytes_per_block: model.kv_bytes_per_token() * a.block_size as u64 };
    let usable = (device.memory as f64 * 0.9) as u64;
    let blocks = a.kv_blocks.unwrap_or_else(|| spec.blocks_in(usable.saturating_sub(model.weight_bytes())));
    let cfg = SchedulerConfig {
        block_size: a.block_size,
        num_gpu_blocks: blocks,
        num_host_blocks: a.host_blocks,
        max_num_seqs: a.max_num_seqs,
        max_num_batched_tokens: a.max_num_batched_tokens,
        capacity: a.capacity.parse().map_err(|e: tandem_core::Error| e.to_string())?,
        queue: a.queue.parse().map_err(|e: tandem_core::Error| e.to_string())?,
        preemption: a.preemption.parse().map_err(|e: tandem_core::Error| e.to_string())?,
        batching: a.batching.parse().map_err(|e: tandem_core::Error| e.to_string())?,
        streams: StreamConfig {
            num_streams: a.streams,
            assignment: a.assignment.parse().map_err(|e: tandem_core::Error| e.to_string())?,
            min_requests_for_parallel: a.min_parallel,
            context_generation_fusion: a.fusion,
            ..StreamConfig::default()
        },
        preemption_cost: tandem_core::PreemptionCost {
            kv_bytes_per_block: spec.bytes_per_block,
            swap_bytes_per_sec: device.host_link,
            recompute_tokens_per_sec: 20_000.0,
        },
        ..SchedulerConfig::default()
    };
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
}

/// The configurations to run: `--preset`, then each `--compare`, else the base alone.
fn configurations(a: &SimulateArgs, base: &SchedulerConfig) -> CliResult<Vec<(String, SchedulerConfig)>> {
    let mut specs: Vec<String> = Vec::new();
    match a.preset.as_deref() {
        None => {}
        Some("simple-vs-parallel") => specs.extend(
            [
                "simple:streams=1",
                "parallel-rr:streams=2,assignment=round_robin",
                "parallel-smart:streams=2,assignment=smart",
                "parallel-balanced:streams=2,assignment=balanced",
            ]
            .map(String::from),
        ),
        Some(p) => return Err(format!("unknown preset `{p}`: simple-vs-parallel")),
    }
    specs.extend(a.compare.iter().cloned());
    if specs.is_empty() {
        return Ok(vec![("base".into(), base.clone())]);
    }
    specs.iter().map(|spec| named_config(spec, base).map_err(|e| e.to_string())).collect()
}

fn workload(a: &SimulateArgs) -> CliResult<WorkloadSpec> {
    let arrival = match (a.rate, a.arrival.as_str()) {
        (None, _) => Arrival::AllAtOnce,
        (Some(r), _) if !(r.is_finite() && r > 0.0) => return Err(format!("--rate must be positive, got {r}")),
        (Some(rate), "poisson") => Arrival::Poisson { rate },
        (Some(rate), "fixed") => Arrival::Fixed { rate },
        (_, other) => return Err(format!("unknown arrival `{other}`: poisson or fixed")),
    };
    if a.requests == 0 {
        return Err("--requests must be at least 1".into());
    }
    let prompt =
        LengthDist::parse(&a.prompt_len, false).ok_or_else(|| format!("bad --prompt-len `{}`", a.prompt_len))?;
    let output =
        LengthDist::parse(&a.output_len, true).ok_or_else(|| format!("bad --output-len `{}`", a.output_len))?;
    let dataset = if a.background > 0 {
        let LengthDist::Fixed(long_output) = output else {
            return Err("--background needs a fixed --output-len (fixed:N) for the long requests".into());
        };
        DatasetSpec::Mixed {
            background: a.background,
            background_input: a.background_prompt_len,
            background_output: a.background_output_len,
            long_prompt: prompt,
            long_output,
        }
    } else {
        DatasetSpec::Modelled { prompt, output, shared_prefix_fraction: a.shared_prefix }
    };
    Ok(WorkloadSpec { dataset, requests: a.requests, priority_levels: a.priorities.max(1), arrival })
}

pub fn run(a: SimulateArgs) -> CliResult<()> {
    let mut model = ModelShape::by_name(&a.model).ok_or_else(|| format!("unknown model `{}`", a.model))?;
    let device = DeviceProfile::by_name(&a.device).ok_or_else(|| format!("unknown device `{}`", a.device))?;
    model.dtype_bytes = device.dtype_bytes; // as the device's executor stores weights and KV
    model.kv_dtype_bytes = device.kv_dtype_bytes;
    let base = base_config(&a, &model, &device)?;
    let configs = configurations(&a, &base)?;
    let spec = workload(&a)?;
    // Every configuration gets a fresh scheduler (an empty prefix cache), so each run is cold
    // with the one workload: the comparison is paired, request for request.
    let w = spec.generate(PromptSet::fixed(a.seed), None).map_err(|e| e.to_string())?;
    let (p, o) = w.requests.iter().fold((0, 0), |acc, r| (acc.0 + r.prompt_len, acc.1 + r.output_len));
    println!(
        "workload: {} requests, mean prompt {:.0} / output {:.0} tokens, {:?}; model {} on {} ({} KV blocks of {}); modelled",
        w.len(),
        p as f64 / w.len() as f64,
        o as f64 / w.len() as f64,
        spec.arrival,
        model.name,
        device.name,
        base.num_gpu_blocks,
        base.block_size
    );
    let mut runs = Vec::new();
    let mut walls = Vec::new();
    for (name, cfg) in configs {
        if a.engine {
            let async_scheduling = !a.no_async && !name.starts_with("sync");
            runs.push(run_engine(&name, cfg, &model, &device, &w, async_scheduling)?);
            walls.push(Duration::ZERO);
            continue;
        }
        let sim =
            SimConfig { name: name.clone(), scheduler: cfg.clone(), model: model.clone(), device: device.clone() };
        let r = simulate(&sim, &w).map_err(|e| e.to_string())?;
        println!(
            "  {name}: batching {}, {} stream(s) {}: {:.1} s of serving simulated in {:.2} s wall ({} steps)",
            cfg.batching,
            cfg.streams.num_streams,
            cfg.streams.assignment,
            r.run.summary.duration,
            r.wall.as_secs_f64(),
            r.run.system.steps.unwrap_or(0)
        );
        runs.push(r.run);
        walls.push(r.wall);
    }
    println!();
    print!("{}", comparison_table(&runs));
    if let Some(path) = &a.json {
        let json = serde_json::Value::Array(runs.iter().zip(&walls).map(|(r, wall)| summary_json(r, *wall)).collect());
        std::fs::write(path, serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// One configuration through the threaded engine in real time, driven by the benchmark runner.
fn run_engine(
    name: &str,
    cfg: SchedulerConfig,
    model: &ModelShape,
    device: &DeviceProfile,
    w: &Workload,
    async_scheduling: bool,
) -> CliResult<RunResult> {
    use tandem_executor::sim::{ClockMode, SimExecutor};
    let exec = SimExecutor::new(model.clone(), device.clone(), cfg.block_size, ClockMode::RealTime);
    let engine_cfg = tandem_engine::EngineConfig {
        scheduler: cfg,
        max_queued: w.len().max(1),
        max_queued_tokens: 0,
        async_scheduling,
        gate: None,
        kv_events: None,
    };
    let engine = Arc::new(tandem_engine::Engine::start(engine_cfg, Box::new(exec)).map_err(|e| e.to_string())?);
    let spec = RunSpec {
        name: name.to_string(),
        run_num: 1,
        workload: w.clone(),
        max_concurrency: None,
        request_timeout: Duration::from_secs(3600),
        progress: false,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    let target = Arc::new(Target::Engine(Box::new(EngineTarget::new(engine.clone(), None))));
    let run =
        rt.block_on(tandem_bench::run(target, Probe::Local(engine.clone()), &spec, &SIM_PERCENTILES, &Slo::default()));
    let st = engine.stats();
    let cpu = st.cpu_time.as_secs_f64() * 1e3;
    let hidden = st.cpu_hidden.as_secs_f64() * 1e3;
    println!(
        "  {name}: engine thread, async scheduling {}: {} steps, device {:.0} ms, step-loop CPU {cpu:.1} ms of which {hidden:.1} ms ({:.0}%) hidden behind the device; placeholder decodes {}",
        if async_scheduling { "on" } else { "off" },
        st.steps,
        st.device_time.as_secs_f64() * 1e3,
        if cpu > 0.0 { hidden / cpu * 100.0 } else { 0.0 },
        st.scheduler.placeholder_tokens,
    );
    Ok(run)
}

fn summary_json(r: &RunResult, wall: Duration) -> serde_json::Value {
    let p = |x: &Stats| serde_json::json!({"mean": x.mean, "p50": x.median, "p95": x.p(95.0), "p99": x.p(99.0)});
    let (s, sys) = (&r.summary, &r.system);
    serde_json::json!({
        "name": r.name,
        "completed": s.completed,
        "failed": s.failed,
        "duration_s": s.duration,
        "request_throughput": s.request_throughput,
        "output_throughput": s.output_throughput,
        "total_token_throughput": s.total_token_throughput,
        "ttft_ms": p(&s.ttft_ms),
        "tpot_ms": p(&s.tpot_ms),
        "itl_ms": p(&s.itl_ms),
        "e2e_ms": p(&s.e2el_ms),
        "preemptions": sys.preemptions,
        "mean_batch_size": sys.mean_batch_size,
        "stream_utilisation": sys.stream_utilisation,
        "peak_kv_usage": sys.peak_kv_usage,
        "prefix_cache_hit_rate": sys.prefix_cache_hit_rate(),
        "steps": sys.steps,
        "sim_wall_s": wall.as_secs_f64(),
    })
}
