//! Per-request results and run summaries with exactly the definitions of `vllm bench serve`
//! (vLLM's `benchmarks/serve.py`), so numbers compare across engines:
//!
//! - TTFT: send → first non-empty streamed chunk.
//! - ITL: the gaps between consecutive non-empty chunks (one gap per chunk, however many tokens
//!   it carries).
//! - TPOT: (E2EL − TTFT) / (output tokens − 1), for requests with more than one token.
//! - E2EL: send → end of stream (`[DONE]`).
//! - Throughputs: completed requests, output tokens, and input + output tokens over the wall time
//!   from the first send to the last completion.
//! - Percentiles: linear interpolation between closest ranks (numpy's default); std is the
//!   population standard deviation (numpy's `std`).
//! - Goodput: completed requests meeting every given SLO (TTFT, TPOT, E2EL; a one-token request
//!   has TPOT 0) per second.

use std::time::Instant;

use serde::Serialize;

use crate::BenchError;

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

/// `new` against `base` as a signed percentage where positive is better (`—` without a base).
pub fn percent_change(new: f64, base: f64, higher_is_better: bool) -> String {
    if base == 0.0 {
        return "—".into();
    }
    let change = (new - base) / base * 100.0;
    let better = if higher_is_better { change } else { -change };
    format!("{better:+.1}%")
}

/// One request's outcome, times in seconds: what every benchmark and simulation records, in
/// real time (HTTP or in-process) or on a simulator's virtual clock.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RequestRecord {
    /// Index in the dataset.
    pub seq: usize,
    pub success: bool,
    pub prompt_len: usize,
    pub output_tokens: usize,
    /// Seconds from the run's start to the send (a simulation: the arrival).
    pub sent_at: f64,
    /// Send → first token.
    pub ttft: Option<f64>,
    /// Gaps between consecutive streamed chunks.
    pub itl: Vec<f64>,
    /// E2EL.
    pub latency: f64,
    /// The step-level batch the request ran in, where the target knows it.
    pub batch_num: Option<u64>,
    pub error: String,
}

impl RequestRecord {
    pub fn tpot(&self) -> Option<f64> {
        match (self.ttft, self.output_tokens) {
            (Some(t), n) if n > 1 => Some((self.latency - t) / (n - 1) as f64),
            _ => None,
        }
    }

    /// Output tokens over E2EL (seed 004's `tokens_per_sec`).
    pub fn tokens_per_sec(&self) -> f64 {
        if self.latency > 0.0 {
            self.output_tokens as f64 / self.latency
        } else {
            0.0
        }
    }
}

/// Times a streamed response: feed it every chunk as it arrives.
#[derive(Debug, Clone)]
pub struct ChunkClock {
    sent: Instant,
    first: Option<f64>,
    last: Option<f64>,
    pub itl: Vec<f64>,
    /// Non-empty chunks seen.
    pub chunks: usize,
}

impl ChunkClock {
    pub fn start(sent: Instant) -> Self {
        Self { sent, first: None, last: None, itl: Vec::new(), chunks: 0 }
    }

    /// A chunk arrived at `at`; empty chunks (role-only, usage-only) do not count.
    pub fn chunk(&mut self, at: Instant, non_empty: bool) {
        if !non_empty {
            return;
        }
        let t = at.saturating_duration_since(self.sent).as_secs_f64();
        match self.last {
            None => self.first = Some(t),
            Some(last) => self.itl.push(t - last),
        }
        self.last = Some(t);
        self.chunks += 1;
    }

    pub fn ttft(&self) -> Option<f64> {
        self.first
    }

    /// Seconds since the send.
    pub fn elapsed(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.sent).as_secs_f64()
    }
}

/// Mean, median, std and the asked percentiles of a sample, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    pub mean: f64,
    pub median: f64,
    pub std: f64,
    /// `(p, value)`.
    pub percentiles: Vec<(f64, f64)>,
}

impl Stats {
    /// Of values in seconds, reported in milliseconds.
    pub fn of_secs(values: &[f64], ps: &[f64]) -> Self {
        let mut v: Vec<f64> = values.iter().map(|x| x * 1e3).collect();
        if v.is_empty() {
            return Self { percentiles: ps.iter().map(|&p| (p, 0.0)).collect(), ..Self::default() };
        }
        v.sort_by(f64::total_cmp);
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        Self {
            mean,
            median: percentile(&v, 50.0),
            std,
            percentiles: ps.iter().map(|&p| (p, percentile(&v, p))).collect(),
        }
    }

    /// The value at percentile `p` if it was asked for.
    pub fn p(&self, p: f64) -> Option<f64> {
        self.percentiles.iter().find(|x| (x.0 - p).abs() < 1e-9).map(|x| x.1)
    }
}

/// Service-level objectives for goodput, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Slo {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub e2el_ms: Option<f64>,
}

impl Slo {
    /// Parses vLLM's `--goodput` syntax: `ttft:500 tpot:50 e2el:2000` (milliseconds).
    pub fn parse(items: &[String]) -> Result<Self, BenchError> {
        let mut slo = Slo::default();
        for item in items.iter().flat_map(|s| s.split_whitespace()) {
            let (k, v) =
                item.split_once(':').ok_or_else(|| BenchError::Config(format!("SLO `{item}`: use NAME:MS")))?;
            let ms: f64 = v
                .parse()
                .ok()
                .filter(|x: &f64| *x > 0.0 && x.is_finite())
                .ok_or_else(|| BenchError::Config(format!("SLO `{item}`: `{v}` is not a positive number of ms")))?;
            match k {
                "ttft" => slo.ttft_ms = Some(ms),
                "tpot" => slo.tpot_ms = Some(ms),
                "e2el" => slo.e2el_ms = Some(ms),
                _ => return Err(BenchError::Config(format!("SLO `{item}`: the names are ttft, tpot and e2el"))),
            }
        }
        Ok(slo)
    }

    pub fn is_set(&self) -> bool {
        self.ttft_ms.is_some() || self.tpot_ms.is_some() || self.e2el_ms.is_some()
    }

    fn met_by(&self, r: &RequestRecord) -> bool {
        let ok = |limit: Option<f64>, v: f64| limit.is_none_or(|l| v * 1e3 <= l);
        ok(self.ttft_ms, r.ttft.unwrap_or(f64::INFINITY))
            && ok(self.tpot_ms, r.tpot().unwrap_or(0.0))
            && ok(self.e2el_ms, r.latency)
    }
}

/// The summary of one run, as `vllm bench serve` prints it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    pub completed: usize,
    pub failed: usize,
    pub total_input_tokens: usize,
    pub total_output_tokens: usize,
    /// First send → last completion, seconds.
    pub duration: f64,
    pub request_throughput: f64,
    /// `None` without SLOs.
    pub request_goodput: Option<f64>,
    pub output_throughput: f64,
    pub total_token_throughput: f64,
    pub ttft_ms: Stats,
    pub tpot_ms: Stats,
    pub itl_ms: Stats,
    pub e2el_ms: Stats,
}

impl Summary {
    pub fn of(results: &[RequestRecord], percentiles: &[f64], slo: &Slo) -> Self {
        let ok: Vec<&RequestRecord> = results.iter().filter(|r| r.success).collect();
        let start = results.iter().map(|r| r.sent_at).fold(f64::INFINITY, f64::min);
        let end = ok.iter().map(|r| r.sent_at + r.latency).fold(f64::NEG_INFINITY, f64::max);
        let duration = if ok.is_empty() { 0.0 } else { (end - start).max(0.0) };
        let per_s = |x: f64| if duration > 0.0 { x / duration } else { 0.0 };
        let input: usize = ok.iter().map(|r| r.prompt_len).sum();
        let output: usize = ok.iter().map(|r| r.output_tokens).sum();
        let ttfts: Vec<f64> = ok.iter().filter_map(|r| r.ttft).collect();
        let tpots: Vec<f64> = ok.iter().filter_map(|r| r.tpot()).collect();
        let itls: Vec<f64> = ok.iter().flat_map(|r| r.itl.iter().copied()).collect();
        let e2els: Vec<f64> = ok.iter().map(|r| r.latency).collect();
        let good = ok.iter().filter(|r| slo.met_by(r)).count();
        Self {
            completed: ok.len(),
            failed: results.len() - ok.len(),
            total_input_tokens: input,
            total_output_tokens: output,
            duration,
            request_throughput: per_s(ok.len() as f64),
            request_goodput: slo.is_set().then(|| per_s(good as f64)),
            output_throughput: per_s(output as f64),
            total_token_throughput: per_s((input + output) as f64),
            ttft_ms: Stats::of_secs(&ttfts, percentiles),
            tpot_ms: Stats::of_secs(&tpots, percentiles),
            itl_ms: Stats::of_secs(&itls, percentiles),
            e2el_ms: Stats::of_secs(&e2els, percentiles),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn the_clock_ignores_empty_chunks_and_times_gaps_between_chunks() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut c = ChunkClock::start(t0);
        c.chunk(at(5), false); // the role-only first chat chunk: not a token
        c.chunk(at(100), true);
        c.chunk(at(130), true); // this chunk carries 3 tokens: still one gap
        c.chunk(at(200), true);
        c.chunk(at(210), false); // the usage chunk
                                 // TTFT 100 ms; ITL 30 and 70 ms.
        assert!(close(c.ttft().unwrap(), 0.1));
        assert_eq!(c.itl.len(), 2);
        assert!(close(c.itl[0], 0.03) && close(c.itl[1], 0.07));
        assert_eq!(c.chunks, 3);
    }

    fn result(sent_at: f64, ttft: f64, latency: f64, out: usize, itl: Vec<f64>) -> RequestRecord {
        RequestRecord {
            success: true,
            prompt_len: 10,
            output_tokens: out,
            sent_at,
            ttft: Some(ttft),
            itl,
            latency,
            ..RequestRecord::default()
        }
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
        // Sent at 100 ms, first token 50 ms later, done 250 ms after the send with 5 tokens.
        let r = result(0.1, 0.05, 0.25, 5, vec![]);
        assert!(close(r.ttft.unwrap(), 0.05));
        assert!(close(r.latency, 0.25));
        // (250 − 50) / (5 − 1) = 50 ms
        assert!(close(r.tpot().unwrap(), 0.05));
        let one = RequestRecord { output_tokens: 1, ..r.clone() };
        assert_eq!(one.tpot(), None, "TPOT needs two tokens");
        // Positive is better: 12 req/s against 10 is +20%; 80 ms against 100 ms too.
        assert_eq!(percent_change(12.0, 10.0, true), "+20.0%");
        assert_eq!(percent_change(80.0, 100.0, false), "+20.0%");
        assert_eq!(percent_change(1.0, 0.0, true), "—");
    }

    #[test]
    fn tpot_counts_tokens_not_chunks() {
        // 5 tokens in 3 chunks: TTFT 0.1 s, E2EL 0.5 s → (0.5 − 0.1) / (5 − 1) = 0.1 s.
        let r = result(0.0, 0.1, 0.5, 5, vec![0.2, 0.2]);
        assert!(close(r.tpot().unwrap(), 0.1));
        // One token: no TPOT. tokens/s = 5 / 0.5 = 10.
        assert_eq!(result(0.0, 0.1, 0.1, 1, vec![]).tpot(), None);
        assert!(close(r.tokens_per_sec(), 10.0));
    }

    #[test]
    fn a_run_summary_follows_vllm() {
        // A: sent 0.0, TTFT 0.1, E2EL 1.0, 10 tokens, ITL [0.1; 9].
        // B: sent 0.5, TTFT 0.3, E2EL 1.5 (ends 2.0), 4 tokens, ITL [0.4, 0.4, 0.4].
        // C: failed.
        let a = result(0.0, 0.1, 1.0, 10, vec![0.1; 9]);
        let b = result(0.5, 0.3, 1.5, 4, vec![0.4; 3]);
        let c = RequestRecord { success: false, sent_at: 0.2, error: "boom".into(), ..RequestRecord::default() };
        let slo = Slo { ttft_ms: Some(200.0), ..Slo::default() };
        let s = Summary::of(&[a, b, c], &[50.0, 99.0], &slo);
        assert_eq!((s.completed, s.failed, s.total_input_tokens, s.total_output_tokens), (2, 1, 20, 14));
        // Duration: first send 0.0 → last completion 2.0 = 2 s.
        assert!(close(s.duration, 2.0));
        assert!(close(s.request_throughput, 1.0));
        assert!(close(s.output_throughput, 7.0)); // 14 / 2
        assert!(close(s.total_token_throughput, 17.0)); // 34 / 2
                                                        // Goodput: only A meets TTFT ≤ 200 ms → 1 / 2 s.
        assert!(close(s.request_goodput.unwrap(), 0.5));
        // TTFT ms [100, 300]: mean 200, median 200, std 100, p99 = 100 + 0.99·200 = 298.
        assert!(close(s.ttft_ms.mean, 200.0) && close(s.ttft_ms.median, 200.0) && close(s.ttft_ms.std, 100.0));
        assert!(close(s.ttft_ms.p(99.0).unwrap(), 298.0));
        // TPOT: A (1.0 − 0.1)/9 = 100 ms, B (1.5 − 0.3)/3 = 400 ms → mean 250.
        assert!(close(s.tpot_ms.mean, 250.0));
        // ITL pools every gap: nine of 100 ms and three of 400 ms → mean (900 + 1200)/12 = 175.
        assert!(close(s.itl_ms.mean, 175.0));
        // E2EL [1000, 1500] → median 1250.
        assert!(close(s.e2el_ms.median, 1250.0));
    }

    #[test]
    fn slos_parse_like_vllm() {
        let s = Slo::parse(&["ttft:500 tpot:50".into(), "e2el:2000".into()]).unwrap();
        assert_eq!(s, Slo { ttft_ms: Some(500.0), tpot_ms: Some(50.0), e2el_ms: Some(2000.0) });
        for bad in ["ttft", "ttft:-1", "foo:10", "tpot:x"] {
            assert!(Slo::parse(&[bad.into()]).is_err(), "{bad}");
        }
        // A one-token request has TPOT 0 for goodput; a request without TTFT misses a TTFT SLO.
        let one = result(0.0, 0.05, 0.05, 1, vec![]);
        assert!(Slo { tpot_ms: Some(1.0), ..Slo::default() }.met_by(&one));
        let none = RequestRecord { success: true, ..RequestRecord::default() };
        assert!(!Slo { ttft_ms: Some(1e9), ..Slo::default() }.met_by(&none));
    }
}
