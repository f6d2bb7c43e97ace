//! Admission by predicted wait: from measured step times, the work queued ahead and a request's
//! prompt length, the time to its first token — so a request that would miss its deadline is
//! refused at once (HTTP 429 with the predicted wait) instead of timing out in the queue. None
//! of vLLM, SGLang or TGI does this: they bound the queue by count (TGI) or not at all.
//!
//! Two mechanisms, plain data in and out (the engine feeds them; no clock here):
//! - [`StepTimeModel`]: a step's device time as `fixed + per_token × tokens fed`, fitted by
//!   exponentially weighted least squares over the recent steps (so it follows the machine and
//!   the load; decode-only steps and full prefill steps give the two ends of the line).
//! - [`predict_ttft`]: chunked prefill under one token budget serves the decodes first, then the
//!   queued prompts in order with what is left; a request's first token comes when the prompt
//!   tokens ahead of it and its own have been fed. With `budget` tokens a step and `decodes`
//!   running, that is `ceil((ahead + prompt) / (budget − decodes))` steps (at least one), each
//!   as long as the model says for the tokens it feeds, plus half a step for the one in flight.
//!
//! What it leaves out, knowingly: prefix-cache hits (the prediction is then high: a refusal
//! errs on the safe side), requests waiting for a free sequence slot or KV blocks rather than
//! budget, and priorities (the queue ahead is taken as all of it).

use std::time::Duration;

/// Weight of the newest step in the fitted model.
const DECAY: f64 = 0.05;

/// A step's device time as a line in the tokens it feeds (weighted least squares).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StepTimeModel {
    weight: f64,
    mean_x: f64,
    mean_y: f64,
    /// Weighted sums of squares about the means.
    sxx: f64,
    sxy: f64,
    steps: u64,
}

impl StepTimeModel {
    /// One measured step: `tokens` fed in `secs` of device time.
    pub fn observe(&mut self, tokens: usize, secs: f64) {
        if tokens == 0 || !secs.is_finite() || secs <= 0.0 {
            return;
        }
        let (x, y) = (tokens as f64, secs);
        // Exponential forgetting: old weight decays, the new point has weight 1.
        self.weight = self.weight * (1.0 - DECAY) + 1.0;
        let w = 1.0 / self.weight;
        let (dx, dy) = (x - self.mean_x, y - self.mean_y);
        self.mean_x += w * dx;
        self.mean_y += w * dy;
        self.sxx = (1.0 - DECAY) * self.sxx + dx * (x - self.mean_x);
        self.sxy = (1.0 - DECAY) * self.sxy + dx * (y - self.mean_y);
        self.steps += 1;
    }

    /// Steps seen.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Predicted seconds for a step feeding `tokens`; `None` before any step. With too little
    /// spread in the sizes seen to fit a slope, the time scales with tokens from the mean.
    pub fn step_secs(&self, tokens: usize) -> Option<f64> {
        if self.steps == 0 {
            return None;
        }
        let x = tokens.max(1) as f64;
        let slope = if self.sxx > 1e-9 * self.weight.max(1.0) { self.sxy / self.sxx } else { f64::NAN };
        let line = self.mean_y + slope * (x - self.mean_x);
        let proportional = self.mean_y * x / self.mean_x.max(1.0);
        // A negative slope or intercept is noise: fall back to proportional time; never below
        // what the steps seen have taken at their smallest scale.
        let t = if slope.is_finite() && slope >= 0.0 && line > 0.0 { line } else { proportional };
        Some(t.max(1e-6))
    }
}

/// What is queued ahead of a new request, as the scheduler reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backlog {
    /// Prompt tokens not yet fed, of every request waiting or running.
    pub prefill_tokens: usize,
    /// Requests decoding (one token each per step).
    pub decodes: usize,
    /// The step token budget.
    pub budget: usize,
}

impl Backlog {
    /// Prompt tokens a step feeds: decodes go first, prefill gets the rest of the budget (at
    /// least an eighth of it, as a scheduler that never starves prefill would give it).
    fn prefill_per_step(&self) -> usize {
        let budget = self.budget.max(1);
        budget.saturating_sub(self.decodes).max(budget.div_ceil(8))
    }
}

/// Predicted time to first token for a `prompt_len`-token prompt behind `backlog`, or `None`
/// before the model has seen a step.
pub fn predict_ttft(model: &StepTimeModel, backlog: &Backlog, prompt_len: usize) -> Option<Duration> {
    let budget = backlog.budget.max(1);
    let work = backlog.prefill_tokens + prompt_len.max(1);
    let steps = work.div_ceil(backlog.prefill_per_step());
    let per_step = if steps == 1 { (backlog.decodes + work).min(budget) } else { budget };
    let secs = model.step_secs(per_step)?;
    Duration::try_from_secs_f64((steps as f64 + 0.5) * secs).ok()
}

/// How many of the backlog's prompt tokens must be fed before a `prompt_len`-token request's
/// predicted time to first token, scaled by `calibration`, is within `deadline`: 0 if it is
/// already; the whole backlog if even an empty one would not do.
pub fn excess_tokens(
    model: &StepTimeModel,
    backlog: &Backlog,
    prompt_len: usize,
    calibration: f64,
    deadline: Duration,
) -> usize {
    let fits = |w: usize| {
        let b = Backlog { prefill_tokens: w, ..*backlog };
        predict_ttft(model, &b, prompt_len).is_some_and(|p| p.mul_f64(calibration) <= deadline)
    };
    if fits(backlog.prefill_tokens) {
        return 0;
    }
    // The prediction grows with the backlog: find the largest backlog that fits.
    let (mut lo, mut hi) = (0usize, backlog.prefill_tokens);
    if !fits(0) {
        return backlog.prefill_tokens;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    backlog.prefill_tokens - lo
}

/// Time for `tokens` of the backlog's prompt tokens to be fed, at the prefill share of full
/// steps the model predicts (what a refused request waits for before it would be admitted).
pub fn drain_time(model: &StepTimeModel, backlog: &Backlog, tokens: usize) -> Option<Duration> {
    let secs = model.step_secs(backlog.budget.max(1))? * tokens as f64 / backlog.prefill_per_step() as f64;
    Duration::try_from_secs_f64(secs).ok()
}

/// The cadence of the recent steps, as measured: when the last one ended, how far apart they
/// end, and how many prompt tokens each fed. Admission's backlog changes only when a step
/// ends, so a wait for the backlog to drain ends at a step end too: a wait predicted on this
/// grid is right to the step, where a rate (tokens ÷ tokens per second) is off by up to one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepGrid {
    pub last_end: Duration,
    pub interval: Duration,
    pub fed_per_step: f64,
}

impl StepGrid {
    /// From `now`, the wait until the end of the step by which `tokens` more prompt tokens
    /// will have been fed: `ceil(tokens / fed_per_step)` steps after the last end (at least
    /// an eighth of a step, for a step running late). `None` if the steps fed nothing.
    pub fn wait_for(&self, now: Duration, tokens: usize) -> Option<Duration> {
        if self.fed_per_step.is_nan() || self.fed_per_step <= 0.0 {
            return None;
        }
        let steps = (tokens as f64 / self.fed_per_step).ceil().max(1.0);
        let due = self.last_end + self.interval.mul_f64(steps);
        Some(due.saturating_sub(now).max(self.interval / 8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(points: &[(usize, f64)]) -> StepTimeModel {
        let mut m = StepTimeModel::default();
        for _ in 0..50 {
            for &(x, y) in points {
                m.observe(x, y);
            }
        }
        m
    }

    #[test]
    fn the_step_model_fits_a_line_through_decode_and_prefill_steps() {
        // 10 ms fixed + 0.1 ms a token: 16 tokens 11.6 ms, 512 tokens 61.2 ms.
        let m = model(&[(16, 0.0116), (512, 0.0612)]);
        assert!((m.step_secs(256).unwrap() - 0.0356).abs() < 1e-4, "{:?}", m.step_secs(256));
        // One size only: proportional from it.
        let one = model(&[(100, 0.02)]);
        assert!((one.step_secs(200).unwrap() - 0.04).abs() < 1e-9);
        assert_eq!(StepTimeModel::default().step_secs(10), None);
    }

    #[test]
    fn ttft_counts_the_steps_the_queue_ahead_needs() {
        // Every step of 512 tokens takes 50 ms (proportional model through (512, 0.05)).
        let m = model(&[(512, 0.05)]);
        // 2,000 prompt tokens ahead, 12 decoding: 500 a step for prefill; 2,000 + 500 = 2,500
        // tokens = 5 steps, + half the one in flight: 5.5 × 50 ms = 275 ms.
        let b = Backlog { prefill_tokens: 2000, decodes: 12, budget: 512 };
        assert_eq!(predict_ttft(&m, &b, 500).unwrap().as_millis(), 275);
        // Nothing ahead: one step of 12 + 100 tokens (112/512 × 50 ms = 10.9 ms) × 1.5 = 16.4 ms.
        let idle = Backlog { prefill_tokens: 0, decodes: 12, budget: 512 };
        let t = predict_ttft(&m, &idle, 100).unwrap().as_secs_f64();
        assert!((t - 1.5 * 0.05 * 112.0 / 512.0).abs() < 1e-9, "{t}");
        // Decodes filling the budget still leave prefill an eighth (64 tokens): 640 tokens =
        // 10 steps.
        let full = Backlog { prefill_tokens: 600, decodes: 600, budget: 512 };
        assert_eq!(predict_ttft(&m, &full, 40).unwrap().as_millis(), 525);
        assert_eq!(predict_ttft(&StepTimeModel::default(), &b, 10), None, "no step seen yet");
    }

    #[test]
    fn the_excess_is_what_must_drain_for_the_deadline_to_hold() {
        // 50 ms a 512-token step, 12 decoding: 500 prefill tokens a step. A 500-token prompt
        // behind 2,000 tokens needs 5.5 steps (275 ms). Within 180 ms means at most 3 steps
        // (3.5 × 50 = 175 ms): ahead + 500 ≤ 1,500, so 1,000 of the 2,000 must drain first.
        let m = model(&[(512, 0.05)]);
        let b = Backlog { prefill_tokens: 2000, decodes: 12, budget: 512 };
        assert_eq!(excess_tokens(&m, &b, 500, 1.0, Duration::from_millis(180)), 1000);
        assert_eq!(excess_tokens(&m, &b, 500, 1.0, Duration::from_millis(300)), 0);
        // Calibrated ×2, 300 ms allows 150 ms of model time: 2 steps, ahead ≤ 500.
        assert_eq!(excess_tokens(&m, &b, 500, 2.0, Duration::from_millis(300)), 1500);
        // Draining 1,000 of them at 500 a 50 ms step: 100 ms.
        assert_eq!(drain_time(&m, &b, 1000).unwrap().as_millis(), 100);
    }

    #[test]
    fn a_drain_ends_at_the_step_end_that_feeds_its_last_token() {
        // Steps end every 400 ms, the last at 10 s, each feeding 300 prompt tokens.
        let g =
            StepGrid { last_end: Duration::from_secs(10), interval: Duration::from_millis(400), fed_per_step: 300.0 };
        let at = |ms| Duration::from_millis(ms);
        // 700 tokens: 3 steps (300, 600, 900 ≥ 700), ending at 11.2 s: from 10.1 s, 1.1 s.
        assert_eq!(g.wait_for(at(10_100), 700), Some(at(1_100)));
        // 1 token: the step in flight, ending at 10.4 s.
        assert_eq!(g.wait_for(at(10_100), 1), Some(at(300)));
        // That step running late (10.5 s): an eighth of a step, 50 ms.
        assert_eq!(g.wait_for(at(10_500), 1), Some(at(50)));
        assert_eq!(StepGrid { fed_per_step: 0.0, ..g }.wait_for(at(10_100), 1), None);
    }
}
