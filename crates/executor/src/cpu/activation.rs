//! The feed-forward activation, `silu(gate) · up`, vectorized: the exponential is Cephes'
//! `expf` polynomial (the softmax's, `attention.rs`) on 16 lanes (AVX-512F) or 8 (AVX2 + FMA),
//! where it was a libm `expf` call per element (3% of a 2,048-token prefill's `perf` samples,
//! more with the division and loop around it).
//!
//! Every variant runs the same operations per element in the same order (range reduction,
//! polynomial, `g / (1 + e) · u` with IEEE division), so on a CPU with FMA the vector lanes, their
//! scalar remainder and the FMA scalar reference give the same bits (tested); a CPU without FMA
//! runs the scalar form with separate multiplies and adds. Batch invariance holds: each element
//! depends only on its own gate and up values.

use super::attention::{EXP_FLOOR, EXP_POLY, LN2_HI, LN2_LO, ROUND};

/// Above this `exp` would overflow `f32` (`e^88 ≈ 1.65e38`): the argument is clamped, and
/// `silu(g) = g / (1 + e^-g)` is then `g / 1.65e38`, zero to within `f32` for `g < -88`, as the
/// exact value is.
const EXP_CEIL: f32 = 88.0;

/// `exp(x)` with `x` clamped to `[EXP_FLOOR, EXP_CEIL]`: the operations of one vector lane (of
/// this module's kernels and of the softmax's).
#[inline(always)]
#[allow(clippy::manual_clamp)] // `max` then `min` take a NaN to the floor, as the vector lanes do.
pub(super) fn exp_clamped<const FMA: bool>(x: f32) -> f32 {
    let fma = |a: f32, b: f32, c: f32| if FMA { a.mul_add(b, c) } else { a * b + c };
    let x = x.max(EXP_FLOOR).min(EXP_CEIL);
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = fma(n, -LN2_LO, fma(n, -LN2_HI, x));
    let p = EXP_POLY[1..].iter().fold(EXP_POLY[0], |p, &c| fma(p, r, c));
    let y = fma(p, r * r, r) + 1.0;
    y * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

#[inline(always)]
fn silu_mul_scalar<const FMA: bool>(out: &mut [f32], gate: &[f32], up: &[f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + exp_clamped::<FMA>(-g)) * u;
    }
}

/// `out[i] = gate[i] · sigmoid(gate[i]) · up[i]` (SwiGLU's activation), over the shortest of the
/// three.
pub(super) fn silu_mul(out: &mut [f32], gate: &[f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::attention_avx512::has_avx512() {
            // SAFETY: the CPU has AVX-512F, AVX2 and FMA (checked).
            return unsafe { silu_mul_avx512(out, gate, up) };
        }
        if super::attention::has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA (checked).
            return unsafe { silu_mul_avx2(out, gate, up) };
        }
    }
    silu_mul_scalar::<false>(out, gate, up)
}

/// [`exp_clamped`] on eight lanes (the same operations per lane): for the activation and the
/// softmax's 8-lane kernel.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(super) fn exp256(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(EXP_FLOOR)), _mm256_set1_ps(EXP_CEIL));
    let n = _mm256_sub_ps(
        _mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)), _mm256_set1_ps(ROUND)),
        _mm256_set1_ps(ROUND),
    );
    let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_LO), _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_HI), x));
    let mut p = _mm256_set1_ps(EXP_POLY[0]);
    for &c in &EXP_POLY[1..] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0));
    _mm256_mul_ps(
        y,
        _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)))),
    )
}

/// [`exp_clamped`] on sixteen lanes (the same operations per lane): for the activation and the
/// softmax's AVX-512 kernel.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn exp512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(EXP_FLOOR)), _mm512_set1_ps(EXP_CEIL));
    let n = _mm512_sub_ps(
        _mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)), _mm512_set1_ps(ROUND)),
        _mm512_set1_ps(ROUND),
    );
    let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_LO), _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_HI), x));
    let mut p = _mm512_set1_ps(EXP_POLY[0]);
    for &c in &EXP_POLY[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0));
    _mm512_mul_ps(
        y,
        _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)))),
    )
}

/// [`silu_mul`] on eight lanes, the remainder one element at a time with the same operations.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_avx2(out: &mut [f32], gate: &[f32], up: &[f32]) {
    use std::arch::x86_64::*;
    let n = out.len().min(gate.len()).min(up.len());
    let whole = n - n % 8;
    for i in (0..whole).step_by(8) {
        // SAFETY: i + 8 ≤ n, the length of all three.
        let (g, u) = unsafe { (_mm256_loadu_ps(gate.as_ptr().add(i)), _mm256_loadu_ps(up.as_ptr().add(i))) };
        let e = exp256(_mm256_xor_ps(g, _mm256_set1_ps(-0.0)));
        let s = _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0), e)), u);
        // SAFETY: as for the loads.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(i), s) };
    }
    silu_mul_scalar::<true>(&mut out[whole..n], &gate[whole..n], &up[whole..n]);
}

/// [`silu_mul`] on sixteen lanes, the remainder one element at a time with the same operations.
///
/// # Safety
/// The CPU must have AVX-512F, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn silu_mul_avx512(out: &mut [f32], gate: &[f32], up: &[f32]) {
    use std::arch::x86_64::*;
    let n = out.len().min(gate.len()).min(up.len());
    let whole = n - n % 16;
    for i in (0..whole).step_by(16) {
        // SAFETY: i + 16 ≤ n, the length of all three.
        let (g, u) = unsafe { (_mm512_loadu_ps(gate.as_ptr().add(i)), _mm512_loadu_ps(up.as_ptr().add(i))) };
        let e = exp512(xor512(g, _mm512_set1_ps(-0.0)));
        let s = _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0), e)), u);
        // SAFETY: as for the loads.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(i), s) };
    }
    silu_mul_scalar::<true>(&mut out[whole..n], &gate[whole..n], &up[whole..n]);
}

/// `a ^ b` on 512-bit floats with AVX-512F alone (`_mm512_xor_ps` needs AVX-512DQ).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn xor512(a: std::arch::x86_64::__m512, b: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(a), _mm512_castps_si512(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gates over the activation's whole range (and past the clamps), ups of both signs; an
    /// odd length, so the vector variants run their scalar remainder too.
    fn inputs() -> (Vec<f32>, Vec<f32>) {
        let mut s = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        };
        let mut gate: Vec<f32> = (0..1001).map(|_| (next() - 0.5) * 40.0).collect();
        gate.extend([0.0, -0.0, 88.5, -88.5, 100.0, -100.0, 1e-30, -1e-30]);
        let up = gate.iter().map(|_| (next() - 0.5) * 4.0).collect();
        (gate, up)
    }

    #[test]
    fn silu_is_within_a_few_ulps_of_the_exact_value() {
        let (gate, up) = inputs();
        let mut out = vec![0.0; gate.len()];
        silu_mul(&mut out, &gate, &up);
        for ((&o, &g), &u) in out.iter().zip(&gate).zip(&up) {
            let exact = g as f64 / (1.0 + (-(g as f64)).exp()) * u as f64;
            let err = (o as f64 - exact).abs();
            assert!(err <= 1e-6 * exact.abs() + 1e-30, "silu({g}) * {u}: {o} vs {exact}");
        }
    }

    #[test]
    fn every_variant_gives_the_scalar_reference_bits() {
        let (gate, up) = inputs();
        let mut reference = vec![0.0; gate.len()];
        silu_mul_scalar::<true>(&mut reference, &gate, &up);
        #[cfg(target_arch = "x86_64")]
        {
            let mut ran = 0;
            if crate::cpu::attention::has_avx2_fma() {
                let mut out = vec![0.0; gate.len()];
                // SAFETY: checked just above.
                unsafe { silu_mul_avx2(&mut out, &gate, &up) };
                assert_eq!(bits(&out), bits(&reference), "AVX2");
                ran += 1;
            }
            if crate::cpu::attention_avx512::has_avx512() {
                let mut out = vec![0.0; gate.len()];
                // SAFETY: checked just above.
                unsafe { silu_mul_avx512(&mut out, &gate, &up) };
                assert_eq!(bits(&out), bits(&reference), "AVX-512");
                ran += 1;
            }
            if ran == 0 {
                eprintln!("skipped: this CPU has neither AVX2+FMA nor AVX-512F");
            }
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }
}
