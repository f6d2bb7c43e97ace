//! When requests are sent: the one arrival model of `tandem bench`, `tandem simulate` and
//! `tandem simulate-contexts` — all at once, evenly spaced, Poisson, or gamma with a burstiness
//! factor — as send times in seconds from the start, deterministic by seed. Follows
//! `vllm bench serve`'s `--request-rate` / `--burstiness` semantics.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp, Gamma};

use crate::BenchError;

/// When requests arrive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arrival {
    /// Everything at time 0 (vLLM's `--request-rate inf`).
    AllAtOnce,
    /// Evenly spaced at `rate` requests/s.
    Fixed { rate: f64 },
    /// Exponential inter-arrival times at `rate` requests/s (gamma with burstiness 1).
    Poisson { rate: f64 },
    /// Gamma inter-arrival times with shape `burstiness` and scale `1/(rate·burstiness)`:
    /// mean `1/rate`; burstiness 1 is Poisson, below 1 burstier (bursts separated by lulls),
    /// above 1 more regular.
    Gamma { rate: f64, burstiness: f64 },
}

fn positive(x: f64, what: &str) -> Result<f64, BenchError> {
    if x > 0.0 && x.is_finite() {
        Ok(x)
    } else {
        Err(BenchError::Config(format!("{what} must be a positive number, got {x}")))
    }
}

impl Arrival {
    /// Requests per second, `None` for all at once.
    pub fn rate(&self) -> Option<f64> {
        match *self {
            Arrival::AllAtOnce => None,
            Arrival::Fixed { rate } | Arrival::Poisson { rate } | Arrival::Gamma { rate, .. } => Some(rate),
        }
    }

    /// Send times in seconds from the start, non-decreasing, the first at 0.
    pub fn times(&self, n: usize, seed: u64) -> Result<Vec<f64>, BenchError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_a11e);
        let mut gaps = |d: &dyn Fn(&mut ChaCha8Rng) -> f64| {
            let mut t = 0.0;
            (0..n)
                .map(|i| {
                    if i > 0 {
                        t += d(&mut rng);
                    }
                    t
                })
                .collect()
        };
        match *self {
            Arrival::AllAtOnce => Ok(vec![0.0; n]),
            Arrival::Fixed { rate } => {
                let rate = positive(rate, "the request rate")?;
                Ok((0..n).map(|i| i as f64 / rate).collect())
            }
            Arrival::Poisson { rate } => {
                let exp =
                    Exp::new(positive(rate, "the request rate")?).map_err(|e| BenchError::Config(e.to_string()))?;
                Ok(gaps(&|r| exp.sample(r)))
            }
            Arrival::Gamma { rate, burstiness } => {
                let (rate, b) = (positive(rate, "the request rate")?, positive(burstiness, "burstiness")?);
                let gamma = Gamma::new(b, 1.0 / (rate * b)).map_err(|e| BenchError::Config(e.to_string()))?;
                Ok(gaps(&|r| gamma.sample(r)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mean and coefficient of variation of the gaps.
    fn gap_stats(t: &[f64]) -> (f64, f64) {
        let g: Vec<f64> = t.windows(2).map(|w| w[1] - w[0]).collect();
        let m = g.iter().sum::<f64>() / g.len() as f64;
        let var = g.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / g.len() as f64;
        (m, var.sqrt() / m)
    }

    #[test]
    fn arrivals_have_the_asked_rate() {
        // 1,000 fixed arrivals at 50/s: the last at 999/50 = 19.98 s.
        let f = Arrival::Fixed { rate: 50.0 }.times(1000, 0).unwrap();
        assert!((f[999] - 19.98).abs() < 1e-9);
        // Gamma with mean gap 1/50: 9,999 gaps ≈ 200 s, for any burstiness.
        for b in [0.5, 1.0, 4.0] {
            let g = Arrival::Gamma { rate: 50.0, burstiness: b }.times(10_000, 3).unwrap();
            assert!((185.0..215.0).contains(&g[9999]), "burstiness {b}: {}", g[9999]);
            assert!(g.windows(2).all(|w| w[0] <= w[1]) && g[0] == 0.0);
        }
        // Burstier traffic has more variable gaps: CV² = 1/burstiness.
        let cv2 = |b: f64| gap_stats(&Arrival::Gamma { rate: 10.0, burstiness: b }.times(20_000, 1).unwrap()).1.powi(2);
        assert!((cv2(0.25) - 4.0).abs() < 0.6 && (cv2(4.0) - 0.25).abs() < 0.05);
        assert!(Arrival::Fixed { rate: 0.0 }.times(3, 0).is_err());
        assert!(Arrival::Poisson { rate: f64::NAN }.times(3, 0).is_err());
        assert_eq!(Arrival::AllAtOnce.times(3, 0).unwrap(), vec![0.0; 3]);
    }

    #[test]
    fn gamma_arrivals_keep_the_rate_and_come_in_bursts() {
        // Gamma(k, θ) has mean kθ = 1/rate and coefficient of variation 1/√k: k = 0.25 → 2.
        let (mean, cv) = gap_stats(&Arrival::Gamma { rate: 10.0, burstiness: 0.25 }.times(20_000, 0).unwrap());
        assert!((0.09..0.11).contains(&mean) && (1.8..2.2).contains(&cv), "mean {mean} cv {cv}");
        // Poisson (k = 1): cv 1.
        let (_, cv) = gap_stats(&Arrival::Poisson { rate: 10.0 }.times(20_000, 0).unwrap());
        assert!((0.95..1.05).contains(&cv), "cv {cv}");
    }

    #[test]
    fn poisson_arrivals_have_the_asked_rate() {
        let w = Arrival::Poisson { rate: 50.0 }.times(10_000, 0).unwrap();
        // 9,999 gaps of mean 1/50 s ≈ 200 s.
        assert!((190.0..210.0).contains(&w[9999]), "{}", w[9999]);
        assert!(w.windows(2).all(|p| p[0] <= p[1]));
        assert_eq!(w, Arrival::Poisson { rate: 50.0 }.times(10_000, 0).unwrap(), "deterministic by seed");
    }
}
