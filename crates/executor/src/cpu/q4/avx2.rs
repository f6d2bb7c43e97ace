//! The int4 GEMM tile for x86 CPUs with AVX2 but no AVX-512 VNNI (AMD Zen 2 and 3, Intel's
//! client cores from Haswell on, Skylake-SP servers): llama.cpp's AVX2 `Q4_1 × Q8` dot product — the
//! `vpmaddubsw` of unsigned nibbles by signed int8 activations, widened by a `vpmaddwd` with
//! ones — in this crate's panel layout.
//!
//! `vpmaddubsw` adds two products into a saturating i16 lane; with nibbles `0..=15` and
//! activations in `−127..=127` a lane is at most `2·15·127 = 3810`, so a group's eight such
//! results (four steps, low and high nibbles) sum to at most `30480 < 32767`: the group is summed
//! in i16 without saturating and widened once. The integer sum per group and column is therefore
//! exactly the VNNI kernel's, and the float part is the same two fused multiply-adds in the same
//! order: the same bits as every other int4 kernel (tested).
//!
//! AVX2 has 16 vector registers, not AVX-512VL's 32: a tile of three or four rows runs one
//! 8-column half of the panel at a time (each 32-byte load of nibbles is one half's anyway, so no
//! weight is loaded twice), one or two rows both halves together; the GEMM driver asks for tiles
//! of three rows (`AVX2_MR`: measured faster than four, which spill).

use std::arch::x86_64::*;

use super::super::q8::avx2::store;
use super::{Q4Matrix, QuantRows, GROUP, GROUP_BYTES, MR, NR, STEPS};

/// Whether this CPU runs [`tile`] (AVX2, FMA and F16C).
pub fn available() -> bool {
    super::super::attention::has_avx2_fma() && is_x86_feature_detected!("f16c")
}

/// Rows `row .. row + rows` (at most [`MR`]) of panel `p` into `out` (`rows × NR`).
///
/// # Safety
/// The CPU must have what [`available`] checks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn tile(w: &Q4Matrix, a: &QuantRows, p: usize, row: usize, rows: usize, out: &mut [f32]) {
    debug_assert!(rows <= MR);
    match rows {
        4 => tile_n::<4, 1>(w, a, p, row, out),
        3 => tile_n::<3, 1>(w, a, p, row, out),
        2 => tile_n::<2, 2>(w, a, p, row, out),
        _ => tile_n::<1, 2>(w, a, p, row, out),
    }
}

/// `R` rows, `H` of the panel's two 8-column halves per pass.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_n<const R: usize, const H: usize>(w: &Q4Matrix, a: &QuantRows, p: usize, row: usize, out: &mut [f32]) {
    debug_assert!(out.len() >= R * NR);
    let groups = w.groups;
    let wp = w.nibbles.as_ptr().add(p * groups * GROUP_BYTES) as *const __m256i;
    let meta = p * groups * NR;
    let xrow = |r: usize| a.bytes.as_ptr().add((row + r) * a.k_pad);
    let low = _mm256_set1_epi8(15);
    let ones = _mm256_set1_epi16(1);
    for first in (0..2).step_by(H) {
        let mut facc = [[_mm256_setzero_ps(); H]; R];
        for g in 0..groups {
            let mut iacc = [[_mm256_setzero_si256(); H]; R];
            for s in 0..STEPS {
                let mut lo = [_mm256_setzero_si256(); H];
                let mut hi = [_mm256_setzero_si256(); H];
                for h in 0..H {
                    let wv = _mm256_loadu_si256(wp.add((g * STEPS + s) * 2 + first + h));
                    lo[h] = _mm256_and_si256(wv, low);
                    hi[h] = _mm256_and_si256(_mm256_srli_epi16(wv, 4), low);
                }
                for (r, acc) in iacc.iter_mut().enumerate() {
                    let at = xrow(r).add(g * GROUP + 8 * s);
                    let xa = _mm256_set1_epi32((at as *const i32).read_unaligned());
                    let xb = _mm256_set1_epi32((at.add(4) as *const i32).read_unaligned());
                    for h in 0..H {
                        let both = _mm256_add_epi16(_mm256_maddubs_epi16(lo[h], xa), _mm256_maddubs_epi16(hi[h], xb));
                        acc[h] = _mm256_add_epi16(acc[h], both);
                    }
                }
            }
            let m = meta + g * NR;
            let half = |v: &[u16], h: usize| {
                _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(m + 8 * (first + h)) as *const __m128i))
            };
            let (d, mins): ([__m256; H], [__m256; H]) =
                (std::array::from_fn(|h| half(&w.steps, h)), std::array::from_fn(|h| half(&w.mins, h)));
            for (r, (f, i)) in facc.iter_mut().zip(&iacc).enumerate() {
                let at = (row + r) * a.groups + g;
                let xs = _mm256_set1_ps(*a.scales.get_unchecked(at));
                let xsum = _mm256_set1_ps(*a.sums.get_unchecked(at) as f32);
                for h in 0..H {
                    let isum = _mm256_madd_epi16(i[h], ones);
                    f[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(d[h], xs), f[h]);
                    f[h] = _mm256_fmadd_ps(xsum, _mm256_mul_ps(mins[h], xs), f[h]);
                }
            }
        }
        store(&facc, first, out);
    }
}
