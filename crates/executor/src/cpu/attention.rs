//! Causal attention over the paged cache for one sequence's fed tokens (prefill chunk or decode
//! token), with grouped-query heads. Each token attends to every cached position up to its own,
//! read through the block table — PagedAttention's access pattern, on the CPU.
//!
//! Reductions run in a fixed order (key positions ascending, 8-lane partial sums combined the
//! same way every time), so a token's result does not depend on which other sequences share the
//! step, on how its prompt was chunked, or on which thread ran it: the basis of batch
//! invariance. On x86-64 with AVX2 and FMA (x86-64-v3) a variant compiled for those features is
//! chosen at run time; other machines run the portable one.

use tandem_core::BlockId;

use super::kv_cache::PagedKvCache;

/// Dot product with eight independent partial sums, combined in a fixed order. With `FMA` each
/// step is a fused multiply-add (used only inside the AVX2+FMA variant, where it is one
/// instruction); either way the order of operations is the same for every call on a machine.
#[inline(always)]
fn dot_impl<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] = if FMA { x[l].mul_add(y[l], acc[l]) } else { acc[l] + x[l] * y[l] };
        }
    }
    let mut tail = 0.0;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `o += w · v`, element-wise.
#[inline(always)]
fn axpy_impl<const FMA: bool>(o: &mut [f32], w: f32, v: &[f32]) {
    for (ov, vv) in o.iter_mut().zip(v) {
        *ov = if FMA { w.mul_add(*vv, *ov) } else { *ov + w * vv };
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

/// One sequence's attention call: `n` fed tokens at positions `start..start + n`, their
/// queries `q` (`n × heads × head_dim`), read through `table` in layer `layer` of `cache`.
#[derive(Clone, Copy)]
pub struct AttnCall<'a> {
    pub cache: &'a PagedKvCache,
    pub layer: usize,
    pub table: &'a [BlockId],
    pub start: usize,
    pub q: &'a [f32],
    pub shape: AttnShape,
}

/// Writes the attention output of `call` into `out` (same layout as `q`). The cache must already
/// hold K/V for every position up to `start + n − 1`. Runs the AVX2+FMA kernel where the CPU has
/// it (chosen at run time, so the binary still runs on a plain x86-64 machine).
pub fn attend_sequence(call: AttnCall<'_>, out: &mut [f32], scores: &mut Vec<f32>) {
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

#[inline(always)]
fn attend_impl<const FMA: bool>(call: AttnCall<'_>, out: &mut [f32], scores: &mut Vec<f32>) {
    let AttnCall { cache, layer, table, start, q, shape: s } = call;
    let d = s.head_dim;
    let group = s.heads / s.kv_heads;
    let scale = 1.0 / (d as f32).sqrt();
    let n = q.len() / (s.heads * d);
    for i in 0..n {
        let ctx = start + i + 1;
        for kvh in 0..s.kv_heads {
            scores.clear();
            scores.resize(group * ctx, 0.0);
            for j in 0..ctx {
                let (k, _) = cache.kv_at(layer, table, j);
                let k = &k[kvh * d..(kvh + 1) * d];
                for g in 0..group {
                    let h = kvh * group + g;
                    let qh = &q[(i * s.heads + h) * d..(i * s.heads + h + 1) * d];
                    scores[g * ctx + j] = dot_impl::<FMA>(qh, k) * scale;
                }
            }
            for g in 0..group {
                let row = &mut scores[g * ctx..(g + 1) * ctx];
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                let mut sum = 0.0;
                for x in row.iter_mut() {
                    *x = (*x - max).exp();
                    sum += *x;
                }
                let inv = 1.0 / sum;
                let h = kvh * group + g;
                let o = &mut out[(i * s.heads + h) * d..(i * s.heads + h + 1) * d];
                o.fill(0.0);
                for (j, &w) in row.iter().enumerate() {
                    let (_, v) = cache.kv_at(layer, table, j);
                    axpy_impl::<FMA>(o, w * inv, &v[kvh * d..(kvh + 1) * d]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_the_naive_sum_on_exact_values() {
        let a: Vec<f32> = (0..19).map(|x| x as f32).collect();
        let b = vec![1.0f32; 19];
        // 0 + 1 + ... + 18 = 171, exact in f32 whichever way it is summed.
        assert_eq!(dot_impl::<false>(&a, &b), 171.0);
        assert_eq!(dot_impl::<true>(&a, &b), 171.0);
    }

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
            AttnCall { cache: &c, layer: 0, table: &table, start: 0, q: &[1.0, 1.0], shape: s },
            &mut out,
            &mut scratch,
        );
        assert_eq!(out, vec![10.0, 20.0]); // softmax of one score is 1
        c.write(0, &table, 1, &[1.0, 0.0], &[30.0, 40.0]);
        attend_sequence(
            AttnCall { cache: &c, layer: 0, table: &table, start: 1, q: &[1.0, 1.0], shape: s },
            &mut out,
            &mut scratch,
        );
        assert_eq!(out, vec![20.0, 30.0]); // equal scores: the mean of the two values
    }
}
