//! Batching strategies: *when* waiting requests may start and with what limits, on top of the
//! capacity policy's *whether they fit*. Switchable at run time (`Scheduler::set_batching`).
//!
//! | strategy | admits | use it when |
//! |---|---|---|
//! | `Continuous` (default) | whenever there is room, every step | almost always: iteration-level batching (Orca, vLLM) |
//! | `Fixed { batch_size, max_wait }` | exactly `batch_size` requests once that many wait and nothing runs; the batch runs to completion (seed 004's naive scheduler) | as a baseline, or for executors that need static batches |
//! | `SizeOrTimeout { batch_size, timeout }` | up to `batch_size` once that many wait *or* the oldest has waited `timeout` (seed 004's async scheduler, Triton's `max_queue_delay`) | to trade a little TTFT for fuller prefill steps under bursty low load |
//! | `Adaptive { target_step_time, .. }` | continuously, while AIMD tunes batch size and token budget so the measured step time (≈ TPOT) stays under target | when a TPOT SLO matters more than peak throughput |
//! | `Coalescing { tolerance }` | continuously, but one step's admissions have prompt lengths within `tolerance` of the first | padded or static executors, or to keep prefill micro-batches uniform |
//! | `LatencyOptimized` | continuous with small batches (≤ 32), a 512-token budget and prompts chunked at 256 | interactive chat: low TTFT and TPOT |
//! | `ThroughputOptimized` | continuous with large batches (2× the configured, ≤ 1024) and an ≥ 8192-token budget, no chunk cap | offline / batch jobs |
//!
//! With paged attention there is no padding, so `Coalescing` gains far less here than in a
//! padded engine (seed 002's claims assume padding); the simulator shows the difference honestly.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::Error;
use crate::types::Time;

/// The limits a strategy may tune; `long_prefill_token_threshold` 0 means no cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    pub long_prefill_token_threshold: usize,
}

/// What a strategy sees before admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchView {
    pub now: Time,
    pub running: usize,
    pub waiting: usize,
    /// Waiting requests that already ran once (preempted); strategies must not hold them back.
    pub resumable_waiting: usize,
    pub oldest_arrival: Option<Time>,
    /// No more requests will arrive (end of a workload): flush partial batches.
    pub draining: bool,
}

/// What a strategy learns after each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepFeedback {
    /// Device time of the step (from the executor).
    pub device_time: Duration,
    pub batch_size: usize,
    pub num_batched_tokens: usize,
    pub waiting: usize,
}

/// How many new requests may start now: `None` = none, `Some(n)` = at most `n`.
pub type AdmissionQuota = Option<usize>;

/// A batching strategy. See the module table.
pub trait BatchingStrategy: fmt::Debug + Send {
    fn name(&self) -> &'static str;
    /// Called once per step before admission; by default, no limit (continuous batching).
    fn admission(&mut self, _view: &BatchView) -> AdmissionQuota {
        Some(usize::MAX)
    }
    /// How many requests the step actually admitted.
    fn admitted(&mut self, _n: usize) {}
    /// May a request with `prompt_len` tokens start in a step whose first admission had
    /// `anchor_len`?
    fn joins(&self, _anchor_len: usize, _prompt_len: usize) -> bool {
        true
    }
    /// Limits to use while this strategy is active, from the configured ones.
    fn limits(&self, configured: Limits) -> Limits {
        configured
    }
    /// Adjusts limits from a finished step (adaptive strategies).
    fn observe(&mut self, _feedback: &StepFeedback, _current: Limits) -> Option<Limits> {
        None
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Continuous;

impl BatchingStrategy for Continuous {
    fn name(&self) -> &'static str {
        "continuous"
    }
}

/// Seed 004's naive scheduler: wait for `batch_size`, run the batch to completion.
#[derive(Debug, Clone, Copy)]
pub struct Fixed {
    pub batch_size: usize,
    /// Flush a partial batch once the oldest request waited this long (`None`: wait forever,
    /// or until the workload drains).
    pub max_wait: Option<Duration>,
    /// Requests of the current batch still to admit (a batch may need several steps).
    to_admit: usize,
}

impl Fixed {
    pub fn new(batch_size: usize, max_wait: Option<Duration>) -> Self {
        Self { batch_size, max_wait, to_admit: 0 }
    }
}

impl BatchingStrategy for Fixed {
    fn name(&self) -> &'static str {
        "fixed"
    }
    fn admission(&mut self, v: &BatchView) -> AdmissionQuota {
        if self.to_admit > 0 {
            return Some(self.to_admit); // finish forming the current batch
        }
        if v.running > 0 || v.waiting == 0 {
            return None;
        }
        let waited_out = match (self.max_wait, v.oldest_arrival) {
            (Some(w), Some(t)) => v.now.saturating_sub(t) >= w,
            _ => false,
        };
        if v.waiting >= self.batch_size || v.draining || waited_out || v.resumable_waiting > 0 {
            self.to_admit = self.batch_size.min(v.waiting);
            Some(self.to_admit)
        } else {
            None
        }
    }
    fn admitted(&mut self, n: usize) {
        self.to_admit = self.to_admit.saturating_sub(n);
    }
}

/// Seed 004's async scheduler / Triton's dynamic batcher on top of continuous batching.
#[derive(Debug, Clone, Copy)]
pub struct SizeOrTimeout {
    pub batch_size: usize,
    pub timeout: Duration,
}

impl BatchingStrategy for SizeOrTimeout {
    fn name(&self) -> &'static str {
        "size_or_timeout"
    }
    fn admission(&mut self, v: &BatchView) -> AdmissionQuota {
        let waited_out = v.oldest_arrival.is_some_and(|t| v.now.saturating_sub(t) >= self.timeout);
        (v.waiting >= self.batch_size || waited_out || v.draining || v.resumable_waiting > 0).then_some(self.batch_size)
    }
}

/// AIMD on batch size and token budget against a target step time.
#[derive(Debug, Clone, Copy)]
pub struct Adaptive {
    pub target_step_time: Duration,
    pub min_seqs: usize,
    pub max_seqs: usize,
    /// Smallest token budget (a block, at least).
    pub min_tokens: usize,
    pub max_tokens: usize,
}

impl BatchingStrategy for Adaptive {
    fn name(&self) -> &'static str {
        "adaptive"
    }
    fn observe(&mut self, fb: &StepFeedback, cur: Limits) -> Option<Limits> {
        let next = if fb.device_time > self.target_step_time {
            // Multiplicative decrease: shed a quarter.
            Limits {
                max_num_seqs: (cur.max_num_seqs * 3 / 4).max(self.min_seqs),
                max_num_batched_tokens: (cur.max_num_batched_tokens * 3 / 4).max(self.min_tokens),
                ..cur
            }
        } else if fb.waiting > 0
            && (fb.batch_size >= cur.max_num_seqs || fb.num_batched_tokens >= cur.max_num_batched_tokens)
        {
            // Additive increase while a limit binds and work is waiting.
            Limits {
                max_num_seqs: (cur.max_num_seqs + (cur.max_num_seqs / 16).max(1)).min(self.max_seqs),
                max_num_batched_tokens: (cur.max_num_batched_tokens + self.min_tokens).min(self.max_tokens),
                ..cur
            }
        } else {
            return None;
        };
        (next != cur).then_some(next)
    }
}

/// Admit requests of similar prompt length together.
#[derive(Debug, Clone, Copy)]
pub struct Coalescing {
    /// Relative tolerance: `|len - anchor| <= tolerance * anchor`.
    pub tolerance: f64,
}

impl BatchingStrategy for Coalescing {
    fn name(&self) -> &'static str {
        "coalescing"
    }
    fn joins(&self, anchor: usize, len: usize) -> bool {
        (len as f64 - anchor as f64).abs() <= self.tolerance * anchor as f64
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct LatencyOptimized;

impl BatchingStrategy for LatencyOptimized {
    fn name(&self) -> &'static str {
        "latency_optimized"
    }
    fn limits(&self, c: Limits) -> Limits {
        Limits {
            max_num_seqs: c.max_num_seqs.min(32),
            max_num_batched_tokens: c.max_num_batched_tokens.min(512),
            long_prefill_token_threshold: 256,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ThroughputOptimized;

impl BatchingStrategy for ThroughputOptimized {
    fn name(&self) -> &'static str {
        "throughput_optimized"
    }
    fn limits(&self, c: Limits) -> Limits {
        Limits {
            max_num_seqs: (c.max_num_seqs * 2).min(1024).max(c.max_num_seqs),
            max_num_batched_tokens: c.max_num_batched_tokens.max(8192),
            long_prefill_token_threshold: 0,
        }
    }
}

/// The strategies a config, CLI flag or admin call can name.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum BatchingKind {
    #[default]
    Continuous,
    Fixed {
        batch_size: usize,
        max_wait: Option<Duration>,
    },
    SizeOrTimeout {
        batch_size: usize,
        timeout: Duration,
    },
    Adaptive {
        target_step_time: Duration,
    },
    Coalescing {
        tolerance: f64,
    },
    LatencyOptimized,
    ThroughputOptimized,
}

fn bad(problem: impl Into<String>) -> Error {
    Error::InvalidConfig { field: "batching", problem: problem.into() }
}

impl BatchingKind {
    pub fn validate(&self) -> Result<(), Error> {
        match *self {
            BatchingKind::Fixed { batch_size: 0, .. } | BatchingKind::SizeOrTimeout { batch_size: 0, .. } => {
                Err(bad("batch_size must be at least 1"))
            }
            BatchingKind::Fixed { max_wait: Some(w), .. } if w.is_zero() => {
                Err(bad("fixed batching with a zero max_wait never waits: use continuous, or give a positive wait"))
            }
            BatchingKind::SizeOrTimeout { timeout, .. } if timeout.is_zero() => {
                Err(bad("size_or_timeout with timeout 0 never waits: use continuous, or give a positive timeout"))
            }
            BatchingKind::Adaptive { target_step_time } if target_step_time.is_zero() => {
                Err(bad("adaptive target_step_time must be positive"))
            }
            BatchingKind::Coalescing { tolerance } if !(tolerance.is_finite() && tolerance >= 0.0) => {
                Err(bad(format!("coalescing tolerance must be finite and >= 0, got {tolerance}")))
            }
            _ => Ok(()),
        }
    }

    /// The strategy object; `configured` bounds the adaptive strategy's range.
    pub fn build(self, configured: Limits, block_size: usize) -> Box<dyn BatchingStrategy> {
        match self {
            BatchingKind::Continuous => Box::new(Continuous),
            BatchingKind::Fixed { batch_size, max_wait } => Box::new(Fixed::new(batch_size, max_wait)),
            BatchingKind::SizeOrTimeout { batch_size, timeout } => Box::new(SizeOrTimeout { batch_size, timeout }),
            BatchingKind::Adaptive { target_step_time } => Box::new(Adaptive {
                target_step_time,
                min_seqs: 1,
                max_seqs: configured.max_num_seqs,
                min_tokens: block_size,
                max_tokens: configured.max_num_batched_tokens,
            }),
            BatchingKind::Coalescing { tolerance } => Box::new(Coalescing { tolerance }),
            BatchingKind::LatencyOptimized => Box::new(LatencyOptimized),
            BatchingKind::ThroughputOptimized => Box::new(ThroughputOptimized),
        }
    }
}

fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Some(ms) = s.strip_suffix("ms") {
        ms.trim().parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0).map(|v| Duration::from_secs_f64(v / 1e3))
    } else if let Some(sec) = s.strip_suffix('s') {
        sec.trim().parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0).map(Duration::from_secs_f64)
    } else {
        None
    }
}

/// Parses `continuous`, `fixed:N[:WAIT]`, `size_or_timeout:N:TIMEOUT`, `adaptive:TARGET`,
/// `coalescing:TOL`, `latency`, `throughput` (durations as `50ms` or `0.5s`), then validates.
impl FromStr for BatchingKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let parts: Vec<&str> = s.trim().split(':').collect();
        let num = |i: usize| parts.get(i).and_then(|p| p.trim().parse::<usize>().ok());
        let dur = |i: usize| parts.get(i).and_then(|p| parse_duration(p));
        let kind = match (parts[0].trim().to_ascii_lowercase().as_str(), parts.len()) {
            ("continuous", 1) => BatchingKind::Continuous,
            ("fixed", 2) => BatchingKind::Fixed { batch_size: num(1).ok_or_else(|| bad("fixed:N needs a number"))?, max_wait: None },
            ("fixed", 3) => BatchingKind::Fixed {
                batch_size: num(1).ok_or_else(|| bad("fixed:N:WAIT needs a number"))?,
                max_wait: Some(dur(2).ok_or_else(|| bad("fixed:N:WAIT needs a duration like 500ms"))?),
            },
            ("size_or_timeout", 3) => BatchingKind::SizeOrTimeout {
                batch_size: num(1).ok_or_else(|| bad("size_or_timeout:N:T needs a number"))?,
                timeout: dur(2).ok_or_else(|| bad("size_or_timeout:N:T needs a duration like 50ms"))?,
            },
            ("adaptive", 2) => BatchingKind::Adaptive {
                target_step_time: dur(1).ok_or_else(|| bad("adaptive:T needs a duration like 40ms"))?,
            },
            ("coalescing", 2) => BatchingKind::Coalescing {
                tolerance: parts[1].trim().parse().map_err(|_| bad("coalescing:TOL needs a number like 0.25"))?,
            },
            ("latency" | "latency_optimized", 1) => BatchingKind::LatencyOptimized,
            ("throughput" | "throughput_optimized", 1) => BatchingKind::ThroughputOptimized,
            _ => {
                return Err(bad(format!(
                    "unknown batching strategy `{s}`: expected continuous, fixed:N[:WAIT], size_or_timeout:N:T, adaptive:T, coalescing:TOL, latency or throughput"
                )))
            }
        };
        kind.validate()?;
        Ok(kind)
    }
}

impl fmt::Display for BatchingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchingKind::Continuous => write!(f, "continuous"),
            BatchingKind::Fixed { batch_size, max_wait: None } => write!(f, "fixed:{batch_size}"),
            BatchingKind::Fixed { batch_size, max_wait: Some(w) } => {
                write!(f, "fixed:{batch_size}:{}ms", w.as_secs_f64() * 1e3)
            }
            BatchingKind::SizeOrTimeout { batch_size, timeout } => {
                write!(f, "size_or_timeout:{batch_size}:{}ms", timeout.as_secs_f64() * 1e3)
            }
            BatchingKind::Adaptive { target_step_time } => {
                write!(f, "adaptive:{}ms", target_step_time.as_secs_f64() * 1e3)
            }
            BatchingKind::Coalescing { tolerance } => write!(f, "coalescing:{tolerance}"),
            BatchingKind::LatencyOptimized => write!(f, "latency"),
            BatchingKind::ThroughputOptimized => write!(f, "throughput"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(running: usize, waiting: usize, oldest_ms: Option<u64>, now_ms: u64) -> BatchView {
        BatchView {
            now: Duration::from_millis(now_ms),
            running,
            waiting,
            resumable_waiting: 0,
            oldest_arrival: oldest_ms.map(Duration::from_millis),
            draining: false,
        }
    }

    #[test]
    fn fixed_waits_for_a_full_batch_and_an_idle_engine() {
        let mut f = Fixed::new(4, None);
        assert_eq!(f.admission(&view(0, 3, Some(0), 10)), None, "3 < 4 waiting");
        assert_eq!(f.admission(&view(1, 9, Some(0), 10)), None, "a batch is running");
        assert_eq!(f.admission(&view(0, 9, Some(0), 10)), Some(4));
        f.admitted(3); // only 3 fitted this step: 1 more next step, whatever runs
        assert_eq!(f.admission(&view(3, 6, Some(0), 11)), Some(1));
        f.admitted(1);
        assert_eq!(f.admission(&view(4, 5, Some(0), 12)), None);
        let draining = BatchView { draining: true, ..view(0, 2, Some(0), 13) };
        assert_eq!(f.admission(&draining), Some(2), "the remainder is flushed at the end");
    }

    #[test]
    fn size_or_timeout_opens_on_either() {
        let mut s = SizeOrTimeout { batch_size: 4, timeout: Duration::from_millis(50) };
        assert_eq!(s.admission(&view(0, 3, Some(0), 49)), None); // 3 < 4 and 49 ms < 50 ms
        assert_eq!(s.admission(&view(0, 3, Some(0), 50)), Some(4)); // waited 50 ms
        assert_eq!(s.admission(&view(2, 4, Some(40), 41)), Some(4)); // 4 waiting
    }

    #[test]
    fn adaptive_is_aimd() {
        let mut a = Adaptive {
            target_step_time: Duration::from_millis(40),
            min_seqs: 1,
            max_seqs: 64,
            min_tokens: 16,
            max_tokens: 512,
        };
        let cur = Limits { max_num_seqs: 32, max_num_batched_tokens: 256, long_prefill_token_threshold: 0 };
        let slow =
            StepFeedback { device_time: Duration::from_millis(50), batch_size: 32, num_batched_tokens: 32, waiting: 5 };
        // Too slow: 32 * 3/4 = 24 seqs, 256 * 3/4 = 192 tokens.
        assert_eq!(a.observe(&slow, cur).map(|l| (l.max_num_seqs, l.max_num_batched_tokens)), Some((24, 192)));
        // Fast and the batch limit binds: 32 + 32/16 = 34 seqs, 256 + 16 = 272 tokens.
        let fast = StepFeedback { device_time: Duration::from_millis(20), ..slow };
        assert_eq!(a.observe(&fast, cur).map(|l| (l.max_num_seqs, l.max_num_batched_tokens)), Some((34, 272)));
        // Fast but nothing waiting: unchanged.
        assert_eq!(a.observe(&StepFeedback { waiting: 0, ..fast }, cur), None);
    }

    #[test]
    fn coalescing_tolerance_is_relative() {
        let c = Coalescing { tolerance: 0.25 };
        assert!(c.joins(100, 125)); // |125 - 100| = 25 <= 25
        assert!(!c.joins(100, 126));
        assert!(c.joins(100, 75));
    }

    #[test]
    fn presets_bound_the_limits() {
        let c = Limits { max_num_seqs: 256, max_num_batched_tokens: 2048, long_prefill_token_threshold: 0 };
        assert_eq!(
            LatencyOptimized.limits(c),
            Limits { max_num_seqs: 32, max_num_batched_tokens: 512, long_prefill_token_threshold: 256 }
        );
        assert_eq!(
            ThroughputOptimized.limits(c),
            Limits { max_num_seqs: 512, max_num_batched_tokens: 8192, long_prefill_token_threshold: 0 }
        );
    }

    #[test]
    fn parsing_round_trips_and_rejects_nonsense() {
        for s in [
            "continuous",
            "fixed:4",
            "fixed:4:500ms",
            "size_or_timeout:8:50ms",
            "adaptive:40ms",
            "coalescing:0.25",
            "latency",
            "throughput",
        ] {
            let k: BatchingKind = s.parse().unwrap();
            assert_eq!(k.to_string().parse::<BatchingKind>().unwrap(), k, "{s}");
        }
        for s in [
            "",
            "nope",
            "fixed",
            "fixed:0",
            "fixed:4:0ms",
            "size_or_timeout:4:0ms",
            "size_or_timeout:4",
            "adaptive:0ms",
            "coalescing:-1",
            "coalescing:x",
            "fixed:4:5parsecs",
        ] {
            assert!(s.parse::<BatchingKind>().is_err(), "{s:?} must be rejected");
        }
    }
}
