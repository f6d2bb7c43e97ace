//! What to send and when: datasets (random lengths, a ShareGPT file, shared prefixes, with an
//! optional priority mix) and arrival schedules (all at once, fixed rate, Poisson, gamma with a
//! burstiness factor), deterministic by seed. Follows `vllm bench serve`'s datasets and
//! request-rate semantics.

use std::path::Path;

use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma};
use tandem_executor::text::TextTokenizer;

use crate::BenchError;

/// A prompt as sent: token ids (the random and shared-prefix datasets, so every engine sees the
/// same tokens) or text (ShareGPT).
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Tokens(Vec<u32>),
    Text(String),
}

/// One request of a benchmark.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchRequest {
    pub prompt: Prompt,
    pub prompt_len: usize,
    /// `max_tokens`, sent with `ignore_eos` so every engine emits exactly this many.
    pub output_len: usize,
    pub priority: i32,
}

/// Where the requests come from.
#[derive(Debug, Clone, PartialEq)]
pub enum DatasetSpec {
    /// Lengths uniform in `len·(1 − range_ratio) ..= len·(1 + range_ratio)`, random token ids.
    Random { input_len: usize, output_len: usize, range_ratio: f64 },
    /// A ShareGPT-format JSON file: the first human turn is the prompt, the reply's length the
    /// output length; vLLM's filters drop pairs with fewer than 4 tokens on either side, prompts
    /// over 1,024 tokens and pairs over 2,048.
    ShareGpt { path: std::path::PathBuf },
    /// `groups` distinct prefixes of `prefix_len` tokens, each request one of them followed by
    /// `suffix_len` own tokens (prefix-cache workloads).
    SharedPrefix { groups: usize, prefix_len: usize, suffix_len: usize, output_len: usize },
}

/// Token ids drawn for synthetic prompts: clear of the special tokens at the low end of the
/// usual vocabularies and inside every vocabulary of 30k or more.
const TOKEN_RANGE: std::ops::Range<u32> = 100..30_000;

impl DatasetSpec {
    /// Parses `random`, `sharegpt:PATH`, `shared-prefix` (lengths come from the other flags).
    pub fn generate(
        &self,
        n: usize,
        priority_levels: u32,
        seed: u64,
        tokenizer: Option<&TextTokenizer>,
    ) -> Result<Vec<BenchRequest>, BenchError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut out = match self {
            DatasetSpec::Random { input_len, output_len, range_ratio } => {
                if !(0.0..1.0).contains(range_ratio) {
                    return Err(BenchError::Config(format!("range ratio {range_ratio} must be in [0, 1)")));
                }
                let span = |len: usize| {
                    let lo = ((len as f64 * (1.0 - range_ratio)).floor() as usize).max(1);
                    let hi = ((len as f64 * (1.0 + range_ratio)).ceil() as usize).max(lo);
                    (lo, hi)
                };
                let ((ilo, ihi), (olo, ohi)) = (span(*input_len), span(*output_len));
                (0..n)
                    .map(|_| {
                        let len = rng.random_range(ilo..=ihi);
                        let prompt: Vec<u32> = (0..len).map(|_| rng.random_range(TOKEN_RANGE)).collect();
                        BenchRequest {
                            prompt_len: len,
                            prompt: Prompt::Tokens(prompt),
                            output_len: rng.random_range(olo..=ohi),
                            priority: 0,
                        }
                    })
                    .collect::<Vec<_>>()
            }
            DatasetSpec::SharedPrefix { groups, prefix_len, suffix_len, output_len } => {
                let prefixes: Vec<Vec<u32>> = (0..(*groups).max(1))
                    .map(|_| (0..*prefix_len).map(|_| rng.random_range(TOKEN_RANGE)).collect())
                    .collect();
                (0..n)
                    .map(|i| {
                        let mut p = prefixes[i % prefixes.len()].clone();
                        p.extend((0..*suffix_len).map(|_| rng.random_range(TOKEN_RANGE)));
                        BenchRequest {
                            prompt_len: p.len(),
                            prompt: Prompt::Tokens(p),
                            output_len: *output_len,
                            priority: 0,
                        }
                    })
                    .collect()
            }
            DatasetSpec::ShareGpt { path } => {
                let tok = tokenizer.ok_or_else(|| {
                    BenchError::Config("the ShareGPT dataset needs a tokenizer to count tokens".into())
                })?;
                let mut pairs = read_sharegpt(path)?;
                pairs.shuffle(&mut rng);
                let mut out = Vec::with_capacity(n);
                for (prompt, reply) in pairs {
                    if out.len() == n {
                        break;
                    }
                    let p = tok.encode(&prompt).map_err(|e| BenchError::Dataset(e.to_string()))?.len();
                    let o = tok.encode(&reply).map_err(|e| BenchError::Dataset(e.to_string()))?.len();
                    if p < 4 || o < 4 || p > 1024 || p + o > 2048 {
                        continue;
                    }
                    out.push(BenchRequest { prompt: Prompt::Text(prompt), prompt_len: p, output_len: o, priority: 0 });
                }
                if out.len() < n {
                    return Err(BenchError::Dataset(format!(
                        "{} has only {} usable conversations, {n} asked",
                        path.display(),
                        out.len()
                    )));
                }
                out
            }
        };
        if priority_levels > 1 {
            for r in &mut out {
                r.priority = rng.random_range(0..priority_levels) as i32;
            }
        }
        Ok(out)
    }
}

fn read_sharegpt(path: &Path) -> Result<Vec<(String, String)>, BenchError> {
    let bad = |why: String| BenchError::Dataset(format!("{}: {why}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let items = json.as_array().ok_or_else(|| bad("expected a list of conversations".into()))?;
    Ok(items
        .iter()
        .filter_map(|c| {
            let turns = c.get("conversations")?.as_array()?;
            let value = |i: usize| turns.get(i)?.get("value")?.as_str().map(String::from);
            Some((value(0)?, value(1)?))
        })
        .collect())
}

/// When requests are sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ArrivalSpec {
    /// Everything at once (vLLM's `--request-rate inf`).
    AllAtOnce,
    /// Evenly spaced at `rate` requests/s.
    Fixed { rate: f64 },
    /// Gamma inter-arrival times with shape `burstiness` and scale `1/(rate·burstiness)`:
    /// mean `1/rate`; burstiness 1 is Poisson, below 1 burstier, above 1 more regular.
    Gamma { rate: f64, burstiness: f64 },
}

impl ArrivalSpec {
    /// Send times in seconds from the start, non-decreasing, the first at 0.
    pub fn times(&self, n: usize, seed: u64) -> Result<Vec<f64>, BenchError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_a11e);
        let positive = |x: f64, what: &str| {
            if x > 0.0 && x.is_finite() {
                Ok(x)
            } else {
                Err(BenchError::Config(format!("{what} must be a positive number, got {x}")))
            }
        };
        match *self {
            ArrivalSpec::AllAtOnce => Ok(vec![0.0; n]),
            ArrivalSpec::Fixed { rate } => {
                let rate = positive(rate, "the request rate")?;
                Ok((0..n).map(|i| i as f64 / rate).collect())
            }
            ArrivalSpec::Gamma { rate, burstiness } => {
                let (rate, b) = (positive(rate, "the request rate")?, positive(burstiness, "burstiness")?);
                let gamma = Gamma::new(b, 1.0 / (rate * b)).map_err(|e| BenchError::Config(e.to_string()))?;
                let mut t = 0.0;
                Ok((0..n)
                    .map(|i| {
                        if i > 0 {
                            t += gamma.sample(&mut rng);
                        }
                        t
                    })
                    .collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_lengths_stay_in_the_range_and_repeat_by_seed() {
        let spec = DatasetSpec::Random { input_len: 100, output_len: 20, range_ratio: 0.5 };
        let a = spec.generate(500, 1, 7, None).unwrap();
        // Inputs in 50..=150, outputs in 10..=30.
        assert!(a.iter().all(|r| (50..=150).contains(&r.prompt_len) && (10..=30).contains(&r.output_len)));
        assert!(a.iter().all(|r| matches!(&r.prompt, Prompt::Tokens(t) if t.len() == r.prompt_len)));
        assert_eq!(a, spec.generate(500, 1, 7, None).unwrap());
        assert_ne!(a, spec.generate(500, 1, 8, None).unwrap());
        let fixed = DatasetSpec::Random { input_len: 32, output_len: 8, range_ratio: 0.0 };
        assert!(fixed.generate(10, 1, 0, None).unwrap().iter().all(|r| r.prompt_len == 32 && r.output_len == 8));
    }

    #[test]
    fn shared_prefixes_repeat_across_groups_and_priorities_mix() {
        let spec = DatasetSpec::SharedPrefix { groups: 2, prefix_len: 16, suffix_len: 4, output_len: 3 };
        let r = spec.generate(6, 3, 1, None).unwrap();
        let toks = |i: usize| match &r[i].prompt {
            Prompt::Tokens(t) => t.clone(),
            Prompt::Text(_) => unreachable!(),
        };
        // Requests 0, 2, 4 share group 0's prefix; 1, 3, 5 group 1's.
        assert_eq!(toks(0)[..16], toks(2)[..16]);
        assert_eq!(toks(1)[..16], toks(5)[..16]);
        assert_ne!(toks(0)[..16], toks(1)[..16]);
        assert!(r.iter().all(|x| x.prompt_len == 20 && (0..3).contains(&x.priority)));
    }

    #[test]
    fn arrivals_have_the_asked_rate() {
        // 1,000 fixed arrivals at 50/s: the last at 999/50 = 19.98 s.
        let f = ArrivalSpec::Fixed { rate: 50.0 }.times(1000, 0).unwrap();
        assert!((f[999] - 19.98).abs() < 1e-9);
        // Gamma with mean gap 1/50: 9,999 gaps ≈ 200 s, for any burstiness.
        for b in [0.5, 1.0, 4.0] {
            let g = ArrivalSpec::Gamma { rate: 50.0, burstiness: b }.times(10_000, 3).unwrap();
            assert!((185.0..215.0).contains(&g[9999]), "burstiness {b}: {}", g[9999]);
            assert!(g.windows(2).all(|w| w[0] <= w[1]) && g[0] == 0.0);
        }
        // Burstier traffic has more variable gaps: CV² = 1/burstiness.
        let cv2 = |b: f64| {
            let t = ArrivalSpec::Gamma { rate: 10.0, burstiness: b }.times(20_000, 1).unwrap();
            let gaps: Vec<f64> = t.windows(2).map(|w| w[1] - w[0]).collect();
            let m = gaps.iter().sum::<f64>() / gaps.len() as f64;
            gaps.iter().map(|g| (g - m).powi(2)).sum::<f64>() / gaps.len() as f64 / (m * m)
        };
        assert!((cv2(0.25) - 4.0).abs() < 0.6 && (cv2(4.0) - 0.25).abs() < 0.05);
        assert!(ArrivalSpec::Fixed { rate: 0.0 }.times(3, 0).is_err());
        assert_eq!(ArrivalSpec::AllAtOnce.times(3, 0).unwrap(), vec![0.0; 3]);
    }

    #[test]
    fn sharegpt_files_are_filtered_as_vllm_does() {
        let dir = std::env::temp_dir().join(format!("tandem-sharegpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sg.json");
        std::fs::write(&path, "[{\"conversations\": [{\"from\": \"human\", \"value\": \"hi\"}]}]").unwrap();
        let spec = DatasetSpec::ShareGpt { path: path.clone() };
        assert!(matches!(spec.generate(1, 1, 0, None), Err(BenchError::Config(_))), "needs a tokenizer");
        std::fs::write(&path, "{").unwrap();
        assert!(read_sharegpt(&path).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
