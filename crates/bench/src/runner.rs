//! One benchmark run: requests sent at their arrival times (each its own task; at most
//! `max_concurrency` in flight when set, the rest waiting for a slot as in vLLM), a progress bar,
//! and resource sampling alongside; then the summary.

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio::sync::{watch, Semaphore};

use crate::metrics::{RequestRecord, Slo, Summary};
use crate::system::{read, sample, Probe, SystemStats};
use crate::target::Target;
use crate::workload::Workload;

/// What one run sends.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// The configuration's name (compare mode) or the target's.
    pub name: String,
    /// 1-based repetition.
    pub run_num: usize,
    /// The requests and their send times (its `rate` is reported).
    pub workload: Workload,
    pub max_concurrency: Option<usize>,
    /// A request still running after this is recorded as failed (and its connection dropped,
    /// which aborts it on a tandem server).
    pub request_timeout: Duration,
    pub progress: bool,
}

/// A run's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub name: String,
    pub run_num: usize,
    pub request_rate: Option<f64>,
    pub max_concurrency: Option<usize>,
    #[serde(skip)]
    pub results: Vec<RequestRecord>,
    pub summary: Summary,
    pub system: SystemStats,
}

/// The configurations' names in order of first appearance (runs repeat A B A B).
pub fn config_names<'a>(runs: impl IntoIterator<Item = &'a RunResult>) -> Vec<&'a str> {
    let mut names: Vec<&str> = Vec::new();
    for r in runs {
        if !names.contains(&r.name.as_str()) {
            names.push(&r.name);
        }
    }
    names
}

/// Runs `spec` against `target`.
pub async fn run(target: Arc<Target>, probe: Probe, spec: &RunSpec, percentiles: &[f64], slo: &Slo) -> RunResult {
    let bar = if spec.progress { ProgressBar::new(spec.workload.len() as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("{} #{}", spec.name, spec.run_num));
    let (stop_tx, stop_rx) = watch::channel(false);
    // Read before the first send, so the run's counters (prefix-cache lookups) are its own.
    let first = read(&probe).await;
    let sampler = tokio::spawn(sample(probe, first, stop_rx));
    let slots = spec.max_concurrency.map(|n| Arc::new(Semaphore::new(n.max(1))));
    let start = Instant::now();
    let tasks: Vec<_> = spec
        .workload
        .requests
        .iter()
        .cloned()
        .zip(spec.workload.times.iter().copied())
        .enumerate()
        .map(|(seq, (req, at))| {
            let (target, slots, bar) = (target.clone(), slots.clone(), bar.clone());
            let timeout = spec.request_timeout;
            tokio::spawn(async move {
                tokio::time::sleep_until((start + Duration::from_secs_f64(at)).into()).await;
                let _permit = match &slots {
                    Some(s) => s.clone().acquire_owned().await.ok(),
                    None => None,
                };
                let sent_at = start.elapsed().as_secs_f64();
                let r = match tokio::time::timeout(timeout, target.send(seq, &req, sent_at)).await {
                    Ok(r) => r,
                    Err(_) => RequestRecord {
                        seq,
                        prompt_len: req.prompt_len,
                        sent_at,
                        latency: timeout.as_secs_f64(),
                        error: format!("timed out after {:?}", timeout),
                        ..RequestRecord::default()
                    },
                };
                bar.inc(1);
                r
            })
        })
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for (seq, t) in tasks.into_iter().enumerate() {
        results.push(t.await.unwrap_or_else(|e| RequestRecord {
            seq,
            error: format!("the request task failed: {e}"),
            ..RequestRecord::default()
        }));
    }
    bar.finish_and_clear();
    let _ = stop_tx.send(true);
    let system = sampler.await.unwrap_or_default();
    let summary = Summary::of(&results, percentiles, slo);
    RunResult {
        name: spec.name.clone(),
        run_num: spec.run_num,
        request_rate: spec.workload.rate,
        max_concurrency: spec.max_concurrency,
        results,
        summary,
        system,
    }
}
