//! `tandem bench`: flags → datasets, arrivals and configurations → `tandem_bench` runs →
//! report, CSV, JSON, SVG plots and seed 001's comparison table.
//!
//! Targets: an OpenAI-compatible server (`--base-url`), a `tandem serve` started per
//! configuration of a TOML file (`--compare-file`), or an engine in this process (default; each
//! `--compare NAME:key=value,...` a fresh engine with those scheduler overrides).

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use tandem_bench::output::{comparison_table, report, write_csv, write_json};
use tandem_bench::plot::{latency_cdfs, rate_sweep};
use tandem_bench::server::ServerProcess;
use tandem_bench::{
    run, Arrival, DatasetSpec, EngineTarget, HttpTarget, Probe, PromptSet, RunResult, RunSpec, Slo, Target,
    WorkloadSpec,
};
use tandem_executor::text::TextTokenizer;

use crate::model::{start_with, ModelArgs};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// An OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1; default: an engine in process.
    #[arg(long)]
    base_url: Option<String>,
    /// The `model` field for --base-url (default: the first of /v1/models).
    #[arg(long)]
    served_model_name: Option<String>,
    #[arg(long, env = "OPENAI_API_KEY")]
    api_key: Option<String>,
    /// The in-process engine's model and settings (also the tokenizer for --dataset sharegpt).
    #[command(flatten)]
    model: ModelArgs,
    /// random, sharegpt (with --dataset-path), shared-prefix, or mixed: --background short
    /// requests (--input-len prompt, --background-output-len output) sent at once, then
    /// --num-prompts long ones (--long-len prompt, --output-len output) on the arrival schedule.
    #[arg(long, default_value = "random")]
    dataset: String,
    /// mixed: short requests decoding in the background.
    #[arg(long, default_value_t = 32)]
    background: usize,
    /// mixed: output tokens of each background request.
    #[arg(long, default_value_t = 256)]
    background_output_len: usize,
    /// mixed: prompt lengths of the long requests, fixed:N or uniform:LO:HI.
    #[arg(long, default_value = "uniform:1024:2048")]
    long_len: String,
    #[arg(long)]
    dataset_path: Option<PathBuf>,
    #[arg(long, default_value_t = 100)]
    num_prompts: usize,
    /// Prompt tokens (random; the per-request suffix for shared-prefix).
    #[arg(long, default_value_t = 128)]
    input_len: usize,
    #[arg(long, default_value_t = 64)]
    output_len: usize,
    /// Lengths uniform in len·(1 ± ratio).
    #[arg(long, default_value_t = 0.0)]
    range_ratio: f64,
    /// shared-prefix: tokens of each common prefix, and how many distinct prefixes.
    #[arg(long, default_value_t = 256)]
    prefix_len: usize,
    #[arg(long, default_value_t = 4)]
    prefix_groups: usize,
    /// Priorities drawn uniformly from 0..N (a priority mix; 1 = all equal).
    #[arg(long, default_value_t = 1)]
    priority_levels: u32,
    /// Requests per second, or `inf` to send all at once.
    #[arg(long, default_value = "inf")]
    request_rate: String,
    /// Gamma shape of the inter-arrival times: 1 = Poisson, < 1 burstier.
    #[arg(long, default_value_t = 1.0)]
    burstiness: f64,
    /// Evenly spaced arrivals instead of gamma/Poisson.
    #[arg(long)]
    fixed_rate: bool,
    #[arg(long)]
    max_concurrency: Option<usize>,
    /// Seconds before a request counts as failed (e.g. a fixed batch that never fills).
    #[arg(long, default_value_t = 600.0)]
    request_timeout: f64,
    /// A rate sweep: comma-separated request rates, `inf` allowed (overrides --request-rate).
    #[arg(long, value_delimiter = ',')]
    sweep: Vec<String>,
    /// In-process configurations to compare, `NAME:key=value,...` (repeatable).
    #[arg(long)]
    compare: Vec<String>,
    /// A TOML file of server configurations: `[[config]] name = "...", args = ["--set", "..."]`;
    /// each runs `tandem serve --port 0 ARGS` and is benchmarked over HTTP.
    #[arg(long)]
    compare_file: Option<PathBuf>,
    /// Runs per configuration, interleaved A B A B.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    #[arg(long, value_delimiter = ',', default_value = "50,95,99")]
    percentiles: Vec<f64>,
    /// SLOs for goodput, e.g. "ttft:500 tpot:50 e2el:2000" (ms).
    #[arg(long)]
    goodput: Vec<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Send the same prompts in every run (sweep point, repeat, configuration), so a server's
    /// prefix cache may serve later runs warm. Default: cold — each run gets prompts of its own
    /// (the same lengths within a repeat), and every run reports the prefix-cache hit rate it
    /// caused.
    #[arg(long)]
    reuse_prompts: bool,
    /// Directory for requests.csv, summary.json and the SVG plots.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    #[arg(long)]
    no_progress: bool,
}

#[derive(Debug, serde::Deserialize)]
struct CompareFile {
    config: Vec<ServerConfig>,
}

#[derive(Debug, Clone, serde::Deserialize)]
struct ServerConfig {
    name: String,
    #[serde(default)]
    args: Vec<String>,
}

/// How one configuration is reached.
#[derive(Debug, Clone)]
enum Config {
    Remote(String),
    InProcess { name: String, overrides: Vec<String> },
    Server(ServerConfig),
}

impl Config {
    fn name(&self) -> &str {
        match self {
            Config::Remote(n) => n,
            Config::InProcess { name, .. } => name,
            Config::Server(c) => &c.name,
        }
    }
}

fn parse_rate(s: &str) -> Result<Option<f64>, String> {
    if s == "inf" {
        return Ok(None);
    }
    s.parse::<f64>()
        .ok()
        .filter(|r| *r > 0.0 && r.is_finite())
        .map(Some)
        .ok_or_else(|| format!("--request-rate must be a positive number or inf, got `{s}`"))
}

fn configs(a: &BenchArgs) -> Result<Vec<Config>, String> {
    if let Some(url) = &a.base_url {
        if !a.compare.is_empty() || a.compare_file.is_some() {
            return Err("--compare and --compare-file start their own engines; drop --base-url".into());
        }
        return Ok(vec![Config::Remote(url.clone())]);
    }
    if let Some(path) = &a.compare_file {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file: CompareFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        return Ok(file.config.into_iter().map(Config::Server).collect());
    }
    if a.compare.is_empty() {
        return Ok(vec![Config::InProcess { name: "tandem".into(), overrides: Vec::new() }]);
    }
    a.compare
        .iter()
        .map(|spec| {
            let (name, overrides) = spec.split_once(':').unwrap_or((spec.as_str(), ""));
            // Validate now rather than after earlier configurations have run.
            tandem_core::named_config(spec, &tandem_core::SchedulerConfig::default()).map_err(|e| e.to_string())?;
            Ok(Config::InProcess { name: name.into(), overrides: vec![overrides.to_string()] })
        })
        .collect()
}

fn dataset(a: &BenchArgs) -> Result<DatasetSpec, String> {
    match a.dataset.as_str() {
        "random" => {
            Ok(DatasetSpec::Random { input_len: a.input_len, output_len: a.output_len, range_ratio: a.range_ratio })
        }
        "sharegpt" => Ok(DatasetSpec::ShareGpt {
            path: a.dataset_path.clone().ok_or("--dataset sharegpt needs --dataset-path FILE.json")?,
        }),
        "shared-prefix" => Ok(DatasetSpec::SharedPrefix {
            groups: a.prefix_groups,
            prefix_len: a.prefix_len,
            suffix_len: a.input_len,
            output_len: a.output_len,
        }),
        "mixed" => Ok(DatasetSpec::Mixed {
            background: a.background,
            background_input: a.input_len,
            background_output: a.background_output_len,
            long_prompt: tandem_bench::LengthDist::parse(&a.long_len, false)
                .ok_or_else(|| format!("bad --long-len `{}`: fixed:N or uniform:LO:HI", a.long_len))?,
            long_output: a.output_len,
        }),
        other => Err(format!("unknown dataset `{other}`: random, sharegpt, shared-prefix or mixed")),
    }
}

pub fn run_cli(a: BenchArgs) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(bench(a))
}

async fn bench(a: BenchArgs) -> Result<(), String> {
    let configs = configs(&a)?;
    let spec = dataset(&a)?;
    let needs_tokenizer = matches!(spec, DatasetSpec::ShareGpt { .. });
    let tokenizer: Option<TextTokenizer> = if needs_tokenizer {
        let path = match &a.model.model {
            Some(p) => p.clone(),
            None => tandem_executor::store::default_model().map_err(|e| e.to_string())?,
        };
        Some(tandem_executor::model::load_model(&path).map_err(|e| e.to_string())?.tokenizer)
    } else {
        None
    };
    let rates: Vec<Option<f64>> = if a.sweep.is_empty() {
        vec![parse_rate(&a.request_rate)?]
    } else {
        a.sweep.iter().map(|r| parse_rate(r)).collect::<Result<_, _>>()?
    };
    let slo = Slo::parse(&a.goodput).map_err(|e| e.to_string())?;
    let request_timeout = std::time::Duration::try_from_secs_f64(a.request_timeout)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or("--request-timeout must be a positive number of seconds")?;
    std::fs::create_dir_all(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;

    let mut runs: Vec<RunResult> = Vec::new();
    let mut run_index = 0u64;
    for &rate in &rates {
        let arrival = match rate {
            None => Arrival::AllAtOnce,
            Some(r) if a.fixed_rate => Arrival::Fixed { rate: r },
            Some(r) => Arrival::Gamma { rate: r, burstiness: a.burstiness },
        };
        let workload = WorkloadSpec {
            dataset: spec.clone(),
            requests: a.num_prompts,
            priority_levels: a.priority_levels,
            arrival,
        };
        for run_num in 1..=a.repeat.max(1) {
            for c in &configs {
                let set = PromptSet::for_run(a.seed, a.reuse_prompts, run_num, run_index);
                run_index += 1;
                let spec = RunSpec {
                    name: c.name().to_string(),
                    run_num,
                    workload: workload.generate(set, tokenizer.as_ref()).map_err(|e| e.to_string())?,
                    max_concurrency: a.max_concurrency,
                    request_timeout,
                    progress: !a.no_progress,
                };
                let r = run_config(&a, c, &spec, &slo, tokenizer.clone()).await?;
                print!("{}", report(&r));
                if let Some(h) = r.system.prefix_cache_hit_rate().filter(|h| *h > 0.0 && !a.reuse_prompts) {
                    // A request preempted by recompute hits its own blocks when it comes back.
                    let recomputed = r.system.preemptions.unwrap_or(0) > 0;
                    if a.dataset != "shared-prefix" && !recomputed {
                        eprintln!(
                            "note: {:.0}% of this run's prompt tokens were served from the prefix cache: the server \
                             has seen these prompts before (a run of an earlier `tandem bench` with the same --seed?); \
                             give each invocation its own --seed for cold figures",
                            h * 100.0
                        );
                    }
                }
                runs.push(r);
            }
        }
    }
    write_outputs(&a, &runs)?;
    if runs.len() > 1 {
        println!("\n{}", comparison_table(&runs));
    }
    Ok(())
}

async fn run_config(
    a: &BenchArgs,
    c: &Config,
    spec: &RunSpec,
    slo: &Slo,
    tokenizer: Option<TextTokenizer>,
) -> Result<RunResult, String> {
    match c {
        Config::Remote(url) => {
            let mut t =
                HttpTarget::new(url, a.served_model_name.clone(), a.api_key.clone()).map_err(|e| e.to_string())?;
            t.resolve_model().await.map_err(|e| e.to_string())?;
            let probe = Probe::Remote(t.clone());
            Ok(run(Arc::new(Target::Http(t)), probe, spec, &a.percentiles, slo).await)
        }
        Config::Server(sc) => {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            let server = ServerProcess::start(&exe, &sc.name, &sc.args).await.map_err(|e| e.to_string())?;
            let mut t = HttpTarget::new(&server.base_url, None, None).map_err(|e| e.to_string())?;
            t.resolve_model().await.map_err(|e| e.to_string())?;
            let probe = Probe::Remote(t.clone());
            let r = run(Arc::new(Target::Http(t)), probe, spec, &a.percentiles, slo).await;
            server.stop().await;
            Ok(r)
        }
        Config::InProcess { overrides, .. } => {
            // A fresh engine per run, so no state (prefix cache, statistics) leaks between runs.
            let overrides = overrides.clone();
            let model = a.model.clone();
            let running = tokio::task::spawn_blocking(move || start_with(&model, &overrides))
                .await
                .map_err(|e| e.to_string())??;
            let engine = Arc::new(running.engine);
            let probe = Probe::Local(engine.clone());
            let target = Target::Engine(Box::new(EngineTarget::new(engine, tokenizer.or(Some(running.tokenizer)))));
            Ok(run(Arc::new(target), probe, spec, &a.percentiles, slo).await)
        }
    }
}

fn write_outputs(a: &BenchArgs, runs: &[RunResult]) -> Result<(), String> {
    let settings = serde_json::json!({
        "dataset": a.dataset, "num_prompts": a.num_prompts, "reuse_prompts": a.reuse_prompts, "input_len": a.input_len, "output_len": a.output_len,
        "range_ratio": a.range_ratio, "request_rate": a.request_rate, "sweep": a.sweep, "burstiness": a.burstiness,
        "fixed_rate": a.fixed_rate, "max_concurrency": a.max_concurrency, "repeat": a.repeat, "seed": a.seed,
        "percentiles": a.percentiles, "goodput": a.goodput, "base_url": a.base_url,
    });
    let csv = a.out.join("requests.csv");
    let json = a.out.join("summary.json");
    let cdf = a.out.join("latency_cdf.svg");
    write_csv(&csv, runs).map_err(|e| e.to_string())?;
    write_json(&json, &settings, runs).map_err(|e| e.to_string())?;
    latency_cdfs(&cdf, runs).map_err(|e| e.to_string())?;
    let mut wrote = vec![csv, json, cdf];
    if a.sweep.len() > 1 {
        let sweep = a.out.join("rate_sweep.svg");
        rate_sweep(&sweep, runs).map_err(|e| e.to_string())?;
        wrote.push(sweep);
    }
    let names: Vec<String> = wrote.iter().map(|p| p.display().to_string()).collect();
    println!("wrote {}", names.join(", "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_rate;

    #[test]
    fn rates_are_positive_numbers_or_inf() {
        assert_eq!(parse_rate("inf"), Ok(None));
        assert_eq!(parse_rate("2.5"), Ok(Some(2.5)));
        for bad in ["0", "-1", "NaN", "infinity", "fast"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}
