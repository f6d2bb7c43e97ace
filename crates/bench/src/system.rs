//! Resource use during a run, sampled twice a second: GPU utilisation and memory through NVML
//! when a GPU is present (`nvml-wrapper` loads the driver's library at run time, so this builds
//! and runs on machines without one); otherwise the serving process' RSS and CPU — our own for
//! an in-process engine, the server's `process_*` families from `/metrics` for an HTTP target —
//! and the server-side stream utilisation and batch size from tandem's `/metrics`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tandem_engine::{Engine, ProcessUsage};
use tokio::sync::watch;

use crate::target::HttpTarget;

/// What was measured about the serving side.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SystemStats {
    pub peak_rss_bytes: Option<u64>,
    /// Mean CPU cores busy (CPU seconds / wall seconds).
    pub cpu_cores: Option<f64>,
    pub gpu_name: Option<String>,
    /// Mean GPU utilisation, percent.
    pub gpu_util_mean: Option<f64>,
    pub gpu_mem_peak_bytes: Option<u64>,
    /// Per execution stream, busy / device time (tandem only).
    pub stream_utilisation: Vec<f64>,
    pub mean_batch_size: Option<f64>,
    pub preemptions: Option<u64>,
    /// Steps the engine ran during the run (in-process engines and simulations).
    pub steps: Option<u64>,
    /// Highest fraction of KV blocks in use (in-process engines and simulations).
    pub peak_kv_usage: Option<f64>,
    /// Prompt tokens looked up in the prefix cache during the run, and found there: the
    /// counters' change from before the first request to after the last.
    pub prefix_cache_queries: Option<u64>,
    pub prefix_cache_hits: Option<u64>,
}

impl SystemStats {
    /// Prompt tokens served from the prefix cache over those looked up during the run.
    pub fn prefix_cache_hit_rate(&self) -> Option<f64> {
        match (self.prefix_cache_queries, self.prefix_cache_hits) {
            (Some(q), Some(h)) if q > 0 => Some(h as f64 / q as f64),
            (Some(_), Some(_)) => Some(0.0),
            _ => None,
        }
    }
}

/// Where the serving side can be observed.
#[derive(Clone)]
pub enum Probe {
    Local(Arc<Engine>),
    Remote(HttpTarget),
}

/// Sample values of the family `name` in a Prometheus/OpenMetrics text (label sets ignored).
pub fn prom_values(text: &str, name: &str) -> Vec<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect()
}

/// One look at the serving side.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    rss: Option<u64>,
    cpu: Option<f64>,
    streams: Vec<f64>,
    batch: Option<f64>,
    preemptions: Option<u64>,
    steps: Option<u64>,
    peak_kv: Option<f64>,
    prefix_queries: Option<u64>,
    prefix_hits: Option<u64>,
}

/// The sum over label sets of the first family of `names` that `text` has.
fn prom_sum(text: &str, names: &[&str]) -> Option<u64> {
    names.iter().map(|n| prom_values(text, n)).find(|v| !v.is_empty()).map(|v| v.iter().sum::<f64>() as u64)
}

/// Reads what `probe` shows now.
pub async fn read(probe: &Probe) -> Reading {
    match probe {
        Probe::Local(engine) => {
            let u = ProcessUsage::read();
            let st = engine.stats();
            Reading {
                rss: u.rss_bytes,
                cpu: u.cpu_time.map(|d| d.as_secs_f64()),
                streams: st.stream_utilisation.clone(),
                batch: Some(st.mean_batch_size),
                preemptions: Some(st.scheduler.preemptions()),
                steps: Some(st.steps),
                peak_kv: Some(st.peak_kv_usage),
                prefix_queries: Some(st.scheduler.prefix_cache_queries),
                prefix_hits: Some(st.scheduler.prefix_cache_hits),
            }
        }
        Probe::Remote(target) => {
            let Some(text) = target.scrape_metrics().await else {
                return Reading::default();
            };
            let one = |n: &str| prom_values(&text, n).first().copied();
            Reading {
                prefix_queries: prom_sum(
                    &text,
                    &["tandem:prefix_cache_queries_total", "vllm:prefix_cache_queries_total"],
                ),
                prefix_hits: prom_sum(&text, &["tandem:prefix_cache_hits_total", "vllm:prefix_cache_hits_total"]),
                steps: None,
                peak_kv: None,
                rss: one("process_resident_memory_bytes").map(|b| b as u64),
                cpu: one("process_cpu_seconds_total"),
                streams: prom_values(&text, "tandem:stream_utilization"),
                batch: one("tandem:mean_batch_size"),
                preemptions: prom_sum(&text, &["tandem:num_preemptions_total"]),
            }
        }
    }
}

struct Gpu {
    nvml: nvml_wrapper::Nvml,
}

impl Gpu {
    fn open() -> Option<Self> {
        let nvml = nvml_wrapper::Nvml::init().ok()?;
        (nvml.device_count().ok()? > 0).then_some(Self { nvml })
    }

    fn name(&self) -> Option<String> {
        self.nvml.device_by_index(0).ok()?.name().ok()
    }

    /// (utilisation %, memory used bytes) of GPU 0.
    fn read(&self) -> Option<(f64, u64)> {
        let d = self.nvml.device_by_index(0).ok()?;
        Some((d.utilization_rates().ok()?.gpu as f64, d.memory_info().ok()?.used))
    }
}

/// Samples `probe` until `stop` turns true, from `first` (read before the first request was
/// sent); returns the run's figures.
pub async fn sample(probe: Probe, first: Reading, mut stop: watch::Receiver<bool>) -> SystemStats {
    let gpu = Gpu::open();
    let started = Instant::now();
    let mut last = first.clone();
    let cpu0 = last.cpu;
    let mut peak_rss = last.rss;
    let (mut util_sum, mut util_n, mut mem_peak) = (0.0, 0u32, None::<u64>);
    loop {
        if let Some((u, m)) = gpu.as_ref().and_then(|g| g.read()) {
            util_sum += u;
            util_n += 1;
            mem_peak = Some(mem_peak.map_or(m, |p| p.max(m)));
        }
        let stopped = tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => false,
            _ = stop.changed() => true,
        };
        last = read(&probe).await;
        peak_rss = match (peak_rss, last.rss) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if stopped || *stop.borrow() {
            break;
        }
    }
    let wall = started.elapsed().as_secs_f64().max(1e-9);
    SystemStats {
        peak_rss_bytes: peak_rss,
        cpu_cores: match (cpu0, last.cpu) {
            (Some(a), Some(b)) => Some((b - a).max(0.0) / wall),
            _ => None,
        },
        gpu_name: gpu.as_ref().and_then(|g| g.name()),
        gpu_util_mean: (util_n > 0).then(|| util_sum / util_n as f64),
        gpu_mem_peak_bytes: mem_peak,
        mean_batch_size: last.batch,
        preemptions: last.preemptions,
        steps: delta(first.steps, last.steps),
        peak_kv_usage: last.peak_kv,
        prefix_cache_queries: delta(first.prefix_queries, last.prefix_queries),
        prefix_cache_hits: delta(first.prefix_hits, last.prefix_hits),
        stream_utilisation: last.streams,
    }
}

fn delta(before: Option<u64>, after: Option<u64>) -> Option<u64> {
    Some(after?.saturating_sub(before?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_values_are_found_by_family_name() {
        let text = "# TYPE x gauge\nprocess_resident_memory_bytes 1048576\ntandem:stream_utilization{model_name=\"m\",stream=\"0\"} 0.5\ntandem:stream_utilization{model_name=\"m\",stream=\"1\"} 0.25\ntandem:stream_utilization_other 9\n";
        assert_eq!(prom_values(text, "process_resident_memory_bytes"), vec![1048576.0]);
        assert_eq!(prom_values(text, "tandem:stream_utilization"), vec![0.5, 0.25]);
        assert!(prom_values(text, "missing").is_empty());
        // Summed over label sets; the first family present wins.
        let two =
            "vllm:prefix_cache_hits_total{model_name=\"a\"} 3\nvllm:prefix_cache_hits_total{model_name=\"b\"} 4\n";
        assert_eq!(prom_sum(two, &["tandem:prefix_cache_hits_total", "vllm:prefix_cache_hits_total"]), Some(7));
        assert_eq!(prom_sum(two, &["tandem:prefix_cache_hits_total"]), None);
    }

    #[test]
    fn the_hit_rate_is_of_the_runs_own_lookups() {
        // 96 of 128 prompt tokens looked up during the run were cached: 75%.
        let s = SystemStats { prefix_cache_queries: Some(128), prefix_cache_hits: Some(96), ..SystemStats::default() };
        assert_eq!(s.prefix_cache_hit_rate(), Some(0.75));
        assert_eq!(SystemStats { prefix_cache_queries: Some(0), ..s.clone() }.prefix_cache_hit_rate(), Some(0.0));
        assert_eq!(SystemStats::default().prefix_cache_hit_rate(), None);
        // Counters that went from 100/40 to 228/136 over the run: 128 looked up, 96 found.
        assert_eq!((delta(Some(100), Some(228)), delta(Some(40), Some(136))), (Some(128), Some(96)));
        assert_eq!(delta(None, Some(5)), None);
    }
}
