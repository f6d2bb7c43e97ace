//! Workloads for simulation and benchmarks: how many requests, when they arrive, how long their
//! prompts and outputs are, and their priorities. Deterministic by seed.
//!
//! `ShareGpt` lengths follow log-normal fits of the ShareGPT conversations vLLM benchmarks with
//! (prompt mean ≈ 200 tokens, output mean ≈ 180, both heavy-tailed), clipped as vLLM's filter
//! does: at least 4 tokens, prompts at most 1,024, prompt + output at most 2,048.

use std::time::Duration;

use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Exp, Gamma, LogNormal};

/// When requests arrive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arrival {
    /// Everything at time 0.
    AllAtOnce,
    /// Exponential inter-arrival times at `rate` requests/s.
    Poisson { rate: f64 },
    /// Evenly spaced at `rate` requests/s.
    Fixed { rate: f64 },
    /// Gamma inter-arrival times (shape `burstiness`, scale `1/(rate·burstiness)`): mean
    /// `1/rate`; below 1 the arrivals come in bursts separated by lulls (vLLM's burstiness).
    Gamma { rate: f64, burstiness: f64 },
}

/// A token-length distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LengthDist {
    Fixed(usize),
    /// Uniform in `lo..=hi`.
    Uniform(usize, usize),
    /// Log-normal with this mean and log-space sigma, clipped to `4..=max`.
    LogNormal {
        mean: f64,
        sigma: f64,
        max: usize,
    },
}

impl LengthDist {
    /// ShareGPT-like prompt lengths (mean ≈ 200).
    pub fn sharegpt_prompt() -> Self {
        LengthDist::LogNormal { mean: 200.0, sigma: 0.9, max: 1024 }
    }

    /// ShareGPT-like output lengths (mean ≈ 180).
    pub fn sharegpt_output() -> Self {
        LengthDist::LogNormal { mean: 180.0, sigma: 0.8, max: 1024 }
    }

    fn sample(&self, rng: &mut impl rand::Rng) -> usize {
        match *self {
            LengthDist::Fixed(n) => n.max(1),
            LengthDist::Uniform(lo, hi) => rng.random_range(lo.max(1)..=hi.max(lo.max(1))),
            LengthDist::LogNormal { mean, sigma, max } => {
                // mean = exp(mu + sigma²/2) → mu = ln(mean) − sigma²/2
                let mu = mean.max(1.0).ln() - sigma * sigma / 2.0;
                let d = LogNormal::new(mu, sigma.max(1e-6)).expect("valid log-normal");
                (d.sample(rng).round() as usize).clamp(4, max.max(4))
            }
        }
    }

    /// Parses `fixed:N`, `uniform:LO:HI`, `sharegpt` (with `output` choosing the output fit).
    pub fn parse(s: &str, output: bool) -> Option<Self> {
        let p: Vec<&str> = s.split(':').collect();
        match (p[0], p.len()) {
            ("sharegpt", 1) => Some(if output { Self::sharegpt_output() } else { Self::sharegpt_prompt() }),
            ("fixed", 2) => p[1].parse().ok().filter(|&n| n > 0).map(LengthDist::Fixed),
            ("uniform", 3) => {
                let (lo, hi) = (p[1].parse().ok()?, p[2].parse().ok()?);
                (lo > 0 && lo <= hi).then_some(LengthDist::Uniform(lo, hi))
            }
            _ => None,
        }
    }
}

/// A workload description.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadSpec {
    pub requests: usize,
    pub arrival: Arrival,
    pub prompt: LengthDist,
    pub output: LengthDist,
    /// Priorities drawn uniformly from `0..priority_levels` (1 = everyone priority 0).
    pub priority_levels: u32,
    /// Fraction of requests that start with a common 64-token prefix (prefix-cache workloads).
    pub shared_prefix_fraction: f64,
    pub seed: u64,
}

impl Default for WorkloadSpec {
    fn default() -> Self {
        Self {
            requests: 1000,
            arrival: Arrival::AllAtOnce,
            prompt: LengthDist::sharegpt_prompt(),
            output: LengthDist::sharegpt_output(),
            priority_levels: 1,
            shared_prefix_fraction: 0.0,
            seed: 0,
        }
    }
}

/// One generated request.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadRequest {
    pub arrival: Duration,
    pub prompt: Vec<u32>,
    pub output_len: usize,
    pub priority: i32,
}

impl WorkloadSpec {
    /// The requests, sorted by arrival. Prompt + output never exceeds 2,048 tokens.
    pub fn generate(&self) -> Vec<WorkloadRequest> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed);
        let mut t = 0.0f64;
        let prefix: Vec<u32> = (0..64).map(|i| 1000 + i).collect();
        (0..self.requests)
            .map(|i| {
                let arrival = match self.arrival {
                    Arrival::AllAtOnce => 0.0,
                    Arrival::Fixed { rate } => i as f64 / rate,
                    Arrival::Poisson { rate } => {
                        if i > 0 {
                            t += Exp::new(rate).expect("positive rate").sample(&mut rng);
                        }
                        t
                    }
                    Arrival::Gamma { rate, burstiness } => {
                        if i > 0 {
                            let g = Gamma::new(burstiness, 1.0 / (rate * burstiness)).expect("positive rate and shape");
                            t += g.sample(&mut rng);
                        }
                        t
                    }
                };
                let prompt_len = self.prompt.sample(&mut rng).min(2047);
                let output_len = self.output.sample(&mut rng).min(2048 - prompt_len).max(1);
                let shared = rng.random_bool(self.shared_prefix_fraction.clamp(0.0, 1.0));
                let prompt = (0..prompt_len)
                    .map(|j| if shared && j < prefix.len() { prefix[j] } else { rng.random_range(5..30_000) })
                    .collect();
                let priority = rng.random_range(0..self.priority_levels.max(1)) as i32;
                WorkloadRequest { arrival: Duration::from_secs_f64(arrival), prompt, output_len, priority }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gamma_arrivals_keep_the_rate_and_come_in_bursts() {
        let gaps = |arrival| {
            let w = WorkloadSpec { requests: 20_000, arrival, ..WorkloadSpec::default() }.generate();
            w.windows(2).map(|p| (p[1].arrival - p[0].arrival).as_secs_f64()).collect::<Vec<_>>()
        };
        let stats = |g: &[f64]| {
            let m = g.iter().sum::<f64>() / g.len() as f64;
            let var = g.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / g.len() as f64;
            (m, var.sqrt() / m)
        };
        // Gamma(k, θ) has mean kθ = 1/rate and coefficient of variation 1/√k: k = 0.25 → 2.
        let (mean, cv) = stats(&gaps(Arrival::Gamma { rate: 10.0, burstiness: 0.25 }));
        assert!((0.09..0.11).contains(&mean) && (1.8..2.2).contains(&cv), "mean {mean} cv {cv}");
        // Poisson (k = 1): cv 1.
        let (_, cv) = stats(&gaps(Arrival::Poisson { rate: 10.0 }));
        assert!((0.95..1.05).contains(&cv), "cv {cv}");
    }

    #[test]
    fn sharegpt_like_means_and_limits() {
        let spec = WorkloadSpec { requests: 20_000, ..WorkloadSpec::default() };
        let w = spec.generate();
        let mean = |f: &dyn Fn(&WorkloadRequest) -> usize| w.iter().map(f).sum::<usize>() as f64 / w.len() as f64;
        let (p, o) = (mean(&|r| r.prompt.len()), mean(&|r| r.output_len));
        // Clipping the tails pulls the means a little under the targets (200 and 180).
        assert!((150.0..=215.0).contains(&p), "prompt mean {p}");
        assert!((140.0..=195.0).contains(&o), "output mean {o}");
        assert!(w
            .iter()
            .all(|r| r.prompt.len() >= 4 && r.prompt.len() <= 1024 && r.prompt.len() + r.output_len <= 2048));
        assert_eq!(w, spec.generate(), "deterministic by seed");
    }

    #[test]
    fn poisson_arrivals_have_the_asked_rate() {
        let spec =
            WorkloadSpec { requests: 10_000, arrival: Arrival::Poisson { rate: 50.0 }, ..WorkloadSpec::default() };
        let w = spec.generate();
        let span = w.last().unwrap().arrival.as_secs_f64();
        // 9,999 gaps of mean 1/50 s ≈ 200 s.
        assert!((190.0..210.0).contains(&span), "{span}");
        assert!(w.windows(2).all(|p| p[0].arrival <= p[1].arrival));
    }

    #[test]
    fn length_specs_parse() {
        assert_eq!(LengthDist::parse("fixed:128", false), Some(LengthDist::Fixed(128)));
        assert_eq!(LengthDist::parse("uniform:10:20", true), Some(LengthDist::Uniform(10, 20)));
        assert_eq!(LengthDist::parse("sharegpt", true), Some(LengthDist::sharegpt_output()));
        for bad in ["fixed:0", "uniform:5:1", "zipf", "fixed"] {
            assert_eq!(LengthDist::parse(bad, false), None, "{bad}");
        }
    }
}
