//! The prefill attention loop on AVX-512 (16-lane vectors, 32 registers) for 16-token KV blocks:
//! the same arithmetic as [`super::attention`]'s AVX2 kernel, lane for lane and in the same
//! order, with more of a call's rows in registers at once.
//!
//! - **Scores**: a 16-token key block is one vector per channel; up to [`SCORE_ROWS`] (token,
//!   query head) rows are scored against it in one pass, so each key vector is loaded once for
//!   them all and the pass has that many independent chains of fused multiply-adds (the AVX2
//!   kernel scored one token's 2–4 heads a pass: 6 chains, fewer than two FMA units of
//!   4-cycle latency keep busy).
//! - **Weighted sum of V**: the query heads sharing a KV head read the same value rows, so up to
//!   [`VALUE_ROWS`] rows (all of a token's heads, or of several tokens' with the same number of
//!   visible slots) accumulate a block's values in registers together: each value vector is
//!   loaded once for them all (the AVX2 kernel reloaded it per head, a load per multiply-add).
//!
//! Each lane still computes `acc = fma(q[e], k[e], acc)` over channels in order from zero then
//! one multiply by the scale, and `o = fma(w·inv, v, o)` over positions in order — the AVX2
//! kernel's operations — so this variant's results are those bits exactly (tested), and batch
//! and chunking invariance carry over. Flash-attention's online softmax would also keep scores
//! out of memory but changes each row's arithmetic with its tiling; it is not used.

use std::arch::x86_64::*;

use super::attention::{softmax_exp_avx2_sums, AttnCall};

/// Positions per KV block this kernel handles (one 16-lane vector).
pub(super) const BLOCK: usize = 16;
/// Most (token, head) rows scored against a key block per pass: 12 accumulators.
const SCORE_ROWS: usize = 12;
/// Most vector registers the weighted sum's accumulators take (`rows × head_dim / 16`).
const VALUE_REGS: usize = 24;
/// Most rows a weighted-sum pass takes, for small heads.
const VALUE_ROWS: usize = 8;

/// Whether this CPU runs this kernel (AVX-512F besides AVX2 and FMA); checked once.
pub(super) fn has_avx512() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx512f") && super::attention::has_avx2_fma())
}

/// `super::attention::softmax_exp_avx2` sixteen lanes at a time: each lane's exponential is
/// the same operations, and each 16-value chunk's two halves are added into the eight partial
/// sums one after the other — element `j` into sum `j mod 8` in the 8-lane kernel's order — so
/// the values and the sum are its bits.
///
/// # Safety
/// The CPU must have AVX-512F, AVX2 and FMA.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn softmax_exp(row: &mut [f32], max: f32) -> f32 {
    let vmax = _mm512_set1_ps(max);
    let mut acc = _mm256_setzero_ps();
    let whole = row.len() - row.len() % 16;
    for c in row[..whole].chunks_exact_mut(16) {
        // SAFETY: a chunk is 16 values.
        let e = super::activation::exp512(_mm512_sub_ps(unsafe { _mm512_loadu_ps(c.as_ptr()) }, vmax));
        // SAFETY: as for the load.
        unsafe { _mm512_storeu_ps(c.as_mut_ptr(), e) };
        acc = _mm256_add_ps(acc, _mm512_castps512_ps256(e));
        acc = _mm256_add_ps(acc, _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(e))));
    }
    // SAFETY: the CPU has AVX2 and FMA; the rest starts at a multiple of 8.
    let s = unsafe { softmax_exp_avx2_sums(&mut row[whole..], max, acc) };
    ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))
}

/// Whether a call of this shape runs here (16-token blocks, heads of 32, 64 or 128 channels).
pub(super) fn handles(block_size: usize, head_dim: usize) -> bool {
    block_size == BLOCK && matches!(head_dim, 32 | 64 | 128) && has_avx512()
}

/// [`super::attention::attend_sequence`] for a call [`handles`] accepts.
///
/// # Safety
/// The CPU must have AVX-512F, AVX2 and FMA ([`has_avx512`]); `call` must be a shape
/// [`handles`] accepts.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn attend(call: AttnCall<'_>, out: &mut [f32], scores: &mut Vec<f32>) {
    let AttnCall { cache, layer, table, start, q, shape: s, kv_heads } = call;
    let d = s.head_dim;
    let kv_dim = s.kv_heads * d;
    let group = s.heads / s.kv_heads;
    let scale = 1.0 / (d as f32).sqrt();
    let n = q.len() / (s.heads * d);
    let (h0, out_heads) = (kv_heads.start * group, kv_heads.len() * group);
    let blocks = &table[..(start + n).div_ceil(BLOCK)];
    let padded = blocks.len() * BLOCK;
    let rows = n * group;
    // Row r is token r / group's query head r % group of the KV head; it sees the positions
    // below its context, and block b from token b·16 − start on.
    let ctx = |r: usize| start + r / group + 1;
    let first_row = |b: usize| (b * BLOCK).saturating_sub(start).min(n) * group;
    let query = |kvh: usize, r: usize| q.as_ptr().add(((r / group) * s.heads + kvh * group + r % group) * d);
    let out_row = |kvh: usize, r: usize| ((r / group) * out_heads + kvh * group + r % group - h0) * d;
    for kvh in kv_heads.clone() {
        scores.clear();
        scores.resize(rows * padded, 0.0);
        let sp = scores.as_mut_ptr();
        let keys_of = |b: usize| cache.key_block(layer, blocks[b])[kvh * d * BLOCK..(kvh + 1) * d * BLOCK].as_ptr();
        let mut b = 0;
        while b < blocks.len() {
            // Few rows (a decode token's heads): several key blocks a pass instead, so the pass
            // still has up to 12 independent chains; each block's lanes are computed as alone.
            if rows <= MULTI_BLOCK_ROWS && first_row(b) == 0 {
                let mut n_blocks = 1;
                while n_blocks < blocks_per_pass(rows) && b + n_blocks < blocks.len() && first_row(b + n_blocks) == 0 {
                    n_blocks += 1;
                }
                // Short of a full pass, the last block is scored again into the same place.
                let keys: [*const f32; MAX_BLOCKS] = std::array::from_fn(|j| keys_of(b + j.min(n_blocks - 1)));
                let offsets: [usize; MAX_BLOCKS] = std::array::from_fn(|j| (b + j.min(n_blocks - 1)) * BLOCK);
                let qs: [*const f32; MULTI_BLOCK_ROWS] = std::array::from_fn(|j| query(kvh, j.min(rows - 1)));
                multi_block_pass(rows, &qs, &keys, &offsets, d, sp, padded, scale);
                b += n_blocks;
                continue;
            }
            let keys = keys_of(b);
            let mut r = first_row(b);
            while r < rows {
                let take = SCORE_ROWS.min(rows - r);
                let qs: [*const f32; SCORE_ROWS] = std::array::from_fn(|j| query(kvh, r + j.min(take - 1)));
                score_pass(take, &qs, keys, d, sp.add(r * padded + b * BLOCK), padded, scale);
                r += take;
            }
            b += 1;
        }
        // Softmax per row over its context, then the weights scaled by 1/Σ in place (the
        // product the AVX2 kernel forms per position before multiplying the values).
        for r in 0..rows {
            let row = &mut scores[r * padded..r * padded + ctx(r)];
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let inv = 1.0 / softmax_exp(row, max);
            for w in row.iter_mut() {
                *w *= inv;
            }
        }
        for r in 0..rows {
            out[out_row(kvh, r)..out_row(kvh, r) + d].fill(0.0);
        }
        let sp = scores.as_ptr();
        let op = out.as_mut_ptr();
        let most = (VALUE_REGS / (d / 16)).min(VALUE_ROWS);
        for (b, &block) in blocks.iter().enumerate() {
            let values = cache.value_block(layer, block)[kvh * d..].as_ptr();
            let slots = |r: usize| ctx(r).min((b + 1) * BLOCK) - b * BLOCK;
            let mut r = first_row(b);
            while r < rows {
                // A pass: consecutive rows with the same number of visible slots.
                let n_slots = slots(r);
                let mut take = 1;
                while take < most && r + take < rows && slots(r + take) == n_slots {
                    take += 1;
                }
                let ws: [*const f32; VALUE_ROWS] =
                    std::array::from_fn(|j| sp.add((r + j.min(take - 1)) * padded + b * BLOCK));
                let os: [*mut f32; VALUE_ROWS] = std::array::from_fn(|j| op.add(out_row(kvh, r + j.min(take - 1))));
                value_pass(take, d, &ws, values, kv_dim, n_slots, &os);
                r += take;
            }
        }
    }
}

/// Most rows for which [`attend`] scores several key blocks a pass.
const MULTI_BLOCK_ROWS: usize = 6;
/// Most key blocks a multi-block pass takes.
const MAX_BLOCKS: usize = 4;

/// Key blocks a multi-block pass of `rows` rows takes (at most 12 accumulators).
fn blocks_per_pass(rows: usize) -> usize {
    (SCORE_ROWS / rows).min(MAX_BLOCKS)
}

/// Scores rows `0..rows` (≤ [`MULTI_BLOCK_ROWS`]; queries `qs`) against [`blocks_per_pass`]
/// key blocks (`keys`, their positions `offsets` in each score row of stride `padded` from
/// `scores`).
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn multi_block_pass(
    rows: usize,
    qs: &[*const f32; MULTI_BLOCK_ROWS],
    keys: &[*const f32; MAX_BLOCKS],
    offsets: &[usize; MAX_BLOCKS],
    d: usize,
    scores: *mut f32,
    padded: usize,
    scale: f32,
) {
    match rows {
        1 => score_blocks::<1, 4>(qs, keys, offsets, d, scores, padded, scale),
        2 => score_blocks::<2, 4>(qs, keys, offsets, d, scores, padded, scale),
        3 => score_blocks::<3, 4>(qs, keys, offsets, d, scores, padded, scale),
        4 => score_blocks::<4, 3>(qs, keys, offsets, d, scores, padded, scale),
        5 => score_blocks::<5, 2>(qs, keys, offsets, d, scores, padded, scale),
        _ => score_blocks::<6, 2>(qs, keys, offsets, d, scores, padded, scale),
    }
}

/// `scores[r·padded + offsets[b] + l] = scale · Σ_e qs[r][e] · keys[b][e·16 + l]` for `R` rows
/// and `B` key blocks (`R·B` accumulators), each lane over channels in order: the one scoring
/// kernel of both pass shapes.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn score_blocks<const R: usize, const B: usize>(
    qs: &[*const f32],
    keys: &[*const f32],
    offsets: &[usize],
    d: usize,
    scores: *mut f32,
    padded: usize,
    scale: f32,
) {
    // Fixed lengths, so the loops unroll over the registers.
    let (qs, keys, offsets) = (&qs[..R], &keys[..B], &offsets[..B]);
    let mut acc = [[_mm512_setzero_ps(); R]; B];
    for e in 0..d {
        for (a, k) in acc.iter_mut().zip(keys) {
            let k = _mm512_loadu_ps(k.add(e * BLOCK));
            for (x, q) in a.iter_mut().zip(qs) {
                *x = _mm512_fmadd_ps(_mm512_set1_ps(*q.add(e)), k, *x);
            }
        }
    }
    let sc = _mm512_set1_ps(scale);
    for (a, &off) in acc.iter().zip(offsets) {
        for (r, x) in a.iter().enumerate() {
            _mm512_storeu_ps(scores.add(r * padded + off), _mm512_mul_ps(*x, sc));
        }
    }
}

/// Scores rows `0..take` (queries `qs`; row `j`'s scores at `scores + j·padded`, 16 values)
/// against one key block.
#[target_feature(enable = "avx512f")]
unsafe fn score_pass(
    take: usize,
    qs: &[*const f32; SCORE_ROWS],
    keys: *const f32,
    d: usize,
    scores: *mut f32,
    padded: usize,
    scale: f32,
) {
    let (keys, at) = ([keys], [0]);
    match take {
        12 => score_blocks::<12, 1>(qs, &keys, &at, d, scores, padded, scale),
        11 => score_blocks::<11, 1>(qs, &keys, &at, d, scores, padded, scale),
        10 => score_blocks::<10, 1>(qs, &keys, &at, d, scores, padded, scale),
        9 => score_blocks::<9, 1>(qs, &keys, &at, d, scores, padded, scale),
        8 => score_blocks::<8, 1>(qs, &keys, &at, d, scores, padded, scale),
        7 => score_blocks::<7, 1>(qs, &keys, &at, d, scores, padded, scale),
        6 => score_blocks::<6, 1>(qs, &keys, &at, d, scores, padded, scale),
        5 => score_blocks::<5, 1>(qs, &keys, &at, d, scores, padded, scale),
        4 => score_blocks::<4, 1>(qs, &keys, &at, d, scores, padded, scale),
        3 => score_blocks::<3, 1>(qs, &keys, &at, d, scores, padded, scale),
        2 => score_blocks::<2, 1>(qs, &keys, &at, d, scores, padded, scale),
        _ => score_blocks::<1, 1>(qs, &keys, &at, d, scores, padded, scale),
    }
}

/// `os[r] += Σ_slot ws[r][slot] · values[slot·stride ..][..d]` for rows `0..take`, slots in order.
#[target_feature(enable = "avx512f")]
unsafe fn value_pass(
    take: usize,
    d: usize,
    ws: &[*const f32; VALUE_ROWS],
    values: *const f32,
    stride: usize,
    slots: usize,
    os: &[*mut f32; VALUE_ROWS],
) {
    macro_rules! rows {
        ($c:literal; $($r:literal)+) => {
            match take {
                $($r => value_rows::<$r, $c>(ws, values, stride, slots, os),)+
                _ => value_rows::<1, $c>(ws, values, stride, slots, os),
            }
        };
    }
    match d {
        32 => rows!(2; 8 7 6 5 4 3 2),
        64 => rows!(4; 6 5 4 3 2),
        _ => rows!(8; 3 2),
    }
}

/// [`value_pass`] for `R` rows of `16·C` channels: `R·C` accumulators.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn value_rows<const R: usize, const C: usize>(
    ws: &[*const f32; VALUE_ROWS],
    values: *const f32,
    stride: usize,
    slots: usize,
    os: &[*mut f32; VALUE_ROWS],
) {
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    for (a, o) in acc.iter_mut().zip(os) {
        for (c, v) in a.iter_mut().enumerate() {
            *v = _mm512_loadu_ps(o.add(16 * c));
        }
    }
    for slot in 0..slots {
        let row = values.add(slot * stride);
        let v: [__m512; C] = std::array::from_fn(|c| _mm512_loadu_ps(row.add(16 * c)));
        for (a, w) in acc.iter_mut().zip(ws) {
            let wb = _mm512_set1_ps(*w.add(slot));
            for (x, v) in a.iter_mut().zip(&v) {
                *x = _mm512_fmadd_ps(wb, *v, *x);
            }
        }
    }
    for (a, o) in acc.iter().zip(os) {
        for (c, v) in a.iter().enumerate() {
            _mm512_storeu_ps(o.add(16 * c), *v);
        }
    }
}

#[cfg(test)]
mod tests {
    use tandem_core::BlockId;

    use super::*;
    use crate::cpu::attention::{attend_impl, AttnShape};
    use crate::cpu::q8::test_support::lcg;
    use crate::cpu::PagedKvCache;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        lcg(seed, n)
    }

    #[test]
    fn the_16_lane_softmax_exponential_gives_the_8_lane_bits() {
        if !has_avx512() {
            eprintln!("SKIPPED the_16_lane_softmax_exponential_gives_the_8_lane_bits: this CPU lacks AVX-512F");
            return;
        }
        // Lengths with and without an 8-lane chunk and a scalar tail after the 16-lane ones.
        for len in [0, 5, 8, 16, 21, 29, 37, 64, 100] {
            let row: Vec<f32> = values(len, len as u64 + 7).iter().map(|v| v * 6.0).collect();
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)).max(0.0);
            let (mut wide, mut narrow) = (row.clone(), row.clone());
            // SAFETY: checked above.
            let (sw, sn) =
                unsafe { (softmax_exp(&mut wide, max), super::super::attention::softmax_exp_avx2(&mut narrow, max)) };
            assert_eq!(sw.to_bits(), sn.to_bits(), "sum, {len} values");
            assert_eq!(wide, narrow, "{len} values");
        }
    }

    #[test]
    fn gives_the_avx2_kernels_bits() {
        if !has_avx512() {
            eprintln!("SKIPPED gives_the_avx2_kernels_bits: this CPU lacks AVX-512F");
            return;
        }
        // Group sizes 1–8 (passes of 12 score rows and 3–8 value rows split them unevenly),
        // the three head sizes, a decode token, chunks starting mid-block, a call for one KV
        // head only; blocks laid out in reverse so tables are not the identity.
        // Decode tokens and two-token chunks (6 rows or fewer) take the multi-block passes,
        // the last of them one whose final block only its second token sees.
        let cases: [(usize, usize, usize, usize, usize); 12] = [
            (4, 1, 64, 70, 1),
            (2, 2, 32, 50, 1),
            (6, 2, 128, 31, 2),
            (3, 1, 64, 0, 40),
            (9, 3, 64, 37, 16),
            (9, 3, 64, 100, 1),
            (8, 2, 64, 5, 29),
            (14, 2, 64, 20, 9),
            (16, 2, 128, 31, 17),
            (4, 4, 32, 3, 21),
            (8, 1, 32, 0, 18),
            (12, 4, 128, 64, 3),
        ];
        for (seed, &(heads, kv_heads, d, start, n)) in cases.iter().enumerate() {
            let shape = AttnShape { heads, kv_heads, head_dim: d };
            let kv_dim = kv_heads * d;
            let ctx = start + n;
            let blocks = ctx.div_ceil(BLOCK);
            let mut c = PagedKvCache::new(1, kv_dim, BLOCK, blocks, 0);
            let table: Vec<BlockId> = (0..blocks as u32).rev().map(BlockId).collect();
            let (k, v) = (values(ctx * kv_dim, 3 * seed as u64), values(ctx * kv_dim, 3 * seed as u64 + 1));
            for p in 0..ctx {
                c.write(0, &table, p, &k[p * kv_dim..(p + 1) * kv_dim], &v[p * kv_dim..(p + 1) * kv_dim]);
            }
            let q = values(n * heads * d, 3 * seed as u64 + 2);
            let view = c.view();
            for kv in [0..kv_heads, kv_heads - 1..kv_heads] {
                let call =
                    AttnCall { cache: &view, layer: 0, table: &table, start, q: &q, shape, kv_heads: kv.clone() };
                let len = n * kv.len() * (heads / kv_heads) * d;
                let (mut wide, mut avx2) = (vec![0.0; len], vec![0.0; len]);
                // SAFETY: checked by `has_avx512` (and the shapes are ones `handles` takes).
                unsafe { attend(call.clone(), &mut wide, &mut Vec::new()) };
                attend_impl::<true>(call, &mut avx2, &mut Vec::new());
                assert_ne!(wide, vec![0.0; len]);
                assert_eq!(wide, avx2, "heads {heads}/{kv_heads}, d {d}, start {start}, n {n}, kv heads {kv:?}");
            }
        }
    }
}
