//! Per-request latency and token metrics as plain data: fixed-bucket [`Histogram`]s and
//! counters, updated by the step loop as tokens leave it. The server renders them in
//! Prometheus format under vLLM's family names (`/metrics`); nothing here knows that format.
//!
//! Definitions follow vLLM's V1 frontend metrics: queue time = arrival → first scheduled,
//! TTFT = arrival → first token, inter-token latency = gap between consecutive tokens of a
//! request, TPOT = (e2e − TTFT) / (tokens − 1) per request with more than one token,
//! e2e = arrival → finish. The bucket bounds are vLLM's, so dashboards built for it fit.

use std::time::Duration;

use tandem_core::FinishReason;

/// vLLM's TTFT buckets (seconds).
/// Actual over predicted time to first token (1 = exact; below 1 the prediction was high).
pub const PREDICTION_RATIO_BUCKETS: &[f64] = &[0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 4.0];

pub const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
    160.0, 640.0, 2560.0,
];
/// vLLM's inter-token / time-per-output-token buckets (seconds).
pub const TOKEN_GAP_BUCKETS: &[f64] =
    &[0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0];
/// vLLM's request-latency buckets (seconds): e2e, queue, prefill and decode time.
pub const REQUEST_LATENCY_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0,
    1920.0, 7680.0,
];
/// Token-count buckets (prompt and generation lengths, tokens per step).
pub const TOKEN_COUNT_BUCKETS: &[f64] =
    &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 20000.0];
/// Sequences-per-step buckets.
pub const BATCH_SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// A histogram with fixed upper bounds plus an implicit `+Inf` bucket (Prometheus semantics:
/// a value lands in the first bucket whose bound is ≥ it).
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket, not cumulative; one more than `bounds` (the last is `+Inf`).
    counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, counts: vec![0; bounds.len() + 1], sum: 0.0, count: 0 }
    }

    pub fn observe(&mut self, v: f64) {
        let i = self.bounds.partition_point(|&b| b < v);
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    pub fn observe_duration(&mut self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    /// `(upper bound, count in this bucket)` pairs, non-cumulative, ending with `+Inf`.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        self.bounds.iter().copied().chain([f64::INFINITY]).zip(self.counts.iter().copied()).collect()
    }
}

/// Requests that ended, by OpenAI-style reason.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FinishCounts {
    pub stop: u64,
    pub length: u64,
    pub abort: u64,
    /// Refused by the scheduler or failed by the executor.
    pub error: u64,
}

impl FinishCounts {
    pub fn record(&mut self, reason: Option<FinishReason>) {
        match reason {
            Some(FinishReason::Stopped(_)) => self.stop += 1,
            Some(FinishReason::Length) => self.length += 1,
            Some(FinishReason::Aborted(_)) => self.abort += 1,
            Some(FinishReason::Rejected(_)) | None => self.error += 1,
        }
    }

    /// `(label, count)` pairs.
    pub fn by_label(&self) -> [(&'static str, u64); 4] {
        [("stop", self.stop), ("length", self.length), ("abort", self.abort), ("error", self.error)]
    }
}

/// The request-level metrics of one engine since start.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestMetrics {
    pub queue_time: Histogram,
    pub ttft: Histogram,
    pub inter_token: Histogram,
    pub tpot: Histogram,
    pub e2e: Histogram,
    /// First scheduled → first token.
    pub prefill_time: Histogram,
    /// First token → finish.
    pub decode_time: Histogram,
    pub prompt_len: Histogram,
    pub generation_len: Histogram,
    /// Tokens fed to the model per step.
    pub step_tokens: Histogram,
    /// Sequences per step.
    pub step_batch: Histogram,
    /// Admission's predictions: predicted time to first token, and actual over predicted, of
    /// each request that had a prediction.
    pub predicted_ttft: Histogram,
    pub ttft_prediction_ratio: Histogram,
    pub prompt_tokens_total: u64,
    pub generation_tokens_total: u64,
    pub finished: FinishCounts,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        Self {
            queue_time: Histogram::new(REQUEST_LATENCY_BUCKETS),
            ttft: Histogram::new(TTFT_BUCKETS),
            inter_token: Histogram::new(TOKEN_GAP_BUCKETS),
            tpot: Histogram::new(TOKEN_GAP_BUCKETS),
            e2e: Histogram::new(REQUEST_LATENCY_BUCKETS),
            prefill_time: Histogram::new(REQUEST_LATENCY_BUCKETS),
            decode_time: Histogram::new(REQUEST_LATENCY_BUCKETS),
            prompt_len: Histogram::new(TOKEN_COUNT_BUCKETS),
            generation_len: Histogram::new(TOKEN_COUNT_BUCKETS),
            step_tokens: Histogram::new(TOKEN_COUNT_BUCKETS),
            step_batch: Histogram::new(BATCH_SIZE_BUCKETS),
            predicted_ttft: Histogram::new(TTFT_BUCKETS),
            ttft_prediction_ratio: Histogram::new(PREDICTION_RATIO_BUCKETS),
            prompt_tokens_total: 0,
            generation_tokens_total: 0,
            finished: FinishCounts::default(),
        }
    }
}

/// One request's timeline on the step loop (times since the engine's epoch).
#[derive(Debug, Clone, Default)]
pub(crate) struct Timeline {
    pub arrival: Duration,
    pub prompt_len: usize,
    pub started: Option<Duration>,
    pub first_token: Option<Duration>,
    pub last_token: Option<Duration>,
    pub tokens: u64,
    /// Admission's predicted time to first token, when it made one.
    pub predicted_ttft: Option<Duration>,
}

impl RequestMetrics {
    /// A token of `t` left the loop at `now`; for its first token, actual over predicted time
    /// to first token when admission predicted one.
    pub(crate) fn on_token(&mut self, t: &mut Timeline, now: Duration) -> Option<f64> {
        let mut ratio = None;
        match t.last_token {
            None => {
                let ttft = now.saturating_sub(t.arrival);
                self.ttft.observe_duration(ttft);
                if let Some(p) = t.predicted_ttft.filter(|p| !p.is_zero()) {
                    let r = ttft.as_secs_f64() / p.as_secs_f64();
                    self.predicted_ttft.observe_duration(p);
                    self.ttft_prediction_ratio.observe(r);
                    ratio = Some(r);
                }
                if let Some(s) = t.started {
                    self.prefill_time.observe_duration(now.saturating_sub(s));
                }
                t.first_token = Some(now);
            }
            Some(last) => self.inter_token.observe_duration(now.saturating_sub(last)),
        }
        t.last_token = Some(now);
        t.tokens += 1;
        self.generation_tokens_total += 1;
        ratio
    }

    /// `t` ended at `now` (`None`: failed).
    pub(crate) fn on_end(&mut self, t: &Timeline, now: Duration, reason: Option<FinishReason>) {
        self.finished.record(reason);
        let e2e = now.saturating_sub(t.arrival);
        self.e2e.observe_duration(e2e);
        if let Some(s) = t.started {
            self.queue_time.observe_duration(s.saturating_sub(t.arrival));
            self.prompt_tokens_total += t.prompt_len as u64;
            self.prompt_len.observe(t.prompt_len as f64);
        }
        self.generation_len.observe(t.tokens as f64);
        if let Some(first) = t.first_token {
            self.decode_time.observe_duration(now.saturating_sub(first));
            if t.tokens > 1 {
                let ttft = first.saturating_sub(t.arrival);
                self.tpot.observe_duration(e2e.saturating_sub(ttft) / (t.tokens - 1) as u32);
            }
        }
    }

    pub(crate) fn on_step(&mut self, seqs: usize, tokens: usize) {
        self.step_batch.observe(seqs as f64);
        self.step_tokens.observe(tokens as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn histogram_puts_values_in_the_first_bucket_at_or_above_them() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.0, 1.5, 2.0, 9.0] {
            h.observe(v);
        }
        // ≤1: 0.5, 1.0 → 2; (1,2]: 1.5, 2.0 → 2; +Inf: 9.0 → 1. Sum 0.5+1+1.5+2+9 = 14.
        assert_eq!(h.buckets(), vec![(1.0, 2), (2.0, 2), (f64::INFINITY, 1)]);
        assert_eq!((h.count, h.sum), (5, 14.0));
    }

    #[test]
    fn a_request_timeline_gives_vllm_definitions() {
        // Arrives at 0, scheduled at 100 ms, tokens at 300, 350, 450 ms, ends at 450 ms.
        let mut m = RequestMetrics::default();
        let mut t = Timeline { arrival: Duration::ZERO, prompt_len: 7, started: Some(100 * MS), ..Timeline::default() };
        for at in [300, 350, 450] {
            m.on_token(&mut t, at * MS);
        }
        m.on_end(&t, 450 * MS, Some(FinishReason::Length));
        // queue 0.1 s, TTFT 0.3 s, prefill 0.2 s, ITL 0.05 and 0.1 s,
        // TPOT (0.45 − 0.3)/(3 − 1) = 0.075 s, e2e 0.45 s, decode 0.15 s.
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(m.queue_time.sum, 0.1));
        assert!(close(m.ttft.sum, 0.3));
        assert!(close(m.prefill_time.sum, 0.2));
        assert_eq!(m.inter_token.count, 2);
        assert!(close(m.inter_token.sum, 0.15));
        assert!(close(m.tpot.sum, 0.075));
        assert!(close(m.e2e.sum, 0.45));
        assert!(close(m.decode_time.sum, 0.15));
        assert_eq!((m.prompt_tokens_total, m.generation_tokens_total), (7, 3));
        assert_eq!(m.finished.length, 1);
    }

    #[test]
    fn a_request_refused_before_running_counts_as_an_error_without_prompt_tokens() {
        let mut m = RequestMetrics::default();
        let t = Timeline { prompt_len: 9, ..Timeline::default() };
        m.on_end(&t, 5 * MS, None);
        assert_eq!((m.finished.error, m.prompt_tokens_total, m.ttft.count, m.tpot.count), (1, 0, 0, 0));
    }
}
