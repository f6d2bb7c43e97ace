//! Per-request sampling from a row of logits: greedy, temperature, top-k, top-p, seeded.
//!
//! The random stream of a seeded request is derived from `(seed, index of the token being
//! sampled)`, not from a stateful generator, so a request that is preempted and recomputed, or
//! batched differently, samples the same text (vLLM's per-request generators give the same
//! guarantee).

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tandem_core::{SamplerParams, TokenId, TokenLogprobs};

/// Index of the largest logit (the first on ties).
pub fn argmax(logits: &[f32]) -> TokenId {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as TokenId
}

fn mix(seed: u64, index: usize) -> u64 {
    let mut x = seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The ids of the `k` largest logits (at most all of them), largest first, ties by id.
fn most_likely(logits: &[f32], k: usize) -> Vec<u32> {
    let k = k.min(logits.len());
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let by_logit = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
    if k > 0 && k < idx.len() {
        idx.select_nth_unstable_by(k - 1, by_logit);
    }
    idx.truncate(k);
    idx.sort_by(by_logit);
    idx
}

/// The log-probability of `token` and of the `top` most likely tokens under the softmax of
/// `logits` (raw: no temperature), most likely first, ties by id.
pub fn token_logprobs(logits: &[f32], token: TokenId, top: usize) -> TokenLogprobs {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    // log Σ exp(x) = max + log Σ exp(x - max), summed in f64 for long vocabularies.
    let lse = max + logits.iter().map(|&x| ((x - max) as f64).exp()).sum::<f64>().ln() as f32;
    let at = |i: usize| logits.get(i).map_or(f32::NEG_INFINITY, |&x| x - lse);
    let top = most_likely(logits, top).into_iter().map(|i| (i, at(i as usize))).collect();
    TokenLogprobs { token, logprob: at(token as usize), top }
}

/// Samples the `index`-th generated token of a request. `fallback_seed` is used when the
/// request has no seed of its own.
pub fn sample(logits: &[f32], p: &SamplerParams, index: usize, fallback_seed: u64) -> TokenId {
    if p.temperature <= 0.0 || logits.is_empty() {
        return argmax(logits);
    }
    let inv_t = 1.0 / p.temperature;
    let mut rng = ChaCha8Rng::seed_from_u64(mix(p.seed.unwrap_or(fallback_seed), p.stream_offset + index));
    let k = if p.top_k == 0 { logits.len() } else { (p.top_k as usize).min(logits.len()) };
    let filtered = k < logits.len() || p.top_p < 1.0 || p.min_p > 0.0;
    if !filtered {
        // Plain softmax sampling by inverse CDF in vocabulary order.
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let weights: Vec<f32> = logits.iter().map(|&x| ((x - max) * inv_t).exp()).collect();
        let total: f32 = weights.iter().sum();
        let mut r = rng.random_range(0.0..total.max(f32::MIN_POSITIVE));
        for (i, w) in weights.iter().enumerate() {
            if r < *w {
                return i as TokenId;
            }
            r -= w;
        }
        return argmax(logits);
    }
    let mut idx = most_likely(logits, k);
    let max = logits[idx[0] as usize];
    let mut probs: Vec<f32> = idx.iter().map(|&i| ((logits[i as usize] - max) * inv_t).exp()).collect();
    if p.min_p > 0.0 {
        // Relative to the most likely token (probs[0] = 1 before normalising), as vLLM.
        let keep = probs.iter().position(|&x| x < p.min_p).unwrap_or(probs.len()).max(1);
        probs.truncate(keep);
        idx.truncate(keep);
    }
    let total: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|x| *x /= total);
    if p.top_p < 1.0 {
        let mut cum = 0.0;
        let keep = probs
            .iter()
            .position(|&x| {
                cum += x;
                cum >= p.top_p
            })
            .map_or(probs.len(), |i| i + 1);
        probs.truncate(keep);
        idx.truncate(keep);
    }
    let total: f32 = probs.iter().sum();
    let mut r = rng.random_range(0.0..total.max(f32::MIN_POSITIVE));
    for (i, &w) in probs.iter().enumerate() {
        if r < w {
            return idx[i];
        }
        r -= w;
    }
    idx[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_k: u32, top_p: f32, seed: Option<u64>) -> SamplerParams {
        SamplerParams { temperature, top_k, top_p, seed, ..SamplerParams::default() }
    }

    #[test]
    fn min_p_keeps_only_tokens_near_the_most_likely() {
        // At temperature 1, logits [2, 2 − ln 2, 2 − ln 4, 0]: probabilities relative to the
        // best are 1, 0.5, 0.25, e^−2 ≈ 0.14. min_p 0.3 keeps tokens 0 and 1 only; without it,
        // 200 draws reach token 2 or 3 too.
        let logits = [2.0, 2.0 - std::f32::consts::LN_2, 2.0 - 2.0 * std::f32::consts::LN_2, 0.0];
        let draws = |min_p: f32| {
            let p = SamplerParams { min_p, ..params(1.0, 0, 1.0, Some(9)) };
            (0..200).map(|i| sample(&logits, &p, i, 0)).collect::<std::collections::HashSet<_>>()
        };
        assert_eq!(draws(0.3), [0, 1].into_iter().collect());
        assert!(draws(0.0).iter().any(|&t| t >= 2));
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(sample(&[0.1, 3.0, 3.0, -1.0], &params(0.0, 0, 1.0, None), 0, 0), 1);
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        let logits = [0.5, 2.0, 1.9, 0.0];
        for i in 0..20 {
            assert_eq!(sample(&logits, &params(1.0, 1, 1.0, Some(i)), i as usize, 0), 1);
            assert_eq!(sample(&logits, &params(1.0, 0, 0.01, Some(i)), i as usize, 0), 1);
        }
    }

    #[test]
    fn same_seed_same_tokens_and_the_distribution_follows_the_logits() {
        let logits = [0.0f32, (3.0f32).ln()]; // probabilities 1/4 and 3/4
        let p = params(1.0, 0, 1.0, Some(42));
        let a: Vec<_> = (0..2000).map(|i| sample(&logits, &p, i, 0)).collect();
        let b: Vec<_> = (0..2000).map(|i| sample(&logits, &p, i, 0)).collect();
        assert_eq!(a, b, "seeded sampling is reproducible");
        let ones = a.iter().filter(|&&t| t == 1).count() as f64 / 2000.0;
        assert!((ones - 0.75).abs() < 0.04, "P(1) ≈ 0.75, got {ones}");
        let other: Vec<_> = (0..2000).map(|i| sample(&logits, &params(1.0, 0, 1.0, Some(43)), i, 0)).collect();
        assert_ne!(a, other, "another seed, another stream");
    }

    #[test]
    fn logprobs_are_the_log_softmax_with_the_top_tokens_first() {
        // logits ln 1, ln 2, ln 3, ln 2: probabilities 1/8, 2/8, 3/8, 2/8.
        let logits = [0.0, 2f32.ln(), 3f32.ln(), 2f32.ln()];
        let lp = token_logprobs(&logits, 1, 3);
        assert_eq!(lp.token, 1);
        assert!((lp.logprob - 0.25f32.ln()).abs() < 1e-6);
        let ids: Vec<u32> = lp.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, vec![2, 1, 3], "3/8 first, then the 2/8 pair by id");
        assert!((lp.top[0].1 - 0.375f32.ln()).abs() < 1e-6);
        assert!(token_logprobs(&logits, 0, 0).top.is_empty());
        assert_eq!(token_logprobs(&logits, 0, 10).top.len(), 4, "at most the vocabulary");
    }

    #[test]
    fn a_continuation_goes_on_with_the_same_stream() {
        // Tokens 0..40 in one go = tokens 0..25, then a continuation with offset 25 whose own
        // indices restart at 0.
        let logits = [0.3, 0.1, 0.5, 0.2, 0.0];
        let p = params(1.0, 0, 1.0, Some(9));
        let whole: Vec<_> = (0..40).map(|i| sample(&logits, &p, i, 0)).collect();
        let cont = SamplerParams { stream_offset: 25, ..p };
        let split: Vec<_> =
            (0..25).map(|i| sample(&logits, &p, i, 0)).chain((0..15).map(|i| sample(&logits, &cont, i, 0))).collect();
        assert_eq!(whole, split);
        let restarted: Vec<_> =
            (0..25).map(|i| sample(&logits, &p, i, 0)).chain((0..15).map(|i| sample(&logits, &p, i, 0))).collect();
        assert_ne!(whole, restarted, "without the offset the stream would repeat");
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // probabilities ≈ 0.665, 0.245, 0.09: top_p 0.8 keeps the first two only.
        let logits = [2.0, 1.0, 0.0];
        let seen: std::collections::HashSet<_> =
            (0..500).map(|i| sample(&logits, &params(1.0, 0, 0.8, Some(7)), i, 0)).collect();
        assert_eq!(seen, [0, 1].into_iter().collect());
    }
}
