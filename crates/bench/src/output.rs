//! Writing results: the per-request CSV (seed 004's columns plus TPOT and ITL statistics), the
//! JSON summary (vLLM `bench serve`'s fields per run, plus resource use), the text report and
//! seed 001's side-by-side comparison with percent improvements.

use std::fmt::Write as _;
use std::path::Path;

use crate::metrics::{percent_change, Stats};
use crate::runner::RunResult;
use crate::BenchError;
use serde::Serialize;

fn out_err(path: &Path, e: impl std::fmt::Display) -> BenchError {
    BenchError::Output { path: path.display().to_string(), problem: e.to_string() }
}

/// One CSV row. Seed 004's columns first (`run_num, seq, status, batch_num, input_tokens,
/// output_tokens, total_tokens, latency, ttft, tokens_per_sec, error`; times in seconds), then
/// the configuration's name, TPOT and the request's ITL mean/p50/p99/max (seconds).
#[derive(Debug, Serialize)]
struct Row<'a> {
    run_num: usize,
    seq: usize,
    status: &'static str,
    batch_num: Option<u64>,
    input_tokens: usize,
    output_tokens: usize,
    total_tokens: usize,
    latency: f64,
    ttft: Option<f64>,
    tokens_per_sec: f64,
    error: &'a str,
    config: &'a str,
    send_time: f64,
    tpot: Option<f64>,
    itl_mean: Option<f64>,
    itl_p50: Option<f64>,
    itl_p99: Option<f64>,
    itl_max: Option<f64>,
}

/// Writes every request of every run, sorted by run then seq.
pub fn write_csv(path: &Path, runs: &[RunResult]) -> Result<(), BenchError> {
    let mut w = csv::Writer::from_path(path).map_err(|e| out_err(path, e))?;
    for run in runs {
        let mut results: Vec<_> = run.results.iter().collect();
        results.sort_by_key(|r| r.seq);
        for r in results {
            let itl = (!r.itl.is_empty()).then(|| Stats::of_secs(&r.itl, &[50.0, 99.0, 100.0]));
            let itl_at = |p: f64| itl.as_ref().and_then(|s| s.p(p)).map(|ms| ms / 1e3);
            w.serialize(Row {
                run_num: run.run_num,
                seq: r.seq + 1,
                status: if r.success { "ok" } else { "error" },
                batch_num: r.batch_num,
                input_tokens: r.prompt_len,
                output_tokens: r.output_tokens,
                total_tokens: r.prompt_len + r.output_tokens,
                latency: r.latency,
                ttft: r.ttft,
                tokens_per_sec: r.tokens_per_sec(),
                error: &r.error,
                config: &run.name,
                send_time: r.sent_at,
                tpot: r.tpot(),
                itl_mean: itl.as_ref().map(|s| s.mean / 1e3),
                itl_p50: itl_at(50.0),
                itl_p99: itl_at(99.0),
                itl_max: itl_at(100.0),
            })
            .map_err(|e| out_err(path, e))?;
        }
    }
    w.flush().map_err(|e| out_err(path, e))
}

/// Writes the runs' summaries (and the benchmark's settings) as JSON.
pub fn write_json(path: &Path, settings: &serde_json::Value, runs: &[RunResult]) -> Result<(), BenchError> {
    let doc = serde_json::json!({ "settings": settings, "runs": runs });
    let text = serde_json::to_string_pretty(&doc).map_err(|e| out_err(path, e))?;
    std::fs::write(path, text).map_err(|e| out_err(path, e))
}

fn stat_lines(s: &mut String, label: &str, st: &Stats) {
    let _ = writeln!(s, "Mean {label} (ms):{:>24.2}", st.mean);
    let _ = writeln!(s, "Median {label} (ms):{:>22.2}", st.median);
    for (p, v) in &st.percentiles {
        let _ = writeln!(s, "P{p} {label} (ms):{:>25.2}", v);
    }
}

/// `vllm bench serve`'s printed report for one run.
pub fn report(run: &RunResult) -> String {
    let m = &run.summary;
    let mut s = String::new();
    let _ = writeln!(s, "============ Serving Benchmark Result: {} #{} ============", run.name, run.run_num);
    let _ = writeln!(s, "Successful requests:{:>30}", m.completed);
    let _ = writeln!(s, "Failed requests:{:>34}", m.failed);
    if let Some(c) = run.max_concurrency {
        let _ = writeln!(s, "Maximum request concurrency:{:>22}", c);
    }
    let rate = run.request_rate.map_or("inf".to_string(), |r| format!("{r}"));
    let _ = writeln!(s, "Request rate (req/s):{:>29}", rate);
    let _ = writeln!(s, "Benchmark duration (s):{:>27.2}", m.duration);
    let _ = writeln!(s, "Total input tokens:{:>31}", m.total_input_tokens);
    let _ = writeln!(s, "Total generated tokens:{:>27}", m.total_output_tokens);
    let _ = writeln!(s, "Request throughput (req/s):{:>23.2}", m.request_throughput);
    if let Some(g) = m.request_goodput {
        let _ = writeln!(s, "Request goodput (req/s):{:>26.2}", g);
    }
    let _ = writeln!(s, "Output token throughput (tok/s):{:>18.2}", m.output_throughput);
    let _ = writeln!(s, "Total token throughput (tok/s):{:>19.2}", m.total_token_throughput);
    stat_lines(&mut s, "TTFT", &m.ttft_ms);
    stat_lines(&mut s, "TPOT", &m.tpot_ms);
    stat_lines(&mut s, "ITL", &m.itl_ms);
    stat_lines(&mut s, "E2EL", &m.e2el_ms);
    let sys = &run.system;
    if let Some(b) = sys.peak_rss_bytes {
        let _ = writeln!(s, "Peak server RSS (MiB):{:>28.1}", b as f64 / (1 << 20) as f64);
    }
    if let Some(c) = sys.cpu_cores {
        let _ = writeln!(s, "Server CPU (cores busy):{:>26.2}", c);
    }
    if let Some(u) = sys.gpu_util_mean {
        let _ = writeln!(s, "GPU utilisation (%):{:>30.1}", u);
    }
    if let Some(h) = sys.prefix_cache_hit_rate() {
        let _ = writeln!(s, "Prefix cache hit rate (%):{:>24.1}", h * 100.0);
    }
    if let Some(p) = sys.preemptions {
        let _ = writeln!(s, "Preemptions:{:>38}", p);
    }
    if !sys.stream_utilisation.is_empty() {
        let u: Vec<String> = sys.stream_utilisation.iter().map(|u| format!("{:.0}", u * 100.0)).collect();
        let _ = writeln!(s, "Stream utilisation (%):{:>27}", u.join("/"));
    }
    s
}

/// A configuration's runs averaged (compare mode repeats A B A B); `None` where no run of it
/// measured the figure.
#[derive(Debug, Clone, Default)]
struct Averaged {
    name: String,
    runs: usize,
    throughput: f64,
    output_throughput: f64,
    goodput: Option<f64>,
    /// mean, p50, p95, p99 (ms)
    ttft: [Option<f64>; 4],
    tpot: [Option<f64>; 4],
    itl: [Option<f64>; 4],
    e2e: [Option<f64>; 4],
    preemptions: Option<f64>,
    batch: Option<f64>,
    peak_kv: Option<f64>,
    hit_rate: Option<f64>,
    rss_mib: Option<f64>,
    cpu: Option<f64>,
    gpu: Option<f64>,
    streams: Vec<f64>,
}

fn average(runs: &[&RunResult]) -> Averaged {
    let n = runs.len().max(1) as f64;
    let mean = |f: &dyn Fn(&RunResult) -> f64| runs.iter().map(|r| f(r)).sum::<f64>() / n;
    let opt = |f: &dyn Fn(&RunResult) -> Option<f64>| {
        let v: Vec<f64> = runs.iter().filter_map(|r| f(r)).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let four = |f: &dyn Fn(&RunResult) -> &Stats| {
        [opt(&|r| Some(f(r).mean)), opt(&|r| Some(f(r).median)), opt(&|r| f(r).p(95.0)), opt(&|r| f(r).p(99.0))]
    };
    Averaged {
        name: runs.first().map_or_else(String::new, |r| r.name.clone()),
        runs: runs.len(),
        throughput: mean(&|r| r.summary.request_throughput),
        output_throughput: mean(&|r| r.summary.output_throughput),
        goodput: opt(&|r| r.summary.request_goodput),
        ttft: four(&|r| &r.summary.ttft_ms),
        tpot: four(&|r| &r.summary.tpot_ms),
        itl: four(&|r| &r.summary.itl_ms),
        e2e: four(&|r| &r.summary.e2el_ms),
        preemptions: opt(&|r| r.system.preemptions.map(|p| p as f64)),
        batch: opt(&|r| r.system.mean_batch_size),
        peak_kv: opt(&|r| r.system.peak_kv_usage.map(|u| u * 100.0)),
        hit_rate: opt(&|r| r.system.prefix_cache_hit_rate().map(|h| h * 100.0)),
        rss_mib: opt(&|r| r.system.peak_rss_bytes.map(|b| b as f64 / (1 << 20) as f64)),
        cpu: opt(&|r| r.system.cpu_cores),
        gpu: opt(&|r| r.system.gpu_util_mean),
        streams: runs.last().map(|r| r.system.stream_utilisation.clone()).unwrap_or_default(),
    }
}

/// One row of the comparison: label, value, whether higher is better (`None`: not compared),
/// decimals.
type Metric = (&'static str, Box<dyn Fn(&Averaged) -> Option<f64>>, Option<bool>, usize);

fn metrics() -> Vec<Metric> {
    let mut rows: Vec<Metric> = vec![
        ("runs", Box::new(|a| Some(a.runs as f64)), None, 0),
        ("throughput (req/s)", Box::new(|a| Some(a.throughput)), Some(true), 2),
        ("output tokens/s", Box::new(|a| Some(a.output_throughput)), Some(true), 1),
        ("goodput (req/s)", Box::new(|a| a.goodput), Some(true), 2),
    ];
    // mean, p50, p95, p99 of each latency, lower is better.
    type Pick = fn(&Averaged) -> [Option<f64>; 4];
    let latencies: [(Pick, [&'static str; 4], usize); 4] = [
        (|a| a.ttft, ["TTFT avg (ms)", "TTFT p50 (ms)", "TTFT p95 (ms)", "TTFT p99 (ms)"], 1),
        (|a| a.tpot, ["TPOT avg (ms)", "TPOT p50 (ms)", "TPOT p95 (ms)", "TPOT p99 (ms)"], 2),
        (|a| a.itl, ["ITL avg (ms)", "ITL p50 (ms)", "ITL p95 (ms)", "ITL p99 (ms)"], 2),
        (|a| a.e2e, ["E2E avg (ms)", "E2E p50 (ms)", "E2E p95 (ms)", "E2E p99 (ms)"], 1),
    ];
    for (pick, labels, prec) in latencies {
        for (i, label) in labels.into_iter().enumerate() {
            rows.push((label, Box::new(move |a: &Averaged| pick(a)[i]), Some(false), prec));
        }
    }
    rows.extend::<Vec<Metric>>(vec![
        ("preemptions", Box::new(|a| a.preemptions), Some(false), 0),
        ("mean batch size", Box::new(|a| a.batch), Some(true), 1),
        ("peak KV usage (%)", Box::new(|a| a.peak_kv), None, 1),
        ("prefix cache hits (%)", Box::new(|a| a.hit_rate), None, 1),
        ("peak memory (MiB)", Box::new(|a| a.rss_mib), Some(false), 0),
        ("CPU (cores)", Box::new(|a| a.cpu), Some(false), 2),
        ("GPU utilisation (%)", Box::new(|a| a.gpu), Some(true), 1),
    ]);
    rows
}

/// Seed 001's comparison, for benchmarks and simulations alike: each configuration (averaged
/// over its repeats) side by side, then the change of each against the first (positive =
/// better: higher throughput, lower latency). A row no configuration measured is left out.
pub fn comparison_table(runs: &[RunResult]) -> String {
    // A rate sweep compares each configuration at each rate.
    let mut rates: Vec<Option<f64>> = Vec::new();
    for r in runs {
        if !rates.contains(&r.request_rate) {
            rates.push(r.request_rate);
        }
    }
    let column = |r: &RunResult| match r.request_rate {
        _ if rates.len() < 2 => r.name.clone(),
        Some(rate) => format!("{} @{rate}", r.name),
        None => format!("{} @inf", r.name),
    };
    let mut names: Vec<String> = Vec::new();
    for r in runs {
        if !names.contains(&column(r)) {
            names.push(column(r));
        }
    }
    let avg: Vec<Averaged> = names
        .iter()
        .map(|n| {
            let mut a = average(&runs.iter().filter(|r| column(r) == *n).collect::<Vec<_>>());
            a.name = n.clone();
            a
        })
        .collect();
    let width = names.iter().map(|n| n.len()).max().unwrap_or(8).max(12);
    let rows: Vec<Metric> = metrics().into_iter().filter(|m| avg.iter().any(|a| m.1(a).is_some())).collect();
    let mut s = String::new();
    let _ = write!(s, "{:<26}", "metric");
    for a in &avg {
        let _ = write!(s, " {:>width$}", a.name);
    }
    s.push('\n');
    for (label, f, _, prec) in &rows {
        let _ = write!(s, "{label:<26}");
        for a in &avg {
            match f(a) {
                Some(v) => {
                    let _ = write!(s, " {:>width$.prec$}", v);
                }
                None => {
                    let _ = write!(s, " {:>width$}", "n/a");
                }
            }
        }
        s.push('\n');
    }
    let _ = write!(s, "{:<26}", "stream utilisation (%)");
    for a in &avg {
        let u: Vec<String> = a.streams.iter().map(|u| format!("{:.0}", u * 100.0)).collect();
        let _ = write!(s, " {:>width$}", if u.is_empty() { "n/a".to_string() } else { u.join("/") });
    }
    s.push('\n');
    if avg.len() > 1 {
        let _ = writeln!(s, "\nchange vs {} (positive = better)", avg[0].name);
        for (label, f, higher, _) in &rows {
            let Some(higher) = higher else { continue };
            let _ = write!(s, "{label:<26}");
            for (i, a) in avg.iter().enumerate() {
                let cell = match (f(a), f(&avg[0])) {
                    _ if i == 0 => "base".to_string(),
                    (Some(v), Some(b)) => percent_change(v, b, *higher),
                    _ => "—".to_string(),
                };
                let _ = write!(s, " {:>width$}", cell);
            }
            s.push('\n');
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{RequestRecord, Slo, Summary};
    use crate::system::SystemStats;

    fn run(name: &str, run_num: usize, latency: f64) -> RunResult {
        let results: Vec<RequestRecord> = (0..4)
            .map(|i| RequestRecord {
                seq: i,
                success: true,
                prompt_len: 8,
                output_tokens: 5,
                sent_at: 0.0,
                ttft: Some(latency / 5.0),
                itl: vec![latency / 5.0; 4],
                latency,
                ..RequestRecord::default()
            })
            .collect();
        let summary = Summary::of(&results, &[50.0, 95.0, 99.0], &Slo::default());
        RunResult {
            name: name.into(),
            run_num,
            request_rate: None,
            max_concurrency: None,
            results,
            summary,
            system: SystemStats::default(),
        }
    }

    #[test]
    fn the_comparison_averages_repeats_and_signs_improvements() {
        // A B A B: fixed at 2 s and 4 s latency (mean 3 s), continuous at 1.5 s.
        let runs = [run("fixed", 1, 2.0), run("continuous", 1, 1.5), run("fixed", 2, 4.0), run("continuous", 2, 1.5)];
        let t = comparison_table(&runs);
        // Latency avg: fixed (2000 + 4000)/2 = 3000 ms; continuous 1500 ms → 50% better.
        assert!(t.contains("3000.0") && t.contains("1500.0"), "{t}");
        assert!(t.contains("+50.0%"), "{t}");
        // Nothing measured CPU or GPU here: no such rows.
        assert!(!t.contains("GPU utilisation") && !t.contains("CPU (cores)"), "{t}");
    }

    #[test]
    fn a_sweep_compares_each_rate_apart() {
        // One configuration at 2 req/s (latency 2 s) and all at once (4 s): two columns, not
        // one averaged over both.
        let mut slow = run("x", 1, 2.0);
        slow.request_rate = Some(2.0);
        let t = comparison_table(&[slow, run("x", 1, 4.0)]);
        assert!(t.contains("x @2") && t.contains("x @inf"), "{t}");
        assert!(t.contains("2000.0") && t.contains("4000.0") && !t.contains("3000.0"), "{t}");
    }

    #[test]
    fn the_comparison_reports_improvements_with_the_right_sign() {
        // Throughput 12 req/s against 10 (4 requests over 1/3 s and 0.4 s): +20.0%.
        let mut base = run("simple", 1, 0.4);
        let mut faster = run("parallel", 1, 1.0 / 3.0);
        base.system.preemptions = Some(2);
        faster.system.preemptions = Some(1);
        let t = comparison_table(&[base, faster]);
        assert!(t.contains("+20.0%"), "{t}");
        // Preemptions 1 against 2: fewer is better, +50.0%.
        let line = t.lines().rfind(|l| l.starts_with("preemptions")).unwrap();
        assert!(line.contains("+50.0%"), "{t}");
    }

    #[test]
    fn the_csv_has_seed_004s_columns_then_ours() {
        let path = std::env::temp_dir().join(format!("tandem-bench-{}.csv", std::process::id()));
        write_csv(&path, &[run("x", 1, 1.0)]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let header = text.lines().next().unwrap();
        assert!(header.starts_with(
            "run_num,seq,status,batch_num,input_tokens,output_tokens,total_tokens,latency,ttft,tokens_per_sec,error,"
        ));
        assert!(header.ends_with("tpot,itl_mean,itl_p50,itl_p99,itl_max"), "{header}");
        // Row 1: seq 1, ok, 8 + 5 = 13 tokens, 5 tokens / 1 s = 5 tok/s, TPOT (1 − 0.2)/4 = 0.2.
        let row = text.lines().nth(1).unwrap();
        assert!(row.starts_with("1,1,ok,,8,5,13,1.0,0.2,5.0,,x,"), "{row}");
        assert_eq!(text.lines().count(), 5);
        let _ = std::fs::remove_file(path);
    }
}
