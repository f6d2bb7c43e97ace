//! The int8 GEMM tile for x86 CPUs with AVX2 but no AVX-512 VNNI (AMD Zen 2 and 3, Intel's
//! client cores from Haswell on, Skylake-SP servers): llama.cpp's AVX2 `Q8_0 × Q8_0` dot product in this
//! crate's panel layout.
//!
//! `vpmaddubsw` multiplies unsigned by signed bytes and adds pairs into a saturating i16 lane.
//! With the activations' `+128` offset a pair could reach `2·255·127`, past i16; so this kernel
//! takes the activations without the offset (`q ∈ −127..=127`, [`super::QuantRows`] with bias 0)
//! and moves the weight's sign onto them: `|w| · (q·sgn w)` pairs are at most `2·127·127 = 32258`,
//! exact in i16, and a `vpmaddwd` with ones widens each column's four products into its i32
//! lane. That is `Σ q·w`, which the VNNI kernel gets as `Σ (q + 128)·w − 128·Σ w`: the same
//! integer, then the same fused multiply-add per group, so the same bits (tested).
//!
//! AVX2 has 16 vector registers: a tile of three or four rows runs one 8-column half of the panel
//! at a time (each 32-byte weight load is one half's), one or two rows both halves together.

use std::arch::x86_64::*;

use super::{Q8Matrix, QuantRows, GROUP, MR, NR, STEPS};

/// Rows `row .. row + rows` (at most [`MR`]) of panel `p` into `out` (`rows × NR`); `a` holds the
/// activations without the `+128` offset.
///
/// # Safety
/// The CPU must have AVX2 and FMA ([`super::has_avx2`]).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn tile(w: &Q8Matrix, a: &QuantRows, p: usize, row: usize, rows: usize, out: &mut [f32]) {
    debug_assert!(rows <= MR);
    match rows {
        4 => tile_n::<4, 1>(w, a, p, row, out),
        3 => tile_n::<3, 1>(w, a, p, row, out),
        2 => tile_n::<2, 2>(w, a, p, row, out),
        _ => tile_n::<1, 2>(w, a, p, row, out),
    }
}

/// `R` rows, `H` of the panel's two 8-column halves per pass.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_n<const R: usize, const H: usize>(w: &Q8Matrix, a: &QuantRows, p: usize, row: usize, out: &mut [f32]) {
    debug_assert!(out.len() >= R * NR);
    let groups = w.groups;
    let wp = w.weights.as_ptr().add(p * groups * GROUP * NR) as *const __m256i;
    let meta = p * groups * NR;
    let xrow = |r: usize| a.bytes.as_ptr().add((row + r) * a.k_pad);
    let ones = _mm256_set1_epi16(1);
    for first in (0..2).step_by(H) {
        let mut facc = [[_mm256_setzero_ps(); H]; R];
        for g in 0..groups {
            let mut iacc = [[_mm256_setzero_si256(); H]; R];
            for s in 0..STEPS {
                let mut wv = [_mm256_setzero_si256(); H];
                let mut magnitude = [_mm256_setzero_si256(); H];
                for h in 0..H {
                    wv[h] = _mm256_loadu_si256(wp.add((g * STEPS + s) * 2 + first + h));
                    magnitude[h] = _mm256_abs_epi8(wv[h]);
                }
                for (r, acc) in iacc.iter_mut().enumerate() {
                    let four = (xrow(r).add(g * GROUP + 4 * s) as *const i32).read_unaligned();
                    let xb = _mm256_set1_epi32(four);
                    for h in 0..H {
                        let pairs = _mm256_maddubs_epi16(magnitude[h], _mm256_sign_epi8(xb, wv[h]));
                        acc[h] = _mm256_add_epi32(acc[h], _mm256_madd_epi16(pairs, ones));
                    }
                }
            }
            let m = meta + g * NR + 8 * first;
            let sc: [__m256; H] = std::array::from_fn(|h| _mm256_loadu_ps(w.scales.as_ptr().add(m + 8 * h)));
            for (r, (f, i)) in facc.iter_mut().zip(&iacc).enumerate() {
                let xs = _mm256_set1_ps(*a.scales.get_unchecked((row + r) * a.groups + g));
                for h in 0..H {
                    f[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i[h]), _mm256_mul_ps(sc[h], xs), f[h]);
                }
            }
        }
        store(&facc, first, out);
    }
}

/// Stores a tile's `R` rows of `H` 8-column halves, from half `first` on, into `out` (`R × NR`);
/// shared with the int4 AVX2 tile.
///
/// # Safety
/// The CPU must have AVX; `out` must hold `R × NR` values.
#[target_feature(enable = "avx2")]
#[inline]
pub(in crate::cpu) unsafe fn store<const R: usize, const H: usize>(
    facc: &[[__m256; H]; R],
    first: usize,
    out: &mut [f32],
) {
    debug_assert!(out.len() >= R * NR && first + H <= 2);
    for (r, f) in facc.iter().enumerate() {
        for (h, v) in f.iter().enumerate() {
            _mm256_storeu_ps(out.as_mut_ptr().add(r * NR + 8 * (first + h)), *v);
        }
    }
}
