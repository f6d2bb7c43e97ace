//! [`EngineStats`]: the live statistics of seed 002 (total requests, queue depth, average wait
//! and processing time, current batch size, throughput, average latency) plus stream
//! utilisation, the CPU time hidden by overlapping steps, and the scheduler's own counters.

use std::collections::VecDeque;
use std::time::Duration;

use tandem_core::admission::StepGrid;
use tandem_core::SchedulerStats;

use crate::metrics::RequestMetrics;

/// A snapshot of the engine's live statistics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStats {
    /// Requests accepted since start.
    pub total_requests: u64,
    /// Requests that ended (any reason).
    pub finished_requests: u64,
    /// Requests accepted but not yet running.
    pub queue_depth: usize,
    pub running: usize,
    /// Sequences in the last step.
    pub current_batch_size: usize,
    /// Mean sequences per non-empty step since start.
    pub mean_batch_size: f64,
    /// Highest fraction of KV blocks in use seen.
    pub peak_kv_usage: f64,
    /// Mean time from arrival to first scheduled.
    pub avg_wait: Duration,
    /// Mean time from first scheduled to end.
    pub avg_processing: Duration,
    /// Mean time from arrival to end.
    pub avg_latency: Duration,
    /// Requests finished per second over the last 30 s.
    pub throughput_rps: f64,
    /// Tokens generated per second over the last 30 s.
    pub throughput_tps: f64,
    pub steps: u64,
    /// Per stream: its busy time (measured by the executor on the stream) over the device's
    /// busy wall time (`device_wall`), since start.
    pub stream_utilisation: Vec<f64>,
    /// Wall time with at least one step on the device (steps of unsynchronised streams
    /// overlap, so this is less than `device_time` there).
    pub device_wall: Duration,
    /// CPU time of the step loop (scheduling, applying results, streaming).
    pub cpu_time: Duration,
    /// Part of `cpu_time` spent while the device was busy with a step (overlapped).
    pub cpu_hidden: Duration,
    /// Device time of all steps.
    pub device_time: Duration,
    /// Structured output: token masks computed, and the time spent on them (on the loop
    /// thread, between scheduling a step and launching it).
    pub grammar_masks: u64,
    pub grammar_mask_time: Duration,
    pub batching: String,
    /// The parallel-stream settings in force.
    pub streams: tandem_core::StreamConfig,
    pub uptime: Duration,
    pub scheduler: SchedulerStats,
    /// Requests refused at submission: the queue full (by count or tokens), or a predicted
    /// time to first token past the request's deadline.
    pub refused_queue_full: u64,
    pub refused_deadline: u64,
    /// Places held now for clients refused for their deadline (`tandem_core::reservation`).
    pub reservations_held: usize,
    /// Latency histograms and token counters (vLLM's request metrics).
    pub requests: RequestMetrics,
}

/// Accumulates the numbers behind [`EngineStats`].
#[derive(Debug, Default)]
pub(crate) struct StatsAccumulator {
    pub snapshot: EngineStats,
    wait_sum: Duration,
    waited: u64,
    processing_sum: Duration,
    latency_sum: Duration,
    ended_with_timing: u64,
    stream_busy: Vec<Duration>,
    batched: u64,
    /// (time since start, requests finished, tokens) per step, last 30 s.
    window: VecDeque<(Duration, u64, u64)>,
    /// Step device time against tokens fed, for predicted waits.
    pub step_model: tandem_core::admission::StepTimeModel,
    /// Actual over predicted time to first token of the last requests admitted with a
    /// prediction: admission scales its predictions by a high quantile of these.
    pub ttft_ratios: VecDeque<f64>,
    /// (time since start, prefill tokens fed since start) after each step of the last
    /// [`FED_WINDOW`]: the step cadence a refused request's wait is computed on.
    fed: VecDeque<(Duration, u64)>,
    /// Refusals whose wait is still being timed: (refused at, fed count to reach, predicted wait).
    drains: VecDeque<(Duration, u64, Duration)>,
    /// Actual over predicted wait of the last refusals whose excess has been fed.
    drain_ratios: VecDeque<f64>,
}

/// Ten seconds: 20–25 steps of a loaded CPU server. Over 3 s (6–7 steps) the cadence swung with
/// each step's mix of prefill and decode, and waits predicted from it spread twice as wide
/// (BENCHMARKS.md, admission).
const FED_WINDOW: Duration = Duration::from_secs(10);

/// Refusals timed at once, at most; the last ones of them calibrate waits; a wait not over after
/// this long is dropped (its backlog was aborted).
const MAX_TIMED_DRAINS: usize = 256;
const DRAIN_WINDOW: usize = 32;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

/// Requests whose prediction error calibrates admission.
const CALIBRATION_WINDOW: usize = 64;

impl StatsAccumulator {
    /// A request admitted with a prediction got its first token: actual / predicted.
    pub fn record_prediction(&mut self, ratio: f64) {
        if ratio.is_finite() && ratio > 0.0 {
            if self.ttft_ratios.len() == CALIBRATION_WINDOW {
                self.ttft_ratios.pop_front();
            }
            self.ttft_ratios.push_back(ratio);
        }
    }

    /// A request was refused at `now` waiting for `excess` more prompt tokens to be fed, an
    /// estimated `predicted` before calibration: the step loop times how long they actually
    /// take (against the uncalibrated estimate, so the median ratio is the factor itself).
    pub fn expect_drain(&mut self, now: Duration, excess: usize, predicted: Duration) {
        if excess == 0 || predicted.is_zero() || self.drains.len() >= MAX_TIMED_DRAINS {
            return;
        }
        let fed = self.fed.back().map_or(0, |f| f.1);
        self.drains.push_back((now, fed + excess as u64, predicted));
    }

    /// The factor refusals' waits are scaled by: the median of recent actual/predicted waits
    /// (within 0.5–2; 1 until 8 have been timed). The median, not a high quantile as for
    /// admission: a Retry-After should be right on average, not safe.
    pub fn drain_calibration(&self) -> f64 {
        if self.drain_ratios.len() < 8 {
            return 1.0;
        }
        let mut r: Vec<f64> = self.drain_ratios.iter().copied().collect();
        r.sort_by(f64::total_cmp);
        r[r.len() / 2].clamp(0.5, 2.0)
    }

    /// A step ended at `now` with `fed` prefill tokens fed since start.
    pub fn record_fed(&mut self, now: Duration, fed: u64) {
        // Refusals whose excess this step fed: their wait ended now, when the backlog admission
        // reads shrank (as a client retrying would find).
        let ratios = &mut self.drain_ratios;
        self.drains.retain(|&(at, target, predicted)| {
            if target > fed {
                return now.saturating_sub(at) < DRAIN_TIMEOUT;
            }
            if ratios.len() == DRAIN_WINDOW {
                ratios.pop_front();
            }
            ratios.push_back(now.saturating_sub(at).as_secs_f64() / predicted.as_secs_f64());
            false
        });
        self.fed.push_back((now, fed));
        while self.fed.front().is_some_and(|f| now.saturating_sub(f.0) > FED_WINDOW) {
            self.fed.pop_front();
        }
    }

    /// The cadence of the last seconds' steps, when at least one second of them fed prompt
    /// tokens (`None` otherwise: the step model's rate is used).
    pub fn step_grid(&self) -> Option<StepGrid> {
        let (first, last) = (self.fed.front()?, self.fed.back()?);
        let steps = self.fed.len().checked_sub(1).filter(|&n| n > 0)? as u32;
        let span = last.0.saturating_sub(first.0);
        let fed = last.1.saturating_sub(first.1) as f64;
        (span.as_secs_f64() >= 1.0 && fed > 0.0).then(|| StepGrid {
            last_end: last.0,
            interval: span / steps,
            fed_per_step: fed / steps as f64,
        })
    }

    /// The factor admission multiplies its predictions by: the largest recent actual/predicted
    /// ratio (so that an admitted request starts within its deadline unless the model errs more
    /// than it has lately), within 0.5–4; 1.5 until 8 requests have been seen.
    pub fn calibration(&self) -> f64 {
        if self.ttft_ratios.len() < 8 {
            return 1.5;
        }
        self.ttft_ratios.iter().copied().fold(0.0, f64::max).clamp(0.5, 4.0)
    }
}

const WINDOW: Duration = Duration::from_secs(30);

impl StatsAccumulator {
    pub fn record_wait(&mut self, wait: Duration) {
        self.wait_sum += wait;
        self.waited += 1;
        self.snapshot.avg_wait = self.wait_sum / self.waited.max(1) as u32;
    }

    pub fn record_end(&mut self, latency: Duration, processing: Option<Duration>) {
        self.snapshot.finished_requests += 1;
        if let Some(p) = processing {
            self.processing_sum += p;
            self.latency_sum += latency;
            self.ended_with_timing += 1;
            let n = self.ended_with_timing.max(1) as u32;
            self.snapshot.avg_processing = self.processing_sum / n;
            self.snapshot.avg_latency = self.latency_sum / n;
        }
    }

    pub fn record_step(
        &mut self,
        now: Duration,
        batch: usize,
        device: Duration,
        stream_busy: &[Duration],
        finished: u64,
        tokens: u64,
    ) {
        self.snapshot.steps += 1;
        self.batched += batch as u64;
        self.snapshot.mean_batch_size = self.batched as f64 / self.snapshot.steps as f64;
        self.snapshot.device_time += device;
        if self.stream_busy.len() < stream_busy.len() {
            self.stream_busy.resize(stream_busy.len(), Duration::ZERO);
        }
        for (acc, b) in self.stream_busy.iter_mut().zip(stream_busy) {
            *acc += *b;
        }
        // `device_wall` is kept current by the step loop.
        let wall = self.snapshot.device_wall.as_secs_f64().max(1e-12);
        self.snapshot.stream_utilisation = self.stream_busy.iter().map(|b| b.as_secs_f64() / wall).collect();
        self.window.push_back((now, finished, tokens));
        while self.window.front().is_some_and(|w| now.saturating_sub(w.0) > WINDOW) {
            self.window.pop_front();
        }
        let span = now.saturating_sub(self.window.front().map_or(now, |w| w.0)).as_secs_f64().max(1e-3);
        let (reqs, toks) = self.window.iter().fold((0, 0), |a, w| (a.0 + w.1, a.1 + w.2));
        self.snapshot.throughput_rps = reqs as f64 / span;
        self.snapshot.throughput_tps = toks as f64 / span;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn refusals_waits_calibrate_later_ones_by_their_median() {
        // Steps end every 0.5 s, each feeding 100 prompt tokens. Ten refusals, one per step,
        // each predicted to wait 0.8 s for 150 tokens: the second step after them feeds the
        // last of those (100 + 100 ≥ 150) and ends 1.0 s later: ratio 1.25.
        let mut st = StatsAccumulator::default();
        st.record_fed(secs(0.0), 0);
        assert_eq!(st.drain_calibration(), 1.0, "nothing timed yet");
        for i in 0..10u64 {
            st.expect_drain(secs(0.5 * i as f64), 150, secs(0.8));
            st.record_fed(secs(0.5 * (i + 1) as f64), 100 * (i + 1));
        }
        st.record_fed(secs(5.5), 1100);
        st.record_fed(secs(6.0), 1200);
        assert_eq!(st.drain_ratios.len(), 10);
        assert!((st.drain_calibration() - 1.25).abs() < 1e-9, "{:?}", st.drain_ratios);
        // Later refusals are timed against their uncalibrated estimate: one estimated at 0.8 s
        // (told 1 s once calibrated) that takes 1 s still reads 1.25.
        st.expect_drain(secs(6.0), 150, secs(0.8));
        st.record_fed(secs(6.5), 1300);
        st.record_fed(secs(7.0), 1400);
        assert!((st.drain_ratios.back().unwrap() - 1.25).abs() < 1e-9);
    }

    #[test]
    fn the_step_grid_is_the_recent_steps_cadence() {
        // Four step ends 0.4 s apart, feeding 0, 300, 600, 900 tokens in all: 3 intervals of
        // 0.4 s, 300 tokens each.
        let mut st = StatsAccumulator::default();
        assert_eq!(st.step_grid(), None);
        for i in 0..4u64 {
            st.record_fed(secs(10.0 + 0.4 * i as f64), 300 * i);
        }
        let g = st.step_grid().unwrap();
        assert_eq!(g.last_end, secs(11.2));
        assert!((g.interval.as_secs_f64() - 0.4).abs() < 1e-9 && g.fed_per_step == 300.0, "{g:?}");
        // Under a second of steps: no grid yet.
        let mut short = StatsAccumulator::default();
        short.record_fed(secs(0.0), 0);
        short.record_fed(secs(0.5), 100);
        assert_eq!(short.step_grid(), None);
    }
}
