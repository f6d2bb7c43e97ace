//! Per-request timelines to run summaries, with vLLM `bench serve`'s definitions, and seed
//! 001's side-by-side comparison table.
//!
//! TTFT = arrival → first token; TPOT = (E2EL − TTFT) / (output tokens − 1) for requests with
//! more than one token; E2EL = arrival → last token; throughput = completed requests (or tokens)
//! over the wall time from the first arrival to the last completion; percentiles by linear
//! interpolation between closest ranks (numpy's default, as vLLM uses).

use std::fmt::Write as _;
use std::time::Duration;

/// One request's timeline.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestRecord {
    pub arrival: Duration,
    pub first_token: Option<Duration>,
    pub finish: Option<Duration>,
    pub prompt_tokens: usize,
    pub output_tokens: usize,
    /// Ended without completing (aborted, rejected, failed).
    pub failed: bool,
}

impl RequestRecord {
    pub fn ttft(&self) -> Option<Duration> {
        self.first_token.map(|t| t.saturating_sub(self.arrival))
    }
    pub fn e2e(&self) -> Option<Duration> {
        self.finish.map(|t| t.saturating_sub(self.arrival))
    }
    /// `(E2EL − TTFT) / (n − 1)`, for `n > 1` output tokens.
    pub fn tpot(&self) -> Option<Duration> {
        match (self.e2e(), self.ttft(), self.output_tokens) {
            (Some(e), Some(t), n) if n > 1 => Some(e.saturating_sub(t) / (n as u32 - 1)),
            _ => None,
        }
    }
}

/// Mean and percentiles of a sample, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// The `p`-th percentile of sorted values by linear interpolation (numpy's default).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        1 => sorted[0],
        n => {
            let rank = (p / 100.0).clamp(0.0, 1.0) * (n - 1) as f64;
            let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
        }
    }
}

impl Percentiles {
    pub fn of(values: impl Iterator<Item = Duration>) -> Self {
        let mut v: Vec<f64> = values.map(|d| d.as_secs_f64() * 1e3).collect();
        if v.is_empty() {
            return Self::default();
        }
        v.sort_by(f64::total_cmp);
        Self {
            mean: v.iter().sum::<f64>() / v.len() as f64,
            p50: percentile(&v, 50.0),
            p95: percentile(&v, 95.0),
            p99: percentile(&v, 99.0),
        }
    }
}

/// The summary of one run (one configuration).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunSummary {
    pub name: String,
    pub completed: usize,
    pub failed: usize,
    /// First arrival → last completion.
    pub duration: Duration,
    pub request_throughput: f64,
    pub output_throughput: f64,
    pub total_token_throughput: f64,
    pub ttft_ms: Percentiles,
    pub tpot_ms: Percentiles,
    pub e2e_ms: Percentiles,
    pub preemptions: u64,
    /// Per stream: busy / device wall time.
    pub stream_utilisation: Vec<f64>,
    pub mean_batch_size: f64,
    pub steps: u64,
    /// Peak KV usage (fraction of blocks).
    pub peak_kv_usage: f64,
}

impl RunSummary {
    /// Summarises `records` (failed ones count only in `failed`).
    pub fn from_records(name: &str, records: &[RequestRecord]) -> Self {
        let done: Vec<&RequestRecord> = records.iter().filter(|r| !r.failed && r.finish.is_some()).collect();
        let start = records.iter().map(|r| r.arrival).min().unwrap_or_default();
        let end = done.iter().filter_map(|r| r.finish).max().unwrap_or(start);
        let duration = end.saturating_sub(start);
        let secs = duration.as_secs_f64().max(1e-9);
        let out_tokens: usize = done.iter().map(|r| r.output_tokens).sum();
        let in_tokens: usize = done.iter().map(|r| r.prompt_tokens).sum();
        Self {
            name: name.to_string(),
            completed: done.len(),
            failed: records.len() - done.len(),
            duration,
            request_throughput: done.len() as f64 / secs,
            output_throughput: out_tokens as f64 / secs,
            total_token_throughput: (out_tokens + in_tokens) as f64 / secs,
            ttft_ms: Percentiles::of(done.iter().filter_map(|r| r.ttft())),
            tpot_ms: Percentiles::of(done.iter().filter_map(|r| r.tpot())),
            e2e_ms: Percentiles::of(done.iter().filter_map(|r| r.e2e())),
            ..Self::default()
        }
    }
}

/// `new` against `base` as a signed percentage where positive is better (`—` without a base).
pub fn percent_change(new: f64, base: f64, higher_is_better: bool) -> String {
    if base == 0.0 {
        return "—".into();
    }
    let change = (new - base) / base * 100.0;
    let better = if higher_is_better { change } else { -change };
    format!("{better:+.1}%")
}

/// Seed 001's comparison: every run side by side, and each run's improvement over the first
/// (positive = better: higher throughput, lower latency).
pub fn comparison_table(runs: &[RunSummary]) -> String {
    let mut s = String::new();
    let Some(base) = runs.first() else { return s };
    let width = runs.iter().map(|r| r.name.len()).max().unwrap_or(8).max(12);
    let _ = write!(s, "{:<26}", "metric");
    for r in runs {
        let _ = write!(s, " {:>width$}", r.name);
    }
    s.push('\n');
    type Row<'a> = (&'a str, Box<dyn Fn(&RunSummary) -> f64>, bool, usize);
    let rows: Vec<Row> = vec![
        ("throughput (req/s)", Box::new(|r| r.request_throughput), true, 2),
        ("output tokens/s", Box::new(|r| r.output_throughput), true, 0),
        ("TTFT avg (ms)", Box::new(|r| r.ttft_ms.mean), false, 1),
        ("TTFT p50 (ms)", Box::new(|r| r.ttft_ms.p50), false, 1),
        ("TTFT p95 (ms)", Box::new(|r| r.ttft_ms.p95), false, 1),
        ("TTFT p99 (ms)", Box::new(|r| r.ttft_ms.p99), false, 1),
        ("TPOT avg (ms)", Box::new(|r| r.tpot_ms.mean), false, 2),
        ("TPOT p50 (ms)", Box::new(|r| r.tpot_ms.p50), false, 2),
        ("TPOT p95 (ms)", Box::new(|r| r.tpot_ms.p95), false, 2),
        ("TPOT p99 (ms)", Box::new(|r| r.tpot_ms.p99), false, 2),
        ("E2E avg (ms)", Box::new(|r| r.e2e_ms.mean), false, 1),
        ("E2E p50 (ms)", Box::new(|r| r.e2e_ms.p50), false, 1),
        ("E2E p95 (ms)", Box::new(|r| r.e2e_ms.p95), false, 1),
        ("E2E p99 (ms)", Box::new(|r| r.e2e_ms.p99), false, 1),
        ("preemptions", Box::new(|r| r.preemptions as f64), false, 0),
        ("mean batch size", Box::new(|r| r.mean_batch_size), true, 1),
        ("peak KV usage (%)", Box::new(|r| r.peak_kv_usage * 100.0), true, 1),
    ];
    for (label, f, _, prec) in &rows {
        let _ = write!(s, "{label:<26}");
        for r in runs {
            let _ = write!(s, " {:>width$.prec$}", f(r));
        }
        s.push('\n');
    }
    let _ = write!(s, "{:<26}", "stream utilisation (%)");
    for r in runs {
        let u: Vec<String> = r.stream_utilisation.iter().map(|u| format!("{:.0}", u * 100.0)).collect();
        let _ = write!(s, " {:>width$}", u.join("/"));
    }
    s.push('\n');
    if runs.len() > 1 {
        let _ = writeln!(s, "\nchange vs {} (positive = better)", base.name);
        for (label, f, higher, _) in rows.iter().filter(|r| r.0 != "preemptions" && !r.0.starts_with("peak")) {
            let _ = write!(s, "{label:<26}");
            for r in runs {
                let _ = write!(s, " {:>width$}", percent_change(f(r), f(base), *higher));
            }
            s.push('\n');
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn percentiles_interpolate_linearly() {
        let v = [1.0, 2.0, 3.0, 4.0];
        // rank = 0.5 · 3 = 1.5 → 2 + 0.5 · (3 − 2) = 2.5
        assert_eq!(percentile(&v, 50.0), 2.5);
        // rank = 0.95 · 3 = 2.85 → 3 + 0.85 · 1 = 3.85
        assert!((percentile(&v, 95.0) - 3.85).abs() < 1e-12);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn request_metrics_follow_vllm_definitions() {
        // Sent at 100 ms, first token at 150 ms, done at 350 ms with 5 tokens.
        let r = RequestRecord {
            arrival: ms(100),
            first_token: Some(ms(150)),
            finish: Some(ms(350)),
            prompt_tokens: 10,
            output_tokens: 5,
            failed: false,
        };
        assert_eq!(r.ttft(), Some(ms(50)));
        assert_eq!(r.e2e(), Some(ms(250)));
        // (250 − 50) / (5 − 1) = 50 ms
        assert_eq!(r.tpot(), Some(ms(50)));
        let one = RequestRecord { output_tokens: 1, ..r.clone() };
        assert_eq!(one.tpot(), None, "TPOT needs two tokens");
    }

    #[test]
    fn throughput_is_over_first_arrival_to_last_completion() {
        let a = RequestRecord {
            arrival: ms(0),
            first_token: Some(ms(10)),
            finish: Some(ms(500)),
            prompt_tokens: 4,
            output_tokens: 10,
            failed: false,
        };
        let b = RequestRecord { arrival: ms(250), finish: Some(ms(1000)), first_token: Some(ms(300)), ..a.clone() };
        let failed = RequestRecord { failed: true, finish: None, ..a.clone() };
        let s = RunSummary::from_records("x", &[a, b, failed]);
        // 2 completed over 1.0 s; 20 output tokens; 28 total tokens.
        assert_eq!((s.completed, s.failed), (2, 1));
        assert!((s.request_throughput - 2.0).abs() < 1e-9);
        assert!((s.output_throughput - 20.0).abs() < 1e-9);
        assert!((s.total_token_throughput - 28.0).abs() < 1e-9);
    }

    #[test]
    fn comparison_reports_improvements_with_the_right_sign() {
        let base = RunSummary { name: "simple".into(), request_throughput: 10.0, ..Default::default() };
        let faster = RunSummary {
            name: "parallel".into(),
            request_throughput: 12.0,
            e2e_ms: Percentiles { mean: 0.0, ..Default::default() },
            ..Default::default()
        };
        let t = comparison_table(&[base, faster]);
        assert!(t.contains("+20.0%"), "{t}");
    }
}
