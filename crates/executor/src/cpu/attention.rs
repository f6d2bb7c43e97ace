//! Causal attention over the paged cache for one sequence's fed tokens (prefill chunk or decode
//! token), with grouped-query heads. Each token attends to every cached position up to its own,
//! read through the block table — PagedAttention's access pattern, on the CPU.
//!
//! Scores are computed a block at a time against the cache's channel-major keys: one lane per
//! key position, each lane summing `q[e]·k[e]` over the head's channels in order with fused
//! multiply-adds — no horizontal sums, and the same operations whatever the block size. The
//! softmax and the weighted sum of values run over key positions in ascending order. So a
//! token's result does not depend on which other sequences share the step, on how its prompt was
//! chunked, on the block size or on which thread ran it: the basis of batch invariance. On x86-64 with AVX2 and FMA (x86-64-v3) a variant compiled for those features is
//! chosen at run time; other machines run the portable one.

use tandem_core::BlockId;

use super::kv_cache::KvView;

/// Cephes' `expf` polynomial (degree 6 on `r ∈ [−ln2/2, ln2/2]`, ~1 ulp) and its range
/// reduction `x = n·ln2 + r`, `ln2` split in two so that `n·ln2_hi` is exact.
pub(super) const EXP_POLY: [f32; 6] =
    [1.987_569_2e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];
pub(super) const LN2_HI: f32 = 0.693_359_4;
pub(super) const LN2_LO: f32 = -2.121_944_4e-4;
/// `1.5 · 2²³`: adding it rounds an `f32` below 2²² to an integer (to nearest, ties to even).
pub(super) const ROUND: f32 = 12_582_912.0;
/// Below this, `exp` is under 2⁻¹²⁵ (a softmax weight of nothing next to the maximum's 1).
pub(super) const EXP_FLOOR: f32 = -87.0;

/// `exp(x)` for softmax arguments (`x ≤ 0`, the row's maximum subtracted): the same operations,
/// in the same order, as one lane of [`softmax_exp_avx2`], so the two give the same bits.
#[inline(always)]
fn exp_neg<const FMA: bool>(x: f32) -> f32 {
    // The activation's exponential: its ceiling never applies to a softmax argument (x ≤ 0).
    super::activation::exp_clamped::<FMA>(x)
}

/// `row[j] = exp(row[j] − max)` in place; returns their sum, added in eight interleaved
/// partial sums (element `j` into sum `j mod 8`) combined pairwise — the order the AVX2
/// variant's lanes add in.
#[inline(always)]
fn softmax_exp<const FMA: bool>(row: &mut [f32], max: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: the FMA variant runs only inside `attend_avx2`, after `has_avx2_fma`.
        return unsafe { softmax_exp_avx2(row, max) };
    }
    let mut sums = [0.0f32; 8];
    for (j, x) in row.iter_mut().enumerate() {
        *x = exp_neg::<FMA>(*x - max);
        sums[j % 8] += *x;
    }
    pairwise(sums)
}

/// `((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))`.
#[inline(always)]
fn pairwise(s: [f32; 8]) -> f32 {
    ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))
}

/// [`softmax_exp`] eight lanes at a time.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(super) unsafe fn softmax_exp_avx2(row: &mut [f32], max: f32) -> f32 {
    // SAFETY: the caller's CPU has AVX2 and FMA.
    unsafe { pairwise(softmax_exp_avx2_sums(row, max, std::arch::x86_64::_mm256_setzero_ps())) }
}

/// [`softmax_exp_avx2`] continuing eight partial sums `acc` (element `j` of `row` into sum
/// `j mod 8`): the partial sums after `row`, not yet combined.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(super) unsafe fn softmax_exp_avx2_sums(row: &mut [f32], max: f32, mut acc: std::arch::x86_64::__m256) -> [f32; 8] {
    use std::arch::x86_64::*;
    let vmax = _mm256_set1_ps(max);
    let mut chunks = row.chunks_exact_mut(8);
    for c in &mut chunks {
        let e = super::activation::exp256(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), vmax));
        _mm256_storeu_ps(c.as_mut_ptr(), e);
        acc = _mm256_add_ps(acc, e);
    }
    let mut sums = [0.0f32; 8];
    _mm256_storeu_ps(sums.as_mut_ptr(), acc);
    for (l, x) in chunks.into_remainder().iter_mut().enumerate() {
        *x = exp_neg::<true>(*x - max);
        sums[l] += *x;
    }
    sums
}

/// `o += w · v`, element-wise.
#[inline(always)]
fn axpy_impl<const FMA: bool>(o: &mut [f32], w: f32, v: &[f32]) {
    for (ov, vv) in o.iter_mut().zip(v) {
        *ov = if FMA { w.mul_add(*vv, *ov) } else { *ov + w * vv };
    }
}

/// `o += Σ_slot (w[slot]·inv) · v[slot]` over one block's value rows (`values[slot·stride +
/// offset ..][..o.len()]`), slot after slot — the same operations per element as repeated
/// [`axpy_impl`], so the same result; for 64-wide heads on AVX2 the accumulators stay in
/// registers across the block instead of going through memory at every slot.
#[inline(always)]
fn weighted_sum<const FMA: bool>(o: &mut [f32], w: &[f32], inv: f32, values: &[f32], stride: usize, offset: usize) {
    #[cfg(target_arch = "x86_64")]
    if FMA && o.len() == 64 && values.len() >= (w.len().max(1) - 1) * stride + offset + 64 {
        // SAFETY: the FMA variant runs only inside `attend_avx2`, after `has_avx2_fma`; the
        // bounds were checked above.
        return unsafe { weighted_sum_avx2_64(o, w, inv, values, stride, offset) };
    }
    for (slot, &ws) in w.iter().enumerate() {
        axpy_impl::<FMA>(o, ws * inv, &values[slot * stride + offset..slot * stride + offset + o.len()]);
    }
}

/// [`weighted_sum`] for `o.len() == 64`: eight 8-lane accumulators.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `values` must hold `(w.len() − 1)·stride + offset + 64`
/// values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn weighted_sum_avx2_64(o: &mut [f32], w: &[f32], inv: f32, values: &[f32], stride: usize, offset: usize) {
    use std::arch::x86_64::*;
    let op = o.as_mut_ptr();
    let mut acc = [_mm256_setzero_ps(); 8];
    for (i, a) in acc.iter_mut().enumerate() {
        *a = _mm256_loadu_ps(op.add(i * 8));
    }
    let vp = values.as_ptr().add(offset);
    for (slot, &ws) in w.iter().enumerate() {
        let wb = _mm256_set1_ps(ws * inv);
        let row = vp.add(slot * stride);
        for (i, a) in acc.iter_mut().enumerate() {
            *a = _mm256_fmadd_ps(wb, _mm256_loadu_ps(row.add(i * 8)), *a);
        }
    }
    for (i, a) in acc.iter().enumerate() {
        _mm256_storeu_ps(op.add(i * 8), *a);
    }
}

/// Shapes for one call.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Whether this CPU runs the AVX2+FMA kernel (x86-64-v3); checked once.
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The attention kernel this CPU runs, for reports.
pub fn kernel_name() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if super::attention_avx512::handles(super::attention_avx512::BLOCK, 64) {
        return "attention: AVX-512 (16-token blocks; AVX2+FMA otherwise)";
    }
    if has_avx2_fma() {
        "attention: AVX2+FMA"
    } else {
        "attention: portable (no AVX2+FMA)"
    }
}

/// One sequence's attention call: `n` fed tokens at positions `start..start + n`, their
/// queries `q` (`n × heads × head_dim`), read through `table` in layer `layer` of `cache`, for
/// the query heads of KV heads `kv_heads` (all of them, or a share, so that one decode token's
/// heads can run on several cores).
#[derive(Clone)]
pub struct AttnCall<'a> {
    pub cache: &'a KvView<'a>,
    pub layer: usize,
    pub table: &'a [BlockId],
    pub start: usize,
    pub q: &'a [f32],
    pub shape: AttnShape,
    pub kv_heads: std::ops::Range<usize>,
}

/// Writes the attention output of `call` into `out` (`n × (query heads of call.kv_heads) ×
/// head_dim`: the layout of `q` when `kv_heads` is all of them). The cache must already
/// hold K/V for every position up to `start + n − 1`. Runs the AVX2+FMA kernel where the CPU has
/// it (chosen at run time, so the binary still runs on a plain x86-64 machine).
pub fn attend_sequence(call: AttnCall<'_>, out: &mut [f32], scores: &mut Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    if super::attention_avx512::handles(call.cache.block_size(), call.shape.head_dim) {
        // SAFETY: `handles` checked the CPU's features and the call's shape.
        unsafe { super::attention_avx512::attend(call, out, scores) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        unsafe { attend_avx2(call, out, scores) };
        return;
    }
    attend_impl::<false>(call, out, scores)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2(call: AttnCall<'_>, out: &mut [f32], scores: &mut Vec<f32>) {
    attend_impl::<true>(call, out, scores)
}

/// `row[l] = scale · Σ_e q[e] · keys[e·BS + l]` for the `BS` key positions of one block
/// (`keys` channel-major), each lane accumulating over `e` in order.
#[inline(always)]
fn block_scores_n<const FMA: bool, const BS: usize>(q: &[f32], keys: &[f32], row: &mut [f32], scale: f32) {
    let mut acc = [0.0f32; BS];
    for (e, &qe) in q.iter().enumerate() {
        let k = &keys[e * BS..(e + 1) * BS];
        for l in 0..BS {
            acc[l] = if FMA { qe.mul_add(k[l], acc[l]) } else { acc[l] + qe * k[l] };
        }
    }
    for (r, a) in row.iter_mut().zip(acc) {
        *r = a * scale;
    }
}

/// [`block_scores_n`] with AVX2 vectors, `V` of them (block size `8·V`): the same fused
/// multiply-add per lane in the same order, written out because LLVM vectorizes the array form
/// into scalar and 128-bit FMAs.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn block_scores_avx2<const V: usize>(q: &[f32], keys: &[f32], row: &mut [f32], scale: f32) {
    use std::arch::x86_64::*;
    let bs = 8 * V;
    assert!(keys.len() >= q.len() * bs && row.len() == bs, "block shapes");
    let mut acc = [_mm256_setzero_ps(); V];
    let kp = keys.as_ptr();
    for (e, &qe) in q.iter().enumerate() {
        let qb = _mm256_set1_ps(qe);
        for (v, a) in acc.iter_mut().enumerate() {
            *a = _mm256_fmadd_ps(qb, _mm256_loadu_ps(kp.add(e * bs + v * 8)), *a);
        }
    }
    let sc = _mm256_set1_ps(scale);
    for (v, a) in acc.iter().enumerate() {
        _mm256_storeu_ps(row.as_mut_ptr().add(v * 8), _mm256_mul_ps(*a, sc));
    }
}

/// [`block_scores_n`] for any block size (same operations per lane).
#[inline(always)]
fn block_scores<const FMA: bool>(q: &[f32], keys: &[f32], row: &mut [f32], scale: f32) {
    let bs = row.len();
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: the FMA variant runs only inside `attend_avx2`, after `has_avx2_fma`.
        match bs {
            8 => return unsafe { block_scores_avx2::<1>(q, keys, row, scale) },
            16 => return unsafe { block_scores_avx2::<2>(q, keys, row, scale) },
            32 => return unsafe { block_scores_avx2::<4>(q, keys, row, scale) },
            _ => {}
        }
    }
    match bs {
        16 => block_scores_n::<FMA, 16>(q, keys, row, scale),
        32 => block_scores_n::<FMA, 32>(q, keys, row, scale),
        8 => block_scores_n::<FMA, 8>(q, keys, row, scale),
        _ => {
            for (l, r) in row.iter_mut().enumerate() {
                let mut acc = 0.0f32;
                for (e, &qe) in q.iter().enumerate() {
                    let k = keys[e * bs + l];
                    acc = if FMA { qe.mul_add(k, acc) } else { acc + qe * k };
                }
                *r = acc * scale;
            }
        }
    }
}

/// Every query head of a group against one block: row `g` of `scores` (stride `padded`) gets
/// [`block_scores`] of query `g` of `qg` (`heads × d`) at `off..off + block size`. On AVX2 with
/// 16-token blocks and groups of 2–4, one pass loads each key vector once for all the group's
/// queries (each lane's operations unchanged, so the same results); otherwise head by head.
#[inline(always)]
fn group_scores<const FMA: bool>(
    qg: &[f32],
    d: usize,
    keys: &[f32],
    scores: &mut [f32],
    padded: usize,
    off: usize,
    scale: f32,
) {
    let group = qg.len() / d;
    let bs = keys.len() / d;
    #[cfg(target_arch = "x86_64")]
    if FMA && bs == 16 && keys.len() == d * 16 && scores.len() >= (group.max(1) - 1) * padded + off + 16 {
        // SAFETY: the FMA variant runs only inside `attend_avx2`, after `has_avx2_fma`; the
        // shapes were checked above.
        match group {
            2 => return unsafe { group_scores_avx2_16::<2>(qg, d, keys, scores, padded, off, scale) },
            3 => return unsafe { group_scores_avx2_16::<3>(qg, d, keys, scores, padded, off, scale) },
            4 => return unsafe { group_scores_avx2_16::<4>(qg, d, keys, scores, padded, off, scale) },
            _ => {}
        }
    }
    for g in 0..group {
        block_scores::<FMA>(&qg[g * d..(g + 1) * d], keys, &mut scores[g * padded + off..g * padded + off + bs], scale);
    }
}

/// [`group_scores`] for `G` queries and 16-token blocks: `2·G` accumulators.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `keys` is `d × 16`, `qg` is `G × d`, and `scores` holds
/// `(G − 1)·padded + off + 16` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn group_scores_avx2_16<const G: usize>(
    qg: &[f32],
    d: usize,
    keys: &[f32],
    scores: &mut [f32],
    padded: usize,
    off: usize,
    scale: f32,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; G];
    let (kp, qp) = (keys.as_ptr(), qg.as_ptr());
    for e in 0..d {
        let k0 = _mm256_loadu_ps(kp.add(e * 16));
        let k1 = _mm256_loadu_ps(kp.add(e * 16 + 8));
        for (g, a) in acc.iter_mut().enumerate() {
            let qb = _mm256_set1_ps(*qp.add(g * d + e));
            a[0] = _mm256_fmadd_ps(qb, k0, a[0]);
            a[1] = _mm256_fmadd_ps(qb, k1, a[1]);
        }
    }
    let sc = _mm256_set1_ps(scale);
    for (g, a) in acc.iter().enumerate() {
        let row = scores.as_mut_ptr().add(g * padded + off);
        _mm256_storeu_ps(row, _mm256_mul_ps(a[0], sc));
        _mm256_storeu_ps(row.add(8), _mm256_mul_ps(a[1], sc));
    }
}

#[inline(always)]
pub(super) fn attend_impl<const FMA: bool>(call: AttnCall<'_>, out: &mut [f32], scores: &mut Vec<f32>) {
    let AttnCall { cache, layer, table, start, q, shape: s, kv_heads } = call;
    let d = s.head_dim;
    let bs = cache.block_size();
    let kv_dim = s.kv_heads * d;
    let group = s.heads / s.kv_heads;
    let scale = 1.0 / (d as f32).sqrt();
    let n = q.len() / (s.heads * d);
    // Output rows hold the query heads of `kv_heads` only.
    let (h0, out_heads) = (kv_heads.start * group, kv_heads.len() * group);
    // Every query of the call against each key (then value) block in one pass, so that a
    // prefill chunk reads the cache once rather than once per token; query `i` sees the blocks
    // below its context `start + i + 1` (block `b` from query `b·bs − start` on). Each (query,
    // head) row's operations and their order are those of the query alone: scores lane by lane,
    // the softmax over its own context, the weighted sum over its blocks in order.
    let blocks = &table[..(start + n).div_ceil(bs)];
    let padded = blocks.len() * bs;
    let rows = n * group;
    let first_seeing = |b: usize| (b * bs).saturating_sub(start).min(n);
    let mut inv = vec![0.0f32; rows];
    for kvh in kv_heads.clone() {
        scores.clear();
        scores.resize(rows * padded, 0.0);
        for (b, &block) in blocks.iter().enumerate() {
            let keys = &cache.key_block(layer, block)[kvh * d * bs..(kvh + 1) * d * bs];
            for i in first_seeing(b)..n {
                // The group's queries, contiguous: heads kvh·group .. (kvh + 1)·group of token i.
                let qg = &q[(i * s.heads + kvh * group) * d..(i * s.heads + (kvh + 1) * group) * d];
                let mine = &mut scores[i * group * padded..(i + 1) * group * padded];
                group_scores::<FMA>(qg, d, keys, mine, padded, b * bs, scale);
            }
        }
        for (r, inv) in inv.iter_mut().enumerate() {
            let ctx = start + r / group + 1;
            let row = &mut scores[r * padded..r * padded + ctx];
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            *inv = 1.0 / softmax_exp::<FMA>(row, max);
        }
        let head_out = |i: usize, g: usize| (i * out_heads + kvh * group + g - h0) * d;
        for i in 0..n {
            for g in 0..group {
                out[head_out(i, g)..head_out(i, g) + d].fill(0.0);
            }
        }
        for (b, &block) in blocks.iter().enumerate() {
            let values = cache.value_block(layer, block);
            for i in first_seeing(b)..n {
                let ctx = start + i + 1;
                for g in 0..group {
                    let r = i * group + g;
                    let weights = &scores[r * padded + b * bs..r * padded + ctx.min((b + 1) * bs)];
                    let o = &mut out[head_out(i, g)..head_out(i, g) + d];
                    weighted_sum::<FMA>(o, weights, inv[r], values, kv_dim, kvh * d);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::PagedKvCache;

    #[test]
    fn one_key_gives_its_value_and_two_equal_keys_average() {
        // 1 head, dim 2, 1-token blocks.
        let s = AttnShape { heads: 1, kv_heads: 1, head_dim: 2 };
        let mut c = PagedKvCache::new(1, 2, 1, 2, 0);
        let table = [BlockId(0), BlockId(1)];
        c.write(0, &table, 0, &[1.0, 0.0], &[10.0, 20.0]);
        let mut out = vec![0.0; 2];
        let mut scratch = Vec::new();
        attend_sequence(
            AttnCall { cache: &c.view(), layer: 0, table: &table, start: 0, q: &[1.0, 1.0], shape: s, kv_heads: 0..1 },
            &mut out,
            &mut scratch,
        );
        assert_eq!(out, vec![10.0, 20.0]); // softmax of one score is 1
        c.write(0, &table, 1, &[1.0, 0.0], &[30.0, 40.0]);
        attend_sequence(
            AttnCall { cache: &c.view(), layer: 0, table: &table, start: 1, q: &[1.0, 1.0], shape: s, kv_heads: 0..1 },
            &mut out,
            &mut scratch,
        );
        assert_eq!(out, vec![20.0, 30.0]); // equal scores: the mean of the two values
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    /// Attention of `n` tokens at `start..start + n` over `ctx` cached tokens, with `bs`-token
    /// blocks laid out in reverse order in the pool (so tables are not the identity).
    fn run(bs: usize, k: &[f32], v: &[f32], q: &[f32], start: usize, shape: AttnShape) -> Vec<f32> {
        let kv_dim = shape.kv_heads * shape.head_dim;
        let ctx = k.len() / kv_dim;
        let blocks = ctx.div_ceil(bs);
        let mut c = PagedKvCache::new(1, kv_dim, bs, blocks, 0);
        let table: Vec<BlockId> = (0..blocks as u32).rev().map(BlockId).collect();
        for p in 0..ctx {
            c.write(0, &table, p, &k[p * kv_dim..(p + 1) * kv_dim], &v[p * kv_dim..(p + 1) * kv_dim]);
        }
        let mut out = vec![0.0; q.len()];
        attend_sequence(
            AttnCall { cache: &c.view(), layer: 0, table: &table, start, q, shape, kv_heads: 0..shape.kv_heads },
            &mut out,
            &mut Vec::new(),
        );
        out
    }

    #[test]
    fn matches_a_naive_softmax_and_does_not_depend_on_the_block_size() {
        // 4 query heads sharing 2 KV heads of dim 16; 37 cached tokens; the last 3 are queried.
        let shape = AttnShape { heads: 4, kv_heads: 2, head_dim: 16 };
        let (ctx, n, d) = (37, 3, 16);
        let (k, v, q) = (values(ctx * 32, 1), values(ctx * 32, 2), values(n * 64, 3));
        let start = ctx - n;
        let by16 = run(16, &k, &v, &q, start, shape);
        for bs in [1, 4, 5, 8, 32] {
            assert_eq!(run(bs, &k, &v, &q, start, shape), by16, "block size {bs}");
        }
        // Naive reference in f64: token i (position start + i) sees positions 0..=start + i.
        for i in 0..n {
            for h in 0..4 {
                let kvh = h / 2;
                let qh = &q[(i * 4 + h) * d..(i * 4 + h + 1) * d];
                let seen = start + i + 1;
                let scores: Vec<f64> = (0..seen)
                    .map(|p| {
                        let kp = &k[p * 32 + kvh * d..p * 32 + (kvh + 1) * d];
                        qh.iter().zip(kp).map(|(a, b)| (*a as f64) * (*b as f64)).sum::<f64>() / (d as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = w.iter().sum();
                for e in 0..d {
                    let want: f64 = (0..seen).map(|p| w[p] / sum * v[p * 32 + kvh * d + e] as f64).sum();
                    let got = by16[(i * 4 + h) * d + e] as f64;
                    assert!((got - want).abs() < 1e-5, "token {i} head {h} dim {e}: {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn the_softmax_exponential_is_within_two_ulps_and_lanes_equal_the_scalar_form() {
        // exp(0) = 1 exactly (n = 0, r = 0); elsewhere against f64 over the range softmax uses.
        assert_eq!(exp_neg::<true>(0.0), 1.0);
        assert_eq!(exp_neg::<false>(0.0), 1.0);
        for i in 0..=8700 {
            let x = -(i as f32) * 0.01;
            let want = (x as f64).exp();
            for got in [exp_neg::<true>(x), exp_neg::<false>(x)] {
                assert!(((got as f64) - want).abs() <= 2.5e-7 * want, "exp({x}) = {got}, want {want}");
            }
        }
        assert!(exp_neg::<true>(-1e4) < 1e-37, "far below the floor is ~0");
        if !has_avx2_fma() {
            eprintln!("SKIPPED the AVX2 half of the exponential test: this CPU lacks AVX2+FMA");
            return;
        }
        // 21 values: two full 8-lane chunks and a 5-value tail; the sum in the same order.
        let row: Vec<f32> = (0..21).map(|j| -0.37 * j as f32 + 1.5).collect();
        let (mut fast, mut scalar) = (row.clone(), row.clone());
        // SAFETY: checked above.
        let sum_fast = unsafe { softmax_exp_avx2(&mut fast, 1.5) };
        let mut sums = [0.0f32; 8];
        for (j, x) in scalar.iter_mut().enumerate() {
            *x = exp_neg::<true>(*x - 1.5);
            sums[j % 8] += *x;
        }
        assert_eq!(fast, scalar);
        assert_eq!(sum_fast, pairwise(sums));
    }

    #[test]
    fn the_avx2_kernel_agrees_with_the_portable_one() {
        // The same call through both variants: the AVX2 one fuses multiply-adds, the portable
        // one rounds each product, so they agree to float rounding, not bit for bit (a machine
        // runs one of them for every step, so each machine's results stay batch invariant).
        if !has_avx2_fma() {
            eprintln!("SKIPPED the_avx2_kernel_agrees_with_the_portable_one: this CPU lacks AVX2+FMA");
            return;
        }
        let shape = AttnShape { heads: 6, kv_heads: 2, head_dim: 64 };
        let (ctx, n) = (70, 5);
        let kv_dim = 2 * 64;
        let (k, v, q) = (values(ctx * kv_dim, 7), values(ctx * kv_dim, 8), values(n * 6 * 64, 9));
        for bs in [16, 5] {
            let blocks = ctx.div_ceil(bs);
            let mut c = PagedKvCache::new(1, kv_dim, bs, blocks, 0);
            let table: Vec<BlockId> = (0..blocks as u32).rev().map(BlockId).collect();
            for p in 0..ctx {
                c.write(0, &table, p, &k[p * kv_dim..(p + 1) * kv_dim], &v[p * kv_dim..(p + 1) * kv_dim]);
            }
            let call =
                AttnCall { cache: &c.view(), layer: 0, table: &table, start: ctx - n, q: &q, shape, kv_heads: 0..2 };
            let (mut fast, mut portable) = (vec![0.0; q.len()], vec![0.0; q.len()]);
            attend_sequence(call.clone(), &mut fast, &mut Vec::new());
            attend_impl::<false>(call, &mut portable, &mut Vec::new());
            assert_ne!(fast, vec![0.0; q.len()]);
            for (i, (a, b)) in fast.iter().zip(&portable).enumerate() {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "block size {bs}, element {i}: {a} vs {b}");
            }
        }
    }
}
