//! `tandem simulate-contexts`: two models sharing one simulated device with skewed, bursty
//! traffic — per-model goodput when they share it the way tandem's contexts do (time-sliced by
//! compute share, whole device per step) against a static half/half partition.

use clap::Args;
use tandem_bench::{
    simulate_shared, Arrival, DatasetSpec, LengthDist, PromptSet, SharedContext, Sharing, SimResult, Slo, WorkloadSpec,
};
use tandem_core::SchedulerConfig;
use tandem_executor::sim::{DeviceProfile, ModelShape};

#[derive(Debug, Args)]
pub struct SimulateContextsArgs {
    /// Device profile (h100, a100, cpu).
    #[arg(long, default_value = "h100")]
    device: String,
    /// The two models (cost-model shapes).
    #[arg(long, value_delimiter = ',', default_value = "qwen2.5-0.5b,qwen2.5-1.5b")]
    models: Vec<String>,
    /// Mean request rate of each model (req/s): skewed towards the first by default.
    #[arg(long, value_delimiter = ',', default_value = "1200,20")]
    rates: Vec<f64>,
    /// Requests per model.
    #[arg(long, value_delimiter = ',', default_value = "30000,1000")]
    requests: Vec<usize>,
    /// Gamma burstiness of each model's arrivals (1 = Poisson, below 1 = bursts and lulls).
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.05")]
    burstiness: Vec<f64>,
    /// Compute shares when time-sliced.
    #[arg(long, value_delimiter = ',', default_value = "4,1")]
    shares: Vec<f64>,
    /// Goodput SLOs: time to first token and time per output token, ms.
    #[arg(long, default_value_t = 500.0)]
    slo_ttft_ms: f64,
    #[arg(long, default_value_t = 10.0)]
    slo_tpot_ms: f64,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
}

pub fn run(a: SimulateContextsArgs) -> Result<(), String> {
    let device = DeviceProfile::by_name(&a.device).ok_or_else(|| format!("unknown device `{}`", a.device))?;
    let n = a.models.len();
    if n < 2 || [a.rates.len(), a.requests.len(), a.shares.len(), a.burstiness.len()].iter().any(|&l| l != n) {
        return Err(
            "--models, --rates, --requests, --shares and --burstiness need one value per model (at least two)".into()
        );
    }
    let positive = |v: &[f64]| v.iter().all(|x| *x > 0.0 && x.is_finite());
    if !positive(&a.burstiness) || !positive(&a.rates) {
        return Err("--burstiness and --rates must be positive numbers".into());
    }
    let mut contexts = Vec::new();
    for (i, name) in a.models.iter().enumerate() {
        let model = ModelShape::by_name(name).ok_or_else(|| format!("unknown model shape `{name}`"))?;
        // Each model's memory is the same in both modes: an equal part of the device, minus
        // its weights, as KV blocks.
        let part = device.memory / n as u64;
        let block_bytes = model.kv_bytes_per_token() * 16;
        let blocks = (part.saturating_sub(model.weight_bytes()) / block_bytes) as usize;
        if blocks < 64 {
            return Err(format!("`{name}` does not fit in 1/{n} of the device"));
        }
        let scheduler = SchedulerConfig {
            num_gpu_blocks: blocks,
            max_num_seqs: 512,
            max_num_batched_tokens: 8192,
            ..SchedulerConfig::default()
        };
        let workload = WorkloadSpec {
            dataset: DatasetSpec::Modelled {
                prompt: LengthDist::sharegpt_prompt(),
                output: LengthDist::sharegpt_output(),
                shared_prefix_fraction: 0.0,
            },
            requests: a.requests[i],
            priority_levels: 1,
            arrival: Arrival::Gamma { rate: a.rates[i], burstiness: a.burstiness[i] },
        }
        .generate(PromptSet::fixed(a.seed + i as u64), None)
        .map_err(|e| e.to_string())?;
        contexts.push(SharedContext { name: name.clone(), model, scheduler, share: a.shares[i], workload });
    }
    let slo = Slo { ttft_ms: Some(a.slo_ttft_ms), tpot_ms: Some(a.slo_tpot_ms), e2el_ms: None };
    let sliced = simulate_shared(&device, &contexts, Sharing::TimeSliced).map_err(|e| e.to_string())?;
    let parted = simulate_shared(&device, &contexts, Sharing::Partitioned).map_err(|e| e.to_string())?;
    let row = |mode: &str, r: &SimResult| {
        let s = &r.run.summary;
        serde_json::json!({
            "model": r.run.name, "mode": mode, "completed": s.completed,
            "goodput_rps": r.goodput(&slo), "throughput_rps": s.request_throughput,
            "output_tok_s": s.output_throughput, "ttft_mean_ms": s.ttft_ms.mean, "ttft_p99_ms": s.ttft_ms.p(99.0),
            "tpot_mean_ms": s.tpot_ms.mean, "tpot_p99_ms": s.tpot_ms.p(99.0),
        })
    };
    let rows: Vec<_> = sliced
        .iter()
        .map(|r| row("shared (time-sliced)", r))
        .chain(parted.iter().map(|r| row("static half/half", r)))
        .collect();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?);
        return Ok(());
    }
    println!(
        "device {}, burstiness {:?}, SLO TTFT ≤ {} ms and TPOT ≤ {} ms",
        device.name, a.burstiness, a.slo_ttft_ms, a.slo_tpot_ms
    );
    println!(
        "{:<14} {:<22} {:>9} {:>12} {:>11} {:>13} {:>13} {:>13}",
        "model", "sharing", "completed", "goodput r/s", "req/s", "TTFT p99 ms", "TPOT mean ms", "TPOT p99 ms"
    );
    for r in &rows {
        println!(
            "{:<14} {:<22} {:>9} {:>12.2} {:>11.2} {:>13.1} {:>13.2} {:>13.2}",
            r["model"].as_str().unwrap_or(""),
            r["mode"].as_str().unwrap_or(""),
            r["completed"],
            r["goodput_rps"].as_f64().unwrap_or(0.0),
            r["throughput_rps"].as_f64().unwrap_or(0.0),
            r["ttft_p99_ms"].as_f64().unwrap_or(0.0),
            r["tpot_mean_ms"].as_f64().unwrap_or(0.0),
            r["tpot_p99_ms"].as_f64().unwrap_or(0.0),
        );
    }
    Ok(())
}
