//! What to send: datasets (random lengths, modelled length distributions with an optional
//! shared prefix, a ShareGPT file, shared-prefix groups), each with an optional priority mix —
//! the one request builder of `tandem bench` and the simulators. Follows `vllm bench serve`'s
//! datasets; the ShareGPT-like length fits are log-normal (prompt mean ≈ 200 tokens, output
//! mean ≈ 180, heavy-tailed) clipped as vLLM's filter does.
//!
//! **Cold by default.** A [`PromptSet`] separates a run's *shape* (lengths, priorities: from
//! `shape_seed`) from its *contents* (token ids, or which ShareGPT conversations: from `run`), so
//! compared configurations can get prompts of the same lengths that no server has seen before.

use std::path::Path;

use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal};
use tandem_executor::text::TextTokenizer;

use crate::BenchError;

/// A prompt as sent: token ids (the synthetic datasets, so every engine sees the same tokens) or
/// text (ShareGPT).
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Tokens(Vec<u32>),
    Text(String),
}

/// One request of a benchmark or simulation.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchRequest {
    pub prompt: Prompt,
    pub prompt_len: usize,
    /// `max_tokens`, sent with `ignore_eos` so every engine emits exactly this many.
    pub output_len: usize,
    pub priority: i32,
}

impl BenchRequest {
    /// The prompt's token ids, where the dataset made them (not for text prompts).
    pub fn tokens(&self) -> Option<&[u32]> {
        match &self.prompt {
            Prompt::Tokens(t) => Some(t),
            Prompt::Text(_) => None,
        }
    }
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
                match LogNormal::new(mu, sigma.max(1e-6)) {
                    Ok(d) => (d.sample(rng).round() as usize).clamp(4, max.max(4)),
                    Err(_) => mean.round().max(4.0) as usize,
                }
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

/// Where the requests come from.
#[derive(Debug, Clone, PartialEq)]
pub enum DatasetSpec {
    /// Lengths uniform in `len·(1 − range_ratio) ..= len·(1 + range_ratio)`, random token ids.
    Random { input_len: usize, output_len: usize, range_ratio: f64 },
    /// Lengths from distributions, prompt + output clipped to 2,048 tokens (vLLM's ShareGPT
    /// filter); a fraction of the prompts start with one common 64-token prefix.
    Modelled { prompt: LengthDist, output: LengthDist, shared_prefix_fraction: f64 },
    /// A ShareGPT-format JSON file: the first human turn is the prompt, the reply's length the
    /// output length; vLLM's filters drop pairs with fewer than 4 tokens on either side, prompts
    /// over 1,024 tokens and pairs over 2,048.
    ShareGpt { path: std::path::PathBuf },
    /// `groups` distinct prefixes of `prefix_len` tokens, each request one of them followed by
    /// `suffix_len` own tokens (prefix-cache workloads).
    SharedPrefix { groups: usize, prefix_len: usize, suffix_len: usize, output_len: usize },
    /// Seed 000's case for parallel streams: `background` short requests (`background_input`
    /// prompt, `background_output` output tokens), all sent at once, then the `n` requests of
    /// the run, with long prompts (`long_prompt`) and `long_output` output, arriving on the
    /// run's schedule while the short ones decode.
    Mixed {
        background: usize,
        background_input: usize,
        background_output: usize,
        long_prompt: LengthDist,
        long_output: usize,
    },
}

/// Which prompts one run gets. Lengths and priorities come from `shape_seed`; token ids (or the
/// slice of a ShareGPT file) from `shape_seed` and `run`. Runs with different `run` numbers get
/// prompts of the same lengths and no token sequence in common (cold); the same `run` repeats
/// them exactly (warm, `--reuse-prompts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptSet {
    pub shape_seed: u64,
    pub run: u64,
}

impl PromptSet {
    /// One seed for everything: the same prompts every time it is used.
    pub fn fixed(seed: u64) -> Self {
        Self { shape_seed: seed, run: 0 }
    }

    /// The prompts of run `run_index` (counted over every sweep point, repeat and
    /// configuration of a benchmark), repeat `run_num` (1-based): cold by default — lengths from
    /// the repeat's seed, tokens of the run's own — or, with `reuse`, one fixed set.
    pub fn for_run(seed: u64, reuse: bool, run_num: usize, run_index: u64) -> Self {
        if reuse {
            Self::fixed(seed)
        } else {
            Self { shape_seed: seed.wrapping_add(run_num.saturating_sub(1) as u64), run: run_index }
        }
    }

    fn token_seed(&self) -> u64 {
        // splitmix64 of (seed, run): nearby runs get unrelated streams.
        let mut z = self.shape_seed ^ self.run.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x70c3_5eed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Token ids drawn for synthetic prompts: clear of the special tokens at the low end of the
/// usual vocabularies and inside every vocabulary of 30k or more.
const TOKEN_RANGE: std::ops::Range<u32> = 100..30_000;
/// Longest prompt + output of the modelled dataset, as vLLM's ShareGPT filter.
const MAX_PAIR: usize = 2048;

impl DatasetSpec {
    /// `n` requests of the run `set`, with priorities uniform in `0..priority_levels`.
    pub fn generate(
        &self,
        n: usize,
        priority_levels: u32,
        set: PromptSet,
        tokenizer: Option<&TextTokenizer>,
    ) -> Result<Vec<BenchRequest>, BenchError> {
        let mut shape = ChaCha8Rng::seed_from_u64(set.shape_seed);
        let mut tokens = ChaCha8Rng::seed_from_u64(set.token_seed());
        let mut draw = |len: usize| -> Vec<u32> { (0..len).map(|_| tokens.random_range(TOKEN_RANGE)).collect() };
        let mut out = match self {
            DatasetSpec::Random { input_len, output_len, range_ratio } => {
                if !(0.0..1.0).contains(range_ratio) {
                    return Err(BenchError::Config(format!("range ratio {range_ratio} must be in [0, 1)")));
                }
                let span = |len: usize| {
                    let lo = ((len as f64 * (1.0 - range_ratio)).floor() as usize).max(1);
                    let hi = ((len as f64 * (1.0 + range_ratio)).ceil() as usize).max(lo);
                    LengthDist::Uniform(lo, hi)
                };
                let (ins, outs) = (span(*input_len), span(*output_len));
                (0..n)
                    .map(|_| {
                        let (p, o) = (ins.sample(&mut shape), outs.sample(&mut shape));
                        token_request(draw(p), o)
                    })
                    .collect::<Vec<_>>()
            }
            DatasetSpec::Modelled { prompt, output, shared_prefix_fraction } => {
                let prefix = draw(64);
                (0..n)
                    .map(|_| {
                        let p = prompt.sample(&mut shape).min(MAX_PAIR - 1);
                        let o = output.sample(&mut shape).min(MAX_PAIR - p).max(1);
                        let shared = shape.random_bool(shared_prefix_fraction.clamp(0.0, 1.0));
                        let mut ids = draw(p);
                        if shared {
                            let k = p.min(prefix.len());
                            ids[..k].copy_from_slice(&prefix[..k]);
                        }
                        token_request(ids, o)
                    })
                    .collect()
            }
            DatasetSpec::SharedPrefix { groups, prefix_len, suffix_len, output_len } => {
                let prefixes: Vec<Vec<u32>> = (0..(*groups).max(1)).map(|_| draw(*prefix_len)).collect();
                (0..n)
                    .map(|i| {
                        let mut p = prefixes[i % prefixes.len()].clone();
                        p.extend(draw(*suffix_len));
                        token_request(p, *output_len)
                    })
                    .collect()
            }
            DatasetSpec::ShareGpt { path } => sharegpt(path, n, set, tokenizer, &mut shape)?,
            DatasetSpec::Mixed { background, background_input, background_output, long_prompt, long_output } => {
                let short = (0..*background).map(|_| token_request(draw(*background_input), *background_output));
                let short: Vec<_> = short.collect();
                let long = (0..n).map(|_| {
                    let p = long_prompt.sample(&mut shape);
                    token_request(draw(p), *long_output)
                });
                short.into_iter().chain(long.collect::<Vec<_>>()).collect()
            }
        };
        if priority_levels > 1 {
            for r in &mut out {
                r.priority = shape.random_range(0..priority_levels) as i32;
            }
        }
        Ok(out)
    }
}

impl DatasetSpec {
    /// Requests sent at time 0 ahead of the run's own (the mixed dataset's short ones).
    pub fn background(&self) -> usize {
        match self {
            DatasetSpec::Mixed { background, .. } => *background,
            _ => 0,
        }
    }
}

fn token_request(ids: Vec<u32>, output_len: usize) -> BenchRequest {
    BenchRequest { prompt_len: ids.len(), prompt: Prompt::Tokens(ids), output_len, priority: 0 }
}

/// The usable conversations of `path` in an order fixed by the shape seed; run `k` takes the
/// `k`-th slice of `n`, so runs never share a conversation.
fn sharegpt(
    path: &Path,
    n: usize,
    set: PromptSet,
    tokenizer: Option<&TextTokenizer>,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<BenchRequest>, BenchError> {
    let tok =
        tokenizer.ok_or_else(|| BenchError::Config("the ShareGPT dataset needs a tokenizer to count tokens".into()))?;
    let mut pairs = read_sharegpt(path)?;
    pairs.shuffle(rng);
    let skip = (set.run as usize).saturating_mul(n);
    let mut usable = 0usize;
    let mut out = Vec::with_capacity(n);
    for (prompt, reply) in pairs {
        if out.len() == n {
            break;
        }
        let p = tok.encode(&prompt).map_err(|e| BenchError::Dataset(e.to_string()))?.len();
        let o = tok.encode(&reply).map_err(|e| BenchError::Dataset(e.to_string()))?.len();
        if p < 4 || o < 4 || p > 1024 || p + o > MAX_PAIR {
            continue;
        }
        usable += 1;
        if usable > skip {
            out.push(BenchRequest { prompt: Prompt::Text(prompt), prompt_len: p, output_len: o, priority: 0 });
        }
    }
    if out.len() < n {
        return Err(BenchError::Dataset(format!(
            "{} has only {usable} usable conversations; run {} of {n} prompts needs {} (fewer prompts, or --reuse-prompts)",
            path.display(),
            set.run + 1,
            skip + n
        )));
    }
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(r: &BenchRequest) -> Vec<u32> {
        r.tokens().expect("token prompt").to_vec()
    }

    #[test]
    fn mixed_puts_the_short_background_first_then_the_long_prompts() {
        let spec = DatasetSpec::Mixed {
            background: 3,
            background_input: 8,
            background_output: 50,
            long_prompt: LengthDist::Uniform(1024, 2048),
            long_output: 4,
        };
        let r = spec.generate(2, 1, PromptSet::fixed(1), None).unwrap();
        assert_eq!(r.len(), 5, "3 background + 2 of the run");
        assert!(r[..3].iter().all(|q| q.prompt_len == 8 && q.output_len == 50));
        assert!(r[3..].iter().all(|q| (1024..=2048).contains(&q.prompt_len) && q.output_len == 4));
        assert_eq!(spec.background(), 3);
        // Another run: the same lengths, none of the same tokens.
        let other = spec.generate(2, 1, PromptSet { shape_seed: 1, run: 1 }, None).unwrap();
        assert_eq!(
            other.iter().map(|q| q.prompt_len).collect::<Vec<_>>(),
            r.iter().map(|q| q.prompt_len).collect::<Vec<_>>()
        );
        assert_ne!(toks(&other[0]), toks(&r[0]));
    }

    #[test]
    fn every_run_gets_its_own_prompts_unless_reused() {
        // Three runs of repeat 1 (two configurations, then a second sweep point), one of repeat 2.
        let sets = [
            PromptSet::for_run(9, false, 1, 0),
            PromptSet::for_run(9, false, 1, 1),
            PromptSet::for_run(9, false, 1, 2),
            PromptSet::for_run(9, false, 2, 3),
        ];
        for (i, a) in sets.iter().enumerate() {
            assert!(sets[i + 1..].iter().all(|b| b.run != a.run), "{sets:?}");
        }
        // One repeat shares its lengths (shape seed); the next repeat draws new ones.
        assert_eq!((sets[0].shape_seed, sets[2].shape_seed, sets[3].shape_seed), (9, 9, 10));
        assert_eq!(PromptSet::for_run(9, true, 2, 3), PromptSet::for_run(9, true, 1, 0));
    }

    #[test]
    fn random_lengths_stay_in_the_range_and_repeat_by_seed() {
        let spec = DatasetSpec::Random { input_len: 100, output_len: 20, range_ratio: 0.5 };
        let a = spec.generate(500, 1, PromptSet::fixed(7), None).unwrap();
        // Inputs in 50..=150, outputs in 10..=30.
        assert!(a.iter().all(|r| (50..=150).contains(&r.prompt_len) && (10..=30).contains(&r.output_len)));
        assert!(a.iter().all(|r| matches!(&r.prompt, Prompt::Tokens(t) if t.len() == r.prompt_len)));
        assert_eq!(a, spec.generate(500, 1, PromptSet::fixed(7), None).unwrap());
        assert_ne!(a, spec.generate(500, 1, PromptSet::fixed(8), None).unwrap());
        let fixed = DatasetSpec::Random { input_len: 32, output_len: 8, range_ratio: 0.0 };
        let f = fixed.generate(10, 1, PromptSet::fixed(0), None).unwrap();
        assert!(f.iter().all(|r| r.prompt_len == 32 && r.output_len == 8));
    }

    #[test]
    fn another_run_gets_the_same_lengths_and_fresh_tokens() {
        for spec in [
            DatasetSpec::Random { input_len: 64, output_len: 16, range_ratio: 0.5 },
            DatasetSpec::SharedPrefix { groups: 2, prefix_len: 32, suffix_len: 8, output_len: 4 },
            DatasetSpec::Modelled {
                prompt: LengthDist::sharegpt_prompt(),
                output: LengthDist::sharegpt_output(),
                shared_prefix_fraction: 0.5,
            },
        ] {
            let run = |k| spec.generate(64, 3, PromptSet { shape_seed: 5, run: k }, None).unwrap();
            let (a, b) = (run(0), run(1));
            let shape =
                |v: &[BenchRequest]| v.iter().map(|r| (r.prompt_len, r.output_len, r.priority)).collect::<Vec<_>>();
            assert_eq!(shape(&a), shape(&b), "{spec:?}: lengths and priorities are the run's shape");
            // No prompt of run 1 starts like any prompt of run 0: not even one 16-token KV block
            // could be served from a prefix cache filled by run 0.
            let firsts: std::collections::HashSet<Vec<u32>> = a.iter().map(|r| toks(r)[..4].to_vec()).collect();
            assert!(b.iter().all(|r| !firsts.contains(&toks(r)[..4])), "{spec:?}");
            assert_eq!(a, run(0), "the same run repeats exactly");
        }
    }

    #[test]
    fn shared_prefixes_repeat_across_groups_and_priorities_mix() {
        let spec = DatasetSpec::SharedPrefix { groups: 2, prefix_len: 16, suffix_len: 4, output_len: 3 };
        let r = spec.generate(6, 3, PromptSet::fixed(1), None).unwrap();
        let t = |i: usize| toks(&r[i]);
        // Requests 0, 2, 4 share group 0's prefix; 1, 3, 5 group 1's.
        assert_eq!(t(0)[..16], t(2)[..16]);
        assert_eq!(t(1)[..16], t(5)[..16]);
        assert_ne!(t(0)[..16], t(1)[..16]);
        assert!(r.iter().all(|x| x.prompt_len == 20 && (0..3).contains(&x.priority)));
    }

    #[test]
    fn sharegpt_like_means_and_limits() {
        let spec = DatasetSpec::Modelled {
            prompt: LengthDist::sharegpt_prompt(),
            output: LengthDist::sharegpt_output(),
            shared_prefix_fraction: 0.0,
        };
        let w = spec.generate(20_000, 1, PromptSet::fixed(0), None).unwrap();
        let mean = |f: &dyn Fn(&BenchRequest) -> usize| w.iter().map(f).sum::<usize>() as f64 / w.len() as f64;
        let (p, o) = (mean(&|r| r.prompt_len), mean(&|r| r.output_len));
        // Clipping the tails pulls the means a little under the targets (200 and 180).
        assert!((150.0..=215.0).contains(&p), "prompt mean {p}");
        assert!((140.0..=195.0).contains(&o), "output mean {o}");
        assert!(w.iter().all(|r| r.prompt_len >= 4 && r.prompt_len <= 1024 && r.prompt_len + r.output_len <= 2048));
        assert_eq!(w, spec.generate(20_000, 1, PromptSet::fixed(0), None).unwrap(), "deterministic by seed");
    }

    #[test]
    fn a_modelled_shared_prefix_is_common_to_the_asked_fraction() {
        let spec = DatasetSpec::Modelled {
            prompt: LengthDist::Fixed(100),
            output: LengthDist::Fixed(4),
            shared_prefix_fraction: 0.5,
        };
        let w = spec.generate(2000, 1, PromptSet::fixed(3), None).unwrap();
        let first = |r: &BenchRequest| toks(r)[..64].to_vec();
        let mut counts = std::collections::HashMap::new();
        for r in &w {
            *counts.entry(first(r)).or_insert(0usize) += 1;
        }
        // About half (±5%) carry the one common prefix; the rest are all distinct.
        let common = *counts.values().max().unwrap();
        assert!((900..1100).contains(&common), "{common}");
        assert_eq!(counts.len(), w.len() - common + 1);
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

    #[test]
    fn sharegpt_files_are_filtered_as_vllm_does() {
        let dir = std::env::temp_dir().join(format!("tandem-sharegpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sg.json");
        std::fs::write(&path, "[{\"conversations\": [{\"from\": \"human\", \"value\": \"hi\"}]}]").unwrap();
        let spec = DatasetSpec::ShareGpt { path: path.clone() };
        assert!(
            matches!(spec.generate(1, 1, PromptSet::fixed(0), None), Err(BenchError::Config(_))),
            "needs a tokenizer"
        );
        std::fs::write(&path, "{").unwrap();
        assert!(read_sharegpt(&path).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
