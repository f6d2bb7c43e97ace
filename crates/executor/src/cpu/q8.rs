//! Int8 matmul for the CPU: int8 weights × int8 activations (W8A8), in blocks of 32 along the
//! input dimension — llama.cpp's `Q8_0 × Q8_0` scheme, laid out for a register-blocked GEMM.
//!
//! Weights are quantized once at load, per output column and per group of [`GROUP`] inputs
//! (scale = max |w| / 127), and packed in panels of [`NR`] columns so that one 32-byte load holds
//! four consecutive inputs of eight columns — the operand layout of `vpdpbusd` (AVX-512 VNNI),
//! which multiplies 32 unsigned by 32 signed bytes and adds each group of four products into an
//! i32 lane. Activations are quantized per row and group at each call and stored offset by +128
//! (unsigned); the offset's contribution, 128 · Σ w over the group, is precomputed per column and
//! subtracted.
//!
//! Integer sums are exact, and the float part (`acc = (isum − offset) · (w_scale · x_scale) +
//! acc`, one fused multiply-add per group, groups in order) is the same instruction sequence in
//! the VNNI kernel and in the portable one, so results do not depend on the kernel, on the row's
//! place in the batch or on the thread: batch invariance holds as for the f32 path.

use rayon::prelude::*;

/// Inputs per quantization group (one scale per group and column).
pub const GROUP: usize = 32;
/// Output columns per packed panel (two 8-lane vectors).
pub(super) const NR: usize = 16;
/// Rows per register tile of the 256-bit VNNI kernels.
pub(super) const MR: usize = 4;
/// Most rows per register tile of any kernel (the 512-bit int4 one, [`super::q4`]).
pub(super) const MAX_MR: usize = 8;
/// Four-input steps per group.
const STEPS: usize = GROUP / 4;

/// A weight matrix (`k` inputs × `n` outputs) quantized to int8 and packed in panels.
#[derive(Debug, Clone)]
pub struct Q8Matrix {
    k: usize,
    n: usize,
    groups: usize,
    panels: usize,
    /// Per panel: `groups × STEPS × NR × 4` bytes; byte `((g·STEPS + s)·NR + col)·4 + b` holds
    /// input `g·GROUP + 4s + b` of column `col`.
    weights: Vec<i8>,
    /// Per panel and group: `NR` column scales.
    scales: Vec<f32>,
    /// Per panel and group: `NR` values of 128 · Σ w (the +128 activation offset's share).
    offsets: Vec<i32>,
}

/// Activations quantized per row and group: bytes (`q + bias`: `+128`-offset unsigned for the
/// int8 kernel, plain two's-complement `i8` bits for the int4 one, [`super::q4`]), one scale and
/// the integer sum of the group's `q` per group.
pub(super) struct QuantRows {
    pub(super) k_pad: usize,
    pub(super) groups: usize,
    pub(super) bytes: Vec<u8>,
    pub(super) scales: Vec<f32>,
    /// Per row and group: Σ q (what a weight grid's offset multiplies).
    pub(super) sums: Vec<i32>,
}

pub(super) fn quantize_group(vals: impl Iterator<Item = f32> + Clone) -> (f32, impl Iterator<Item = i32>) {
    let amax = vals.clone().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = amax / 127.0;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    // Round half away from zero by adding ±0.5 and truncating: `f32::round` is a library call
    // on baseline x86-64 (no SSE4.1), and this runs for every activation of every matmul.
    (
        scale,
        vals.map(move |v| {
            let r = (v * inv).clamp(-127.0, 127.0);
            (r + 0.5f32.copysign(r)) as i32
        }),
    )
}

impl QuantRows {
    /// Quantizes `x` (`m × k`), each stored byte `q + bias` (wrapping), padding `bias`; the
    /// input channels in `zeroed` are quantized as 0.
    pub(super) fn new(x: &[f32], m: usize, k: usize, groups: usize, bias: u8, zeroed: &[usize]) -> Self {
        let k_pad = groups * GROUP;
        let mut bytes = vec![bias; m * k_pad];
        let mut scales = vec![0.0f32; m * groups];
        let mut sums = vec![0i32; m * groups];
        /// One row's input, and its bytes, scales and sums to fill.
        type Row<'a> = (&'a [f32], (&'a mut [u8], (&'a mut [f32], &'a mut [i32])));
        let quantize_row = |(row, (out, (sc, sm))): Row<'_>| {
            for (g, (s, sum)) in sc.iter_mut().zip(sm.iter_mut()).enumerate() {
                let lo = g * GROUP;
                let hi = (lo + GROUP).min(k);
                let mut buf = [0.0f32; GROUP];
                let vals = if zeroed.is_empty() {
                    &row[lo..hi]
                } else {
                    buf[..hi - lo].copy_from_slice(&row[lo..hi]);
                    zeroed.iter().filter(|&&o| (lo..hi).contains(&o)).for_each(|&o| buf[o - lo] = 0.0);
                    &buf[..hi - lo]
                };
                (*s, *sum) = quantize_activations(vals, &mut out[lo..hi], bias);
            }
        };
        if m * k >= 1 << 16 {
            x.par_chunks_exact(k)
                .zip(
                    bytes
                        .par_chunks_exact_mut(k_pad)
                        .zip(scales.par_chunks_exact_mut(groups).zip(sums.par_chunks_exact_mut(groups))),
                )
                .for_each(quantize_row);
        } else {
            x.chunks_exact(k)
                .zip(
                    bytes
                        .chunks_exact_mut(k_pad)
                        .zip(scales.chunks_exact_mut(groups).zip(sums.chunks_exact_mut(groups))),
                )
                .for_each(quantize_row);
        }
        Self { k_pad, groups, bytes, scales, sums }
    }
}

/// One group of activations into `out` (`q + bias`, wrapping): returns its scale and Σ q. A
/// whole group runs on AVX2 where the CPU has it — the same operations as [`quantize_group`]
/// lane by lane (max of |v| is exact in any order), so the same bytes.
#[inline]
fn quantize_activations(vals: &[f32], out: &mut [u8], bias: u8) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    if vals.len() == GROUP && super::attention::has_avx2_fma() {
        // SAFETY: the CPU has AVX2 (checked above); `vals` holds GROUP values.
        return unsafe { quantize_activations_avx2(vals, out, bias) };
    }
    let (scale, q) = quantize_group(vals.iter().copied());
    (scale, store_quantized(q, out, bias))
}

/// Writes `q + bias` (wrapping) into `out`; returns Σ q.
#[inline(always)]
fn store_quantized(q: impl Iterator<Item = i32>, out: &mut [u8], bias: u8) -> i32 {
    let mut sum = 0;
    for (o, v) in out.iter_mut().zip(q) {
        sum += v;
        *o = (v as u8).wrapping_add(bias);
    }
    sum
}

/// [`quantize_activations`] for a whole group, eight lanes at a time.
///
/// # Safety
/// The CPU must have AVX2; `vals` and `out` hold [`GROUP`] values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_activations_avx2(vals: &[f32], out: &mut [u8], bias: u8) -> (f32, i32) {
    use std::arch::x86_64::*;
    let sign = _mm256_set1_ps(-0.0);
    let v: [__m256; GROUP / 8] = std::array::from_fn(|i| _mm256_loadu_ps(vals.as_ptr().add(8 * i)));
    let mut amax = _mm256_andnot_ps(sign, v[0]);
    for x in &v[1..] {
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, *x));
    }
    let mut lanes = [0.0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), amax);
    let scale = lanes.iter().fold(0.0f32, |m, &a| m.max(a)) / 127.0;
    let inv = _mm256_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
    let (lo, hi, half) = (_mm256_set1_ps(-127.0), _mm256_set1_ps(127.0), _mm256_set1_ps(0.5));
    let q: [__m256i; GROUP / 8] = std::array::from_fn(|i| {
        let r = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(v[i], inv), lo), hi);
        _mm256_cvttps_epi32(_mm256_add_ps(r, _mm256_or_ps(_mm256_and_ps(r, sign), half)))
    });
    // Σ q: integer, so in any order.
    let s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let sum = _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01)));
    // Bytes: |q| ≤ 127, so the saturating packs are exact; they interleave 32-bit quarters of
    // the four vectors (q0 0–3, q1 0–3, q2 0–3, q3 0–3, then the 4–7s), which the permute
    // puts back in order.
    let packed = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    let ordered = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    let biased = _mm256_add_epi8(ordered, _mm256_set1_epi8(bias as i8));
    _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, biased);
    (scale, sum)
}

/// `m × n` row-major from `panels` panels of [`NR`] columns, each computed by `tile(p, row,
/// rows, out)` into `out` (`rows × NR`, at most `mr` ≤ [`MAX_MR`] rows) — one panel per parallel task,
/// each tile copied into its rows of the result as it is made (no panel-major buffer and
/// transpose: at 512 rows × 3,072 outputs those were two passes over 6 MiB a call).
pub(super) fn panel_matmul(
    panels: usize,
    n: usize,
    m: usize,
    mr: usize,
    tile: impl Fn(usize, usize, usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    assert!((1..=MAX_MR).contains(&mr), "{mr} rows a tile");
    // Not zeroed first: the panels write every element (a memset of the whole result showed
    // in profiles).
    let mut y: Vec<f32> = Vec::with_capacity(m * n);
    let out = Columns(y.as_mut_ptr());
    (0..panels).into_par_iter().for_each(|p| {
        let cols = NR.min(n - p * NR);
        let mut buf = [0.0f32; MAX_MR * NR];
        let mut row = 0;
        while row < m {
            let rows = mr.min(m - row);
            tile(p, row, rows, &mut buf[..rows * NR]);
            for (r, vals) in buf[..rows * NR].chunks_exact(NR).enumerate() {
                // SAFETY: row `row + r` < m, columns `p·NR .. p·NR + cols` ≤ n: inside `y`;
                // panel `p`'s task alone writes those columns.
                let to = unsafe { std::slice::from_raw_parts_mut(out.at((row + r) * n + p * NR), cols) };
                if let (Ok(to), Ok(vals)) = (<&mut [f32; NR]>::try_from(&mut *to), <&[f32; NR]>::try_from(vals)) {
                    // A whole panel row: a fixed-size copy the compiler inlines.
                    *to = *vals;
                } else {
                    to.copy_from_slice(&vals[..cols]);
                }
            }
            row += rows;
        }
    });
    // SAFETY: every row's columns `p·NR .. p·NR + cols` for every panel `p`: all `m × n`
    // elements were written above.
    unsafe { y.set_len(m * n) };
    y
}

/// The result's base pointer, shared by the panel tasks (each writes its own columns).
#[derive(Clone, Copy)]
struct Columns(*mut f32);
// SAFETY: the tasks write disjoint elements (their panel's columns) and `y` outlives them.
unsafe impl Send for Columns {}
unsafe impl Sync for Columns {}

impl Columns {
    /// The element `i` of the result.
    fn at(self, i: usize) -> *mut f32 {
        // SAFETY (of the callers): `i` is inside the result.
        self.0.wrapping_add(i)
    }
}

impl Q8Matrix {
    /// Quantizes `w`, `k × n` row-major (inputs × outputs, the layout `x · w` multiplies).
    pub fn quantize(w: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(w.len(), k * n, "weight matrix is {} values, not {k} × {n}", w.len());
        let groups = k.div_ceil(GROUP);
        let panels = n.div_ceil(NR);
        let panel_bytes = groups * GROUP * NR;
        let mut weights = vec![0i8; panels * panel_bytes];
        let mut scales = vec![0.0f32; panels * groups * NR];
        let mut offsets = vec![0i32; panels * groups * NR];
        for c in 0..n {
            let (p, col) = (c / NR, c % NR);
            for g in 0..groups {
                let (lo, hi) = (g * GROUP, ((g + 1) * GROUP).min(k));
                let (scale, q) = quantize_group((lo..hi).map(|i| w[i * n + c]));
                let meta = (p * groups + g) * NR + col;
                scales[meta] = scale;
                let mut sum = 0;
                for (i, v) in (lo..hi).zip(q) {
                    let (s, b) = ((i - lo) / 4, (i - lo) % 4);
                    weights[p * panel_bytes + ((g * STEPS + s) * NR + col) * 4 + b] = v as i8;
                    sum += v;
                }
                offsets[meta] = 128 * sum;
            }
        }
        Self { k, n, groups, panels, weights, scales, offsets }
    }

    /// Inputs.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Outputs.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Bytes held (weights, scales, offsets).
    pub fn bytes(&self) -> usize {
        self.weights.len() + 4 * (self.scales.len() + self.offsets.len())
    }

    /// Bytes a `k × n` matrix takes once quantized (what [`Q8Matrix::bytes`] will say).
    pub fn bytes_for(k: usize, n: usize) -> usize {
        let (groups, panels) = (k.div_ceil(GROUP), n.div_ceil(NR));
        panels * groups * GROUP * NR + 8 * panels * groups * NR
    }

    /// `x · w` for `x` of `m × k` (row-major); returns `m × n`.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        assert_eq!(x.len(), m * self.k, "input is {} values, not {m} × {}", x.len(), self.k);
        let kernel = Kernel::detect();
        let a = QuantRows::new(x, m, self.k, self.groups, kernel.activation_bias(), &[]);
        panel_matmul(self.panels, self.n, m, MR, |p, row, rows, tile| {
            match kernel {
                // SAFETY (each arm): `Kernel::detect` checked the CPU features the kernel is
                // compiled for.
                Kernel::Vnni => unsafe { vnni::tile(self, &a, p, row, rows, tile) },
                #[cfg(target_arch = "x86_64")]
                Kernel::AvxVnni => unsafe { avx_vnni::tile(self, &a, p, row, rows, tile) },
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 => unsafe { avx2::tile(self, &a, p, row, rows, tile) },
                _ => portable_tile(self, &a, p, row, rows, tile),
            }
        })
    }
}

/// Whether this CPU runs the VNNI kernel (AVX-512 VNNI on 256-bit vectors, with FMA); checked
/// once. Other machines run the portable kernel, with the same results.
pub fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU has AVX-VNNI (the VEX-encoded `vpdpbusd` of Intel's client cores and
/// E-core Xeons, which lack AVX-512) besides AVX2 and FMA; checked once.
pub fn has_avx_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avxvnni") && super::attention::has_avx2_fma())
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU runs the AVX2 int8 kernel (`vpmaddubsw`; for CPUs without AVX-512 VNNI).
pub fn has_avx2() -> bool {
    super::attention::has_avx2_fma()
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2;

/// The int8 tile this CPU runs: the first of these it has the features for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// [`has_vnni`]: `vpdpbusd` tiles.
    Vnni,
    /// [`has_avx_vnni`]: the same tiles with the VEX `vpdpbusd`.
    AvxVnni,
    /// [`has_avx2`]: `vpmaddubsw` tiles.
    Avx2,
    /// Anything else.
    Portable,
}

impl Kernel {
    /// The fastest kernel this CPU runs (within `TANDEM_CPU_GEMM`, [`super::gemm_limit`]).
    pub fn detect() -> Self {
        let limit = super::gemm_limit();
        if limit >= super::GEMM_VNNI && has_vnni() {
            Self::Vnni
        } else if limit >= super::GEMM_AVX_VNNI && has_avx_vnni() {
            Self::AvxVnni
        } else if limit >= super::GEMM_AVX2 && has_avx2() {
            Self::Avx2
        } else {
            Self::Portable
        }
    }

    /// The offset its activation bytes carry: the AVX2 kernel takes them without the +128
    /// (`q8/avx2.rs` says why).
    fn activation_bias(self) -> u8 {
        if self == Self::Avx2 {
            0
        } else {
            128
        }
    }

    /// For reports (`tandem bench-model`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Vnni => "AVX-512 VNNI",
            Self::AvxVnni => "AVX-VNNI",
            Self::Avx2 => "AVX2 (vpmaddubsw)",
            Self::Portable => "portable",
        }
    }
}

/// Rows `row .. row + rows` of panel `p` into `out` (`rows × NR`), one column at a time.
#[inline(always)]
fn portable_body(w: &Q8Matrix, a: &QuantRows, p: usize, row: usize, rows: usize, out: &mut [f32]) {
    let panel = &w.weights[p * w.groups * GROUP * NR..(p + 1) * w.groups * GROUP * NR];
    for r in 0..rows {
        let x = &a.bytes[(row + r) * a.k_pad..(row + r + 1) * a.k_pad];
        let xs = &a.scales[(row + r) * a.groups..(row + r + 1) * a.groups];
        for col in 0..NR {
            let mut acc = 0.0f32;
            for g in 0..w.groups {
                let mut isum = 0i32;
                for s in 0..STEPS {
                    let wb = &panel[((g * STEPS + s) * NR + col) * 4..][..4];
                    let xb = &x[g * GROUP + 4 * s..][..4];
                    for b in 0..4 {
                        isum += xb[b] as i32 * wb[b] as i32;
                    }
                }
                let meta = (p * w.groups + g) * NR + col;
                acc = ((isum - w.offsets[meta]) as f32).mul_add(w.scales[meta] * xs[g], acc);
            }
            out[r * NR + col] = acc;
        }
    }
}

/// The portable kernel; compiled a second time with AVX2+FMA where the CPU has them, so that
/// `mul_add` is one instruction rather than a library call (same results either way).
fn portable_tile(w: &Q8Matrix, a: &QuantRows, p: usize, row: usize, rows: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::attention::has_avx2_fma() {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn fast(w: &Q8Matrix, a: &QuantRows, p: usize, row: usize, rows: usize, out: &mut [f32]) {
            portable_body(w, a, p, row, rows, out)
        }
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { fast(w, a, p, row, rows, out) };
    }
    portable_body(w, a, p, row, rows, out)
}

/// The 256-bit `vpdpbusd` tile, stamped out once per encoding of the instruction: AVX-512 VNNI's
/// (EVEX, with AVX-512 VL) and AVX-VNNI's (VEX: Intel client cores from Alder Lake, Sierra Forest,
/// which have no AVX-512). Both compute the same integers, so both give the portable kernel's bits.
macro_rules! vnni_tile_module {
    ($module:ident, $features:literal, $dpbusd:ident, $needs:literal) => {
        #[cfg(target_arch = "x86_64")]
        pub(super) mod $module {
            use std::arch::x86_64::*;

            use super::{Q8Matrix, QuantRows, GROUP, MR, NR, STEPS};

            /// Rows `row .. row + rows` (at most [`MR`]) of panel `p` into `out` (`rows × NR`).
            ///
            /// # Safety
            #[doc = $needs]
            #[target_feature(enable = $features)]
            pub unsafe fn tile(w: &Q8Matrix, a: &QuantRows, p: usize, row: usize, rows: usize, out: &mut [f32]) {
                match rows {
                    4 => tile_n::<4>(w, a, p, row, out),
                    3 => tile_n::<3>(w, a, p, row, out),
                    2 => tile_n::<2>(w, a, p, row, out),
                    _ => tile_n::<1>(w, a, p, row, out),
                }
            }

            #[target_feature(enable = $features)]
            unsafe fn tile_n<const R: usize>(w: &Q8Matrix, a: &QuantRows, p: usize, row: usize, out: &mut [f32]) {
                debug_assert!(R <= MR && out.len() >= R * NR);
                let groups = w.groups;
                let wp = w.weights.as_ptr().add(p * groups * GROUP * NR) as *const __m256i;
                let meta = (p * groups) * NR;
                let xrow = |r: usize| a.bytes.as_ptr().add((row + r) * a.k_pad);
                let mut facc = [[_mm256_setzero_ps(); 2]; R];
                for g in 0..groups {
                    let mut iacc = [[_mm256_setzero_si256(); 2]; R];
                    for s in 0..STEPS {
                        let w0 = _mm256_loadu_si256(wp.add((g * STEPS + s) * 2));
                        let w1 = _mm256_loadu_si256(wp.add((g * STEPS + s) * 2 + 1));
                        for (r, acc) in iacc.iter_mut().enumerate() {
                            let four = (xrow(r).add(g * GROUP + 4 * s) as *const i32).read_unaligned();
                            let xb = _mm256_set1_epi32(four);
                            acc[0] = $dpbusd(acc[0], xb, w0);
                            acc[1] = $dpbusd(acc[1], xb, w1);
                        }
                    }
                    let m = meta + g * NR;
                    let off = [
                        _mm256_loadu_si256(w.offsets.as_ptr().add(m) as *const __m256i),
                        _mm256_loadu_si256(w.offsets.as_ptr().add(m + 8) as *const __m256i),
                    ];
                    let sc = [_mm256_loadu_ps(w.scales.as_ptr().add(m)), _mm256_loadu_ps(w.scales.as_ptr().add(m + 8))];
                    for (r, (f, i)) in facc.iter_mut().zip(&iacc).enumerate() {
                        let xs = _mm256_set1_ps(*a.scales.get_unchecked((row + r) * a.groups + g));
                        for h in 0..2 {
                            let exact = _mm256_cvtepi32_ps(_mm256_sub_epi32(i[h], off[h]));
                            f[h] = _mm256_fmadd_ps(exact, _mm256_mul_ps(sc[h], xs), f[h]);
                        }
                    }
                }
                for (r, f) in facc.iter().enumerate() {
                    _mm256_storeu_ps(out.as_mut_ptr().add(r * NR), f[0]);
                    _mm256_storeu_ps(out.as_mut_ptr().add(r * NR + 8), f[1]);
                }
            }
        }
    };
}

vnni_tile_module!(
    vnni,
    "avx2,fma,avx512vnni,avx512vl",
    _mm256_dpbusd_epi32,
    "The CPU must have AVX2, FMA, AVX-512 VNNI and AVX-512 VL ([`super::has_vnni`])."
);
vnni_tile_module!(
    avx_vnni,
    "avx2,fma,avxvnni",
    _mm256_dpbusd_avx_epi32,
    "The CPU must have AVX2, FMA and AVX-VNNI ([`super::has_avx_vnni`])."
);

/// Shared by the int8 and int4 kernels' tests.
#[cfg(test)]
pub(super) mod test_support {
    /// `n` values in [−1, 1) from a linear congruential generator seeded with `seed`.
    pub fn lcg(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// `x · w` in f32, `m × k` by `k × n`.
    pub fn reference(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut y = vec![0.0f32; m * n];
        for r in 0..m {
            for c in 0..n {
                y[r * n + c] = (0..k).map(|i| x[r * k + i] * w[i * n + c]).sum();
            }
        }
        y
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{lcg, reference};
    use super::*;

    #[test]
    fn exact_on_values_the_grid_holds() {
        // One group, k = 4 (padded to 32), n = 2; every value sits on its group's grid, so the
        // only error is float rounding. Column 0 = [127, -127, 0, 0] (scale 1), column 1 =
        // [1, 1, 0, -1] (scale 1/127, q = ±127); x = [127, 127, 0, 127] (scale 1, q = x).
        // y0 = 127·127 − 127·127 = 0; y1 = 127 + 127 − 127 = 127.
        let w = [127.0, 1.0, -127.0, 1.0, 0.0, 0.0, 0.0, -1.0];
        let x = [127.0, 127.0, 0.0, 127.0];
        let q = Q8Matrix::quantize(&w, 4, 2);
        let y = q.matmul(&x, 1);
        assert_eq!(y.len(), 2);
        assert!(y[0].abs() < 1e-3, "{y:?}");
        assert!((y[1] - 127.0).abs() < 1e-3, "{y:?}");
    }

    #[test]
    fn close_to_f32_for_odd_shapes() {
        // k not a multiple of 32, n not a multiple of 16, m not a multiple of 4.
        for &(m, k, n) in &[(1, 40, 3), (5, 64, 17), (7, 100, 33), (9, 576, 48)] {
            let (x, w) = (lcg(m as u64, m * k), lcg(k as u64 + 7, k * n));
            let got = Q8Matrix::quantize(&w, k, n).matmul(&x, m);
            let want = reference(&x, &w, m, k, n);
            // Each product's relative error is about 2 × (1/254); values are sums of k products
            // of magnitude ≤ 1, so |error| ≲ k · 1/127 in the worst case and ~√k/127 typically.
            let bound = (k as f32).sqrt() * 0.05;
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < bound, "m={m} k={k} n={n}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn the_size_is_known_before_quantizing() {
        for (k, n) in [(40, 3), (576, 3072), (100, 33)] {
            assert_eq!(Q8Matrix::quantize(&vec![0.5; k * n], k, n).bytes(), Q8Matrix::bytes_for(k, n));
        }
    }

    #[test]
    fn a_row_does_not_depend_on_its_batch() {
        let (m, k, n) = (11, 96, 40);
        let (x, w) = (lcg(3, m * k), lcg(4, k * n));
        let q = Q8Matrix::quantize(&w, k, n);
        let all = q.matmul(&x, m);
        for r in 0..m {
            let alone = q.matmul(&x[r * k..(r + 1) * k], 1);
            assert_eq!(alone, all[r * n..(r + 1) * n], "row {r}");
        }
    }

    #[test]
    fn the_avx2_activation_quantizer_gives_the_scalar_bytes() {
        if !super::super::attention::has_avx2_fma() {
            eprintln!("SKIPPED the_avx2_activation_quantizer_gives_the_scalar_bytes: this CPU lacks AVX2");
            return;
        }
        // Random groups, an all-zero one, and one whose values land on ±x.5 steps of its grid
        // (amax 127: v = j + 0.5 rounds away from zero either way).
        let mut groups: Vec<Vec<f32>> =
            (0..64).map(|g| lcg(100 + g, GROUP).iter().map(|v| v * (g as f32 + 0.1)).collect()).collect();
        groups.push(vec![0.0; GROUP]);
        groups.push((0..GROUP).map(|j| if j == 0 { 127.0 } else { (j as f32 - 16.0) + 0.5 }).collect());
        for (i, vals) in groups.iter().enumerate() {
            for bias in [0u8, 128] {
                let (mut fast, mut scalar) = (vec![0u8; GROUP], vec![0u8; GROUP]);
                // SAFETY: checked above; GROUP values each.
                let f = unsafe { quantize_activations_avx2(vals, &mut fast, bias) };
                let (scale, q) = quantize_group(vals.iter().copied());
                let mut sum = 0;
                for (o, v) in scalar.iter_mut().zip(q) {
                    sum += v;
                    *o = (v as u8).wrapping_add(bias);
                }
                assert_eq!((f, &fast), ((scale, sum), &scalar), "group {i}, bias {bias}");
            }
        }
    }

    /// `kernel`'s tiles of every height 1..=[`MR`] (the bottom rows of `x`), fed activations with
    /// that kernel's offset, give the portable kernel's bits, for `x` (`m × k`) times `w`
    /// (`k × n`) quantized.
    fn tiles_match_portable(
        x: &[f32],
        w: &[f32],
        (m, k, n): (usize, usize, usize),
        kernel: Kernel,
        tile: impl Fn(&Q8Matrix, &QuantRows, usize, usize, usize, &mut [f32]),
    ) {
        let q = Q8Matrix::quantize(w, k, n);
        let offset = QuantRows::new(x, m, k, q.groups, Kernel::Portable.activation_bias(), &[]);
        let own = QuantRows::new(x, m, k, q.groups, kernel.activation_bias(), &[]);
        for p in 0..q.panels {
            for rows in 1..=MR {
                let mut portable = vec![0.0; rows * NR];
                portable_body(&q, &offset, p, m - rows, rows, &mut portable);
                let mut fast = vec![0.0; rows * NR];
                tile(&q, &own, p, m - rows, rows, &mut fast);
                assert_eq!(portable, fast, "panel {p}, {rows} rows");
            }
        }
    }

    #[test]
    fn the_avx2_kernel_gives_the_portable_ones_bits() {
        if !has_avx2() {
            eprintln!("SKIPPED the_avx2_kernel_gives_the_portable_ones_bits (int8): this CPU lacks AVX2 or FMA");
            return;
        }
        // Extremes first: activations ±1 (q = ±127) against weights ±1 (q = ±127) and 0, with
        // both signs, so that every pair is `|w| · (q·sgn w)` at its largest, 2 · 127 · 127 =
        // 32258 (no i16 lane may saturate); then random values, every tile height 1..=4, k not
        // a multiple of 32 and n not one of 16.
        let (m, k, n) = (7, 160, 40);
        let signs: Vec<f32> = (0..m * k).map(|i| if (i / 3) % 2 == 0 { 1.0 } else { -1.0 }).collect();
        let unit: Vec<f32> = (0..k * n).map(|i| [1.0, -1.0, 0.0, 1.0, 1.0][i % 5]).collect();
        for (x, w) in [(signs, unit), (lcg(15, m * k), lcg(16, k * n)), (lcg(17, m * k), lcg(18, k * n))] {
            // SAFETY: checked by `has_avx2`.
            tiles_match_portable(&x, &w, (m, k, n), Kernel::Avx2, |q, a, p, row, rows, out| unsafe {
                avx2::tile(q, a, p, row, rows, out)
            });
        }
    }

    #[test]
    fn the_avx_vnni_kernel_gives_the_portable_ones_bits() {
        if !has_avx_vnni() {
            eprintln!("SKIPPED the_avx_vnni_kernel_gives_the_portable_ones_bits (int8): this CPU lacks AVX-VNNI");
            return;
        }
        // Every tile height 1..=4, k not a multiple of 32 and n not one of 16; activations at
        // ±1 first (bytes 1 and 255 with the +128 offset) against weights ±1 and 0, then random.
        let (m, k, n) = (7, 160, 40);
        let signs: Vec<f32> = (0..m * k).map(|i| if (i / 3) % 2 == 0 { 1.0 } else { -1.0 }).collect();
        let unit: Vec<f32> = (0..k * n).map(|i| [1.0, -1.0, 0.0, 1.0, 1.0][i % 5]).collect();
        for (x, w) in [(signs, unit), (lcg(25, m * k), lcg(26, k * n))] {
            // SAFETY: checked by `has_avx_vnni`.
            tiles_match_portable(&x, &w, (m, k, n), Kernel::AvxVnni, |q, a, p, row, rows, out| unsafe {
                avx_vnni::tile(q, a, p, row, rows, out)
            });
        }
    }

    #[test]
    fn the_portable_kernel_equals_the_vnni_one() {
        if !has_vnni() {
            eprintln!("SKIPPED the_portable_kernel_equals_the_vnni_one: this CPU lacks AVX-512 VNNI");
            return;
        }
        let (m, k, n) = (6, 128, 32);
        let (x, w) = (lcg(5, m * k), lcg(6, k * n));
        let q = Q8Matrix::quantize(&w, k, n);
        let a = QuantRows::new(&x, m, k, q.groups, 128, &[]);
        for p in 0..q.panels {
            let mut portable = vec![0.0; m * NR];
            portable_body(&q, &a, p, 0, 4, &mut portable[..4 * NR]);
            portable_body(&q, &a, p, 4, 2, &mut portable[4 * NR..]);
            let mut fast = vec![0.0; m * NR];
            // SAFETY: checked by `has_vnni`.
            unsafe {
                vnni::tile(&q, &a, p, 0, 4, &mut fast[..4 * NR]);
                vnni::tile(&q, &a, p, 4, 2, &mut fast[4 * NR..]);
            }
            assert_eq!(portable, fast, "panel {p}");
        }
    }
}
