//! Int4 weights × int8 activations for the CPU: llama.cpp's `Q4_1 × Q8` scheme — the arithmetic
//! llama.cpp runs a Q4_1 GGUF file with — in the panel layout of [`super::q8`].
//!
//! Weights are held per output column and group of [`GROUP`] inputs as `w = d·q + m` with
//! `q ∈ 0..=15` and `d`, `m` in f16 (Q4_1's grid and its 20 bytes per 32 weights; here 16 + 4).
//! Quantizing a Q4_1 file's dequantized values gives its blocks back exactly (`min` is the
//! block's `m`, `(max − min)/15` its `d` to within f32 rounding, far below f16's step), so this
//! format computes with the file's weights themselves, at about half the bytes of int8 — which
//! is what a batch-1 decode step, reading every weight once, is bound by.
//!
//! A packed panel holds [`NR`] columns; one 32-byte load covers eight columns × eight inputs as
//! nibbles: the low nibble of lane byte `b` is input `8s + b`, the high one input `8s + 4 + b`,
//! so a mask and a shift give two `vpdpbusd` operands (unsigned 4-bit weights × signed int8
//! activations, four products into each i32 lane). Per group the float part is `acc = isum ·
//! (d·xs) + acc` then `acc = Σq_x · (m·xs) + acc` (two fused multiply-adds, the second the grid
//! offset's share, from the activations' group sums), in the same order in the VNNI kernel and
//! the portable one, so results do not depend on the kernel, the batch or the thread.
//!
//! Where the CPU has AVX-512F/BW, a 512-bit tile covers a panel's 16 columns in one vector and
//! up to eight rows (`vnni::tile_wide`), with the outlier channels added in registers: the same
//! lane operations in the same order, so the same bits as the 256-bit tile (tested).
//!
//! There is no load-time smoothing for this format ([`crate::model::smooth`]): scaling a
//! weight row moves it off the file's grid.

use half::f16;

use super::q8::{has_vnni, panel_matmul, QuantRows, GROUP, MAX_MR, MR, NR};

/// Eight-input steps per group (each one 32-byte load per eight columns).
const STEPS: usize = GROUP / 8;
/// Packed bytes per panel and group: `GROUP × NR` nibbles.
const GROUP_BYTES: usize = GROUP * NR / 2;
/// Rows per tile of the AVX2 kernel: four rows' accumulators, the unpacked nibbles and the
/// constants overflow AVX2's 16 vector registers (the compiler spills); side by side
/// on two Zen 3 cores, 3-row tiles prefilled 1.09–1.17× faster than 4-row ones, 2-row tiles
/// (both halves a pass) no faster than 3.
const AVX2_MR: usize = 3;

/// A weight matrix (`k` inputs × `n` outputs) on a 4-bit grid per column and group, packed in
/// panels.
#[derive(Debug, Clone)]
pub struct Q4Matrix {
    k: usize,
    n: usize,
    groups: usize,
    panels: usize,
    /// Per panel: `groups × GROUP_BYTES` bytes; byte `((g·STEPS + s)·NR + col)·4 + b` holds input
    /// `g·GROUP + 8s + b` of column `col` in its low nibble and input `g·GROUP + 8s + 4 + b` in
    /// its high one.
    nibbles: Vec<u8>,
    /// Per panel and group: `NR` column steps `d` (f16 bits).
    steps: Vec<u16>,
    /// Per panel and group: `NR` column minima `m` (f16 bits).
    mins: Vec<u16>,
    /// Input channels computed apart in f32 (LLM.int8()'s decomposition): zeroed before the
    /// activations are quantized, so their large values do not coarsen their groups' grids.
    outliers: Vec<usize>,
    /// Per panel: `outliers.len() × NR` weights of those channels, as given (0 past `n`).
    outlier_rows: Vec<f32>,
}

/// A group's grid: `(d, m, q)` with `w ≈ d·q + m`, `q ∈ 0..=15`, `d` and `m` rounded to f16
/// first so that `q` is chosen against the values the kernel will use.
fn quantize_group(vals: &[f32]) -> (f16, f16, impl Iterator<Item = u8> + '_) {
    let (lo, hi) = vals.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let m = f16::from_f32(lo);
    let d = f16::from_f32((hi - lo) / 15.0);
    let (mf, df) = (m.to_f32(), d.to_f32());
    let inv = if df > 0.0 { 1.0 / df } else { 0.0 };
    (d, m, vals.iter().map(move |&v| ((v - mf) * inv + 0.5).clamp(0.0, 15.0) as u8))
}

/// Where input `j` (within its group, `0..GROUP`) of column `col` (within its panel) sits in the
/// group's packed bytes: the byte's index and the nibble's shift.
#[inline(always)]
fn nibble_at(j: usize, col: usize) -> (usize, u32) {
    let (s, within) = (j / 8, j % 8);
    ((s * NR + col) * 4 + within % 4, 4 * (within / 4) as u32)
}

impl Q4Matrix {
    /// Quantizes `w`, `k × n` row-major (inputs × outputs, the layout `x · w` multiplies).
    pub fn quantize(w: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(w.len(), k * n, "weight matrix is {} values, not {k} × {n}", w.len());
        let groups = k.div_ceil(GROUP);
        let panels = n.div_ceil(NR);
        let mut nibbles = vec![0u8; panels * groups * GROUP_BYTES];
        let mut steps = vec![0u16; panels * groups * NR];
        let mut mins = vec![0u16; panels * groups * NR];
        let mut column = Vec::with_capacity(GROUP);
        for c in 0..n {
            let (p, col) = (c / NR, c % NR);
            for g in 0..groups {
                let (lo, hi) = (g * GROUP, ((g + 1) * GROUP).min(k));
                column.clear();
                column.extend((lo..hi).map(|i| w[i * n + c]));
                let (d, m, q) = quantize_group(&column);
                let meta = (p * groups + g) * NR + col;
                (steps[meta], mins[meta]) = (d.to_bits(), m.to_bits());
                for (j, v) in q.enumerate() {
                    let (byte, shift) = nibble_at(j, col);
                    nibbles[(p * groups + g) * GROUP_BYTES + byte] |= v << shift;
                }
            }
        }
        Self { k, n, groups, panels, nibbles, steps, mins, outliers: Vec::new(), outlier_rows: Vec::new() }
    }

    /// [`Self::quantize`], with input channels `outliers` multiplied in f32 apart from the rest.
    pub fn quantize_with_outliers(w: &[f32], k: usize, n: usize, outliers: &[usize]) -> Self {
        let mut q = Self::quantize(w, k, n);
        q.outliers = outliers.iter().copied().filter(|&o| o < k).collect();
        if q.outliers.is_empty() {
            return q;
        }
        q.outlier_rows = vec![0.0; q.panels * q.outliers.len() * NR];
        for (p, panel) in q.outlier_rows.chunks_exact_mut(q.outliers.len() * NR).enumerate() {
            for (&o, row) in q.outliers.iter().zip(panel.chunks_exact_mut(NR)) {
                for (col, v) in row.iter_mut().enumerate().take(n.saturating_sub(p * NR)) {
                    *v = w[o * n + p * NR + col];
                }
            }
        }
        q
    }

    /// The weights as this grid holds them, `k × n` row-major: `q · d + m` in f32 (a multiply
    /// then an add, as llama.cpp and candle dequantize Q4_1).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut w = vec![0.0f32; self.k * self.n];
        for c in 0..self.n {
            let (p, col) = (c / NR, c % NR);
            for i in 0..self.k {
                let g = i / GROUP;
                let (byte, shift) = nibble_at(i % GROUP, col);
                let q = (self.nibbles[(p * self.groups + g) * GROUP_BYTES + byte] >> shift) & 15;
                let meta = (p * self.groups + g) * NR + col;
                let (d, m) = (f16::from_bits(self.steps[meta]).to_f32(), f16::from_bits(self.mins[meta]).to_f32());
                w[i * self.n + c] = q as f32 * d + m;
            }
        }
        w
    }

    /// Inputs.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Outputs.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Bytes held (nibbles, steps, minima).
    pub fn bytes(&self) -> usize {
        self.nibbles.len() + 2 * (self.steps.len() + self.mins.len()) + 4 * self.outlier_rows.len()
    }

    /// Bytes a `k × n` matrix takes once quantized (what [`Q4Matrix::bytes`] will say).
    pub fn bytes_for(k: usize, n: usize) -> usize {
        Self::bytes_with_outliers(k, n, 0)
    }

    /// Bytes a `k × n` matrix with `outliers` channels apart takes once quantized.
    pub fn bytes_with_outliers(k: usize, n: usize, outliers: usize) -> usize {
        let (groups, panels) = (k.div_ceil(GROUP), n.div_ceil(NR));
        panels * groups * (GROUP_BYTES + 4 * NR) + panels * outliers.min(k) * NR * 4
    }

    /// `x · w` for `x` of `m × k` (row-major); returns `m × n`.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        assert_eq!(x.len(), m * self.k, "input is {} values, not {m} × {}", x.len(), self.k);
        let a = QuantRows::new(x, m, self.k, self.groups, 0, &self.outliers);
        // The outlier channels' values, `m × outliers` (gathered once: the tiles of every panel
        // read them).
        let apart: Vec<f32> = x.chunks_exact(self.k).flat_map(|r| self.outliers.iter().map(|&o| r[o])).collect();
        let kernel = Kernel::detect();
        panel_matmul(self.panels, self.n, m, kernel.rows(), |p, row, rows, tile| {
            match kernel {
                // SAFETY (each arm): `Kernel::detect` checked the CPU features the kernel is
                // compiled for.
                Kernel::Avx512 => {
                    // This kernel adds the outlier channels itself.
                    return unsafe { vnni::tile_wide(self, &a, &apart, p, row, rows, tile) };
                }
                Kernel::Vnni => unsafe { vnni::tile(self, &a, p, row, rows, tile) },
                #[cfg(target_arch = "x86_64")]
                Kernel::AvxVnni => unsafe { avx_vnni::tile(self, &a, p, row, rows, tile) },
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 => unsafe { avx2::tile(self, &a, p, row, rows, tile) },
                _ => portable_tile(self, &a, p, row, rows, tile),
            }
            self.add_outliers(&apart, p, row, tile);
        })
    }

    /// Adds the outlier channels' `x_j · w_j` to a tile of panel `p` (rows from `row`; `apart`
    /// holds each row's outlier values), in channel order, whichever kernel ran (a multiply then
    /// an add, never fused, so that the AVX2 build of this loop and the baseline one agree).
    fn add_outliers(&self, apart: &[f32], p: usize, row: usize, tile: &mut [f32]) {
        #[inline(always)]
        fn body(q: &Q4Matrix, apart: &[f32], p: usize, row: usize, tile: &mut [f32]) {
            let count = q.outliers.len();
            let weights = &q.outlier_rows[p * count * NR..(p + 1) * count * NR];
            for (r, out) in tile.chunks_exact_mut(NR).enumerate() {
                let out: &mut [f32; NR] = out.try_into().expect("NR columns");
                // In registers across the channels (a store and reload per channel was a chain
                // of store-to-load forwarding).
                let mut acc = *out;
                for (&v, w) in apart[(row + r) * count..(row + r + 1) * count].iter().zip(weights.chunks_exact(NR)) {
                    let w: &[f32; NR] = w.try_into().expect("NR columns");
                    for c in 0..NR {
                        acc[c] += v * w[c];
                    }
                }
                *out = acc;
            }
        }
        if self.outliers.is_empty() {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if super::attention::has_avx2_fma() {
            #[target_feature(enable = "avx2")]
            unsafe fn fast(q: &Q4Matrix, apart: &[f32], p: usize, row: usize, tile: &mut [f32]) {
                body(q, apart, p, row, tile)
            }
            // SAFETY: the CPU has AVX2 (checked above).
            return unsafe { fast(self, apart, p, row, tile) };
        }
        body(self, apart, p, row, tile)
    }
}

/// Whether this CPU runs the 512-bit int4 kernel (AVX-512F and BW besides VNNI and F16C).
pub fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        vnni::has_avx512()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU runs the VNNI int4 kernel (the int8 one's features and F16C).
pub fn has_vnni_f16c() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_vnni() && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        has_vnni()
    }
}

/// Whether this CPU runs the AVX-VNNI int4 kernel (the int8 one's features and F16C).
pub fn has_avx_vnni_f16c() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::q8::has_avx_vnni() && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The int4 tile this CPU runs: the first of these it has the features for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// [`has_avx512`]: 8-row 512-bit tiles.
    Avx512,
    /// [`has_vnni_f16c`]: 4-row 256-bit VNNI tiles.
    Vnni,
    /// [`has_avx_vnni_f16c`]: the same tiles with the VEX `vpdpbusd`.
    AvxVnni,
    /// [`has_avx2_f16c`]: `vpmaddubsw` tiles of [`AVX2_MR`] rows.
    Avx2,
    /// Anything else.
    Portable,
}

impl Kernel {
    /// The fastest kernel this CPU runs (within `TANDEM_CPU_GEMM`, [`super::gemm_limit`]).
    pub fn detect() -> Self {
        let limit = super::gemm_limit();
        if limit >= super::GEMM_AVX512 && has_avx512() {
            Self::Avx512
        } else if limit >= super::GEMM_VNNI && has_vnni_f16c() {
            Self::Vnni
        } else if limit >= super::GEMM_AVX_VNNI && has_avx_vnni_f16c() {
            Self::AvxVnni
        } else if limit >= super::GEMM_AVX2 && has_avx2_f16c() {
            Self::Avx2
        } else {
            Self::Portable
        }
    }

    /// Rows per tile.
    fn rows(self) -> usize {
        match self {
            Self::Avx512 => MAX_MR,
            Self::Avx2 => AVX2_MR,
            Self::Vnni | Self::AvxVnni | Self::Portable => MR,
        }
    }

    /// For reports (`tandem bench-model`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Avx512 => "AVX-512 VNNI (512-bit tiles)",
            Self::Vnni => "AVX-512 VNNI",
            Self::AvxVnni => "AVX-VNNI",
            Self::Avx2 => "AVX2 (vpmaddubsw)",
            Self::Portable => "portable",
        }
    }
}

/// Whether this CPU runs the AVX2 int4 kernel (`vpmaddubsw`; for CPUs without AVX-512 VNNI).
pub fn has_avx2_f16c() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx2::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Rows `row .. row + rows` of panel `p` into `out` (`rows × NR`), one column at a time.
#[inline(always)]
fn portable_body(w: &Q4Matrix, a: &QuantRows, p: usize, row: usize, rows: usize, out: &mut [f32]) {
    for r in 0..rows {
        let x = &a.bytes[(row + r) * a.k_pad..(row + r + 1) * a.k_pad];
        let meta_row = (row + r) * a.groups;
        for col in 0..NR {
            let mut acc = 0.0f32;
            for g in 0..w.groups {
                let packed = &w.nibbles[(p * w.groups + g) * GROUP_BYTES..][..GROUP_BYTES];
                let mut isum = 0i32;
                for s in 0..STEPS {
                    let lane = &packed[(s * NR + col) * 4..][..4];
                    let xq = &x[g * GROUP + 8 * s..][..8];
                    for b in 0..4 {
                        isum += (lane[b] & 15) as i32 * xq[b] as i8 as i32;
                        isum += (lane[b] >> 4) as i32 * xq[4 + b] as i8 as i32;
                    }
                }
                let meta = (p * w.groups + g) * NR + col;
                let (d, m) = (f16::from_bits(w.steps[meta]).to_f32(), f16::from_bits(w.mins[meta]).to_f32());
                let xs = a.scales[meta_row + g];
                acc = (isum as f32).mul_add(d * xs, acc);
                acc = (a.sums[meta_row + g] as f32).mul_add(m * xs, acc);
            }
            out[r * NR + col] = acc;
        }
    }
}

/// The portable kernel; compiled a second time with AVX2+FMA where the CPU has them, so that
/// `mul_add` is one instruction rather than a library call (same results either way).
fn portable_tile(w: &Q4Matrix, a: &QuantRows, p: usize, row: usize, rows: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::attention::has_avx2_fma() {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn fast(w: &Q4Matrix, a: &QuantRows, p: usize, row: usize, rows: usize, out: &mut [f32]) {
            portable_body(w, a, p, row, rows, out)
        }
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { fast(w, a, p, row, rows, out) };
    }
    portable_body(w, a, p, row, rows, out)
}

#[cfg(target_arch = "x86_64")]
mod avx2;

/// The 256-bit `vpdpbusd` tile's functions, stamped out once per encoding of the instruction:
/// AVX-512 VNNI's (EVEX, with AVX-512 VL; in [`vnni`]) and AVX-VNNI's (VEX: Intel client cores
/// from Alder Lake, Sierra Forest, which have no AVX-512; in [`avx_vnni`]). The same integers, so
/// the same bits.
#[cfg(target_arch = "x86_64")]
macro_rules! vnni_tile_fns {
    ($features:literal, $dpbusd:ident, $needs:literal) => {
        /// Rows `row .. row + rows` (at most [`MR`]) of panel `p` into `out` (`rows × NR`).
        ///
        /// # Safety
        #[doc = $needs]
        #[target_feature(enable = $features)]
        pub unsafe fn tile(w: &Q4Matrix, a: &QuantRows, p: usize, row: usize, rows: usize, out: &mut [f32]) {
            match rows {
                4 => tile_n::<4>(w, a, p, row, out),
                3 => tile_n::<3>(w, a, p, row, out),
                2 => tile_n::<2>(w, a, p, row, out),
                _ => tile_n::<1>(w, a, p, row, out),
            }
        }

        #[target_feature(enable = $features)]
        unsafe fn tile_n<const R: usize>(w: &Q4Matrix, a: &QuantRows, p: usize, row: usize, out: &mut [f32]) {
            debug_assert!(R <= MR && out.len() >= R * NR);
            let groups = w.groups;
            let wp = w.nibbles.as_ptr().add(p * groups * GROUP_BYTES) as *const __m256i;
            let meta = (p * groups) * NR;
            let xrow = |r: usize| a.bytes.as_ptr().add((row + r) * a.k_pad);
            let low = _mm256_set1_epi8(15);
            let mut facc = [[_mm256_setzero_ps(); 2]; R];
            for g in 0..groups {
                let mut iacc = [[_mm256_setzero_si256(); 2]; R];
                for s in 0..STEPS {
                    let w0 = _mm256_loadu_si256(wp.add((g * STEPS + s) * 2));
                    let w1 = _mm256_loadu_si256(wp.add((g * STEPS + s) * 2 + 1));
                    let lo = [_mm256_and_si256(w0, low), _mm256_and_si256(w1, low)];
                    let hi = [
                        _mm256_and_si256(_mm256_srli_epi16(w0, 4), low),
                        _mm256_and_si256(_mm256_srli_epi16(w1, 4), low),
                    ];
                    for (r, acc) in iacc.iter_mut().enumerate() {
                        let at = xrow(r).add(g * GROUP + 8 * s);
                        let xa = _mm256_set1_epi32((at as *const i32).read_unaligned());
                        let xb = _mm256_set1_epi32((at.add(4) as *const i32).read_unaligned());
                        for h in 0..2 {
                            acc[h] = $dpbusd(acc[h], lo[h], xa);
                            acc[h] = $dpbusd(acc[h], hi[h], xb);
                        }
                    }
                }
                let m = meta + g * NR;
                let half =
                    |v: &[u16], at: usize| _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(at) as *const __m128i));
                let d = [half(&w.steps, m), half(&w.steps, m + 8)];
                let mins = [half(&w.mins, m), half(&w.mins, m + 8)];
                for (r, (f, i)) in facc.iter_mut().zip(&iacc).enumerate() {
                    let at = (row + r) * a.groups + g;
                    let xs = _mm256_set1_ps(*a.scales.get_unchecked(at));
                    let xsum = _mm256_set1_ps(*a.sums.get_unchecked(at) as f32);
                    for h in 0..2 {
                        f[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i[h]), _mm256_mul_ps(d[h], xs), f[h]);
                        f[h] = _mm256_fmadd_ps(xsum, _mm256_mul_ps(mins[h], xs), f[h]);
                    }
                }
            }
            for (r, f) in facc.iter().enumerate() {
                _mm256_storeu_ps(out.as_mut_ptr().add(r * NR), f[0]);
                _mm256_storeu_ps(out.as_mut_ptr().add(r * NR + 8), f[1]);
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::{Q4Matrix, QuantRows, GROUP, GROUP_BYTES, MAX_MR, MR, NR, STEPS};

    /// Whether this CPU runs [`tile_wide`] (AVX-512F and BW besides the 256-bit kernel's
    /// features); checked once.
    pub fn has_avx512() -> bool {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            super::has_vnni_f16c() && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")
        })
    }

    /// [`tile`] on 512-bit vectors, up to [`MAX_MR`] rows: a panel's 16 columns are one
    /// vector, so each 64-byte load of nibbles serves every row of the tile (twice the rows
    /// of the 256-bit kernel, each unpacked weight used by twice as many `vpdpbusd`), and the
    /// per-group float part is one vector per row instead of two. Lane for lane the same
    /// operations in the same order as [`tile`], so the same bits.
    ///
    /// # Safety
    /// The CPU must have what [`has_avx512`] checks.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
    pub unsafe fn tile_wide(
        w: &Q4Matrix,
        a: &QuantRows,
        apart: &[f32],
        p: usize,
        row: usize,
        rows: usize,
        out: &mut [f32],
    ) {
        match rows {
            8 => wide_n::<8>(w, a, apart, p, row, out),
            7 => wide_n::<7>(w, a, apart, p, row, out),
            6 => wide_n::<6>(w, a, apart, p, row, out),
            5 => wide_n::<5>(w, a, apart, p, row, out),
            4 => wide_n::<4>(w, a, apart, p, row, out),
            3 => wide_n::<3>(w, a, apart, p, row, out),
            2 => wide_n::<2>(w, a, apart, p, row, out),
            _ => wide_n::<1>(w, a, apart, p, row, out),
        }
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
    unsafe fn wide_n<const R: usize>(
        w: &Q4Matrix,
        a: &QuantRows,
        apart: &[f32],
        p: usize,
        row: usize,
        out: &mut [f32],
    ) {
        debug_assert!(R <= MAX_MR && out.len() >= R * NR);
        let groups = w.groups;
        let wp = w.nibbles.as_ptr().add(p * groups * GROUP_BYTES);
        let meta = (p * groups) * NR;
        let xrow = |r: usize| a.bytes.as_ptr().add((row + r) * a.k_pad);
        let low = _mm512_set1_epi8(15);
        let mut facc = [_mm512_setzero_ps(); R];
        for g in 0..groups {
            // Low and high nibbles' products in separate accumulators (two dependency chains
            // a row, not one), added at the group's end: integer sums, so the same total.
            let mut iacc = [_mm512_setzero_si512(); R];
            let mut iacc_hi = [_mm512_setzero_si512(); R];
            for s in 0..STEPS {
                let wv = _mm512_loadu_si512(wp.add((g * STEPS + s) * 64) as *const _);
                let lo = _mm512_and_si512(wv, low);
                let hi = _mm512_and_si512(_mm512_srli_epi16(wv, 4), low);
                for (r, (acc, acc_hi)) in iacc.iter_mut().zip(iacc_hi.iter_mut()).enumerate() {
                    let at = xrow(r).add(g * GROUP + 8 * s);
                    let xa = _mm512_set1_epi32((at as *const i32).read_unaligned());
                    let xb = _mm512_set1_epi32((at.add(4) as *const i32).read_unaligned());
                    *acc = _mm512_dpbusd_epi32(*acc, lo, xa);
                    *acc_hi = _mm512_dpbusd_epi32(*acc_hi, hi, xb);
                }
            }
            for (acc, acc_hi) in iacc.iter_mut().zip(&iacc_hi) {
                *acc = _mm512_add_epi32(*acc, *acc_hi);
            }
            let m = meta + g * NR;
            let half = |v: &[u16], at: usize| _mm512_cvtph_ps(_mm256_loadu_si256(v.as_ptr().add(at) as *const __m256i));
            let (d, mins) = (half(&w.steps, m), half(&w.mins, m));
            for (r, (f, i)) in facc.iter_mut().zip(&iacc).enumerate() {
                let at = (row + r) * a.groups + g;
                let xs = _mm512_set1_ps(*a.scales.get_unchecked(at));
                let xsum = _mm512_set1_ps(*a.sums.get_unchecked(at) as f32);
                *f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(*i), _mm512_mul_ps(d, xs), *f);
                *f = _mm512_fmadd_ps(xsum, _mm512_mul_ps(mins, xs), *f);
            }
        }
        // The outlier channels, as `Q4Matrix::add_outliers` adds them (a multiply then an add
        // per channel, in channel order), without storing and reloading the tile.
        let count = w.outliers.len();
        let ow = w.outlier_rows.as_ptr().add(p * count * NR);
        for (r, f) in facc.iter_mut().enumerate() {
            let values = apart.as_ptr().add((row + r) * count);
            for j in 0..count {
                *f = _mm512_add_ps(*f, _mm512_mul_ps(_mm512_set1_ps(*values.add(j)), _mm512_loadu_ps(ow.add(j * NR))));
            }
        }
        for (r, f) in facc.iter().enumerate() {
            _mm512_storeu_ps(out.as_mut_ptr().add(r * NR), *f);
        }
    }

    vnni_tile_fns!(
        "avx2,fma,f16c,avx512vnni,avx512vl",
        _mm256_dpbusd_epi32,
        "The CPU must have AVX2, FMA, F16C, AVX-512 VNNI and AVX-512 VL ([`super::has_vnni_f16c`])."
    );
}

#[cfg(target_arch = "x86_64")]
mod avx_vnni {
    use std::arch::x86_64::*;

    use super::{Q4Matrix, QuantRows, GROUP, GROUP_BYTES, MR, NR, STEPS};

    vnni_tile_fns!(
        "avx2,fma,f16c,avxvnni",
        _mm256_dpbusd_avx_epi32,
        "The CPU must have AVX2, FMA, F16C and AVX-VNNI ([`super::has_avx_vnni_f16c`])."
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::q8::test_support::{lcg, reference};

    #[test]
    fn the_files_q4_1_blocks_come_back_exactly() {
        // A Q4_1 block as llama.cpp dequantizes it: w = d·q + m with d, m f16. Column 0 uses
        // d = 0.25, m = −1 and q = j mod 16 (so q = 0 and 15 both occur: min −1, max 2.75);
        // column 1 is constant 0.5 (d = 0: every q is 0, m = 0.5).
        let (k, n) = (32, 2);
        let mut w = vec![0.0f32; k * n];
        for j in 0..k {
            w[j * n] = 0.25 * (j % 16) as f32 - 1.0;
            w[j * n + 1] = 0.5;
        }
        let q = Q4Matrix::quantize(&w, k, n);
        // x = e_j picks row j exactly: y = w[j] · 1 (x's scale is 1/127, q_x = 127).
        for j in [0, 5, 15, 31] {
            let mut x = vec![0.0f32; k];
            x[j] = 1.0;
            let y = q.matmul(&x, 1);
            assert!((y[0] - w[j * n]).abs() < 1e-6 && (y[1] - 0.5).abs() < 1e-6, "row {j}: {y:?}");
        }
    }

    #[test]
    fn close_to_f32_for_odd_shapes() {
        // k not a multiple of 32, n not a multiple of 16, m not a multiple of 4.
        for &(m, k, n) in &[(1, 40, 3), (5, 64, 17), (7, 100, 33), (9, 576, 48)] {
            let (x, w) = (lcg(m as u64, m * k), lcg(k as u64 + 7, k * n));
            let got = Q4Matrix::quantize(&w, k, n).matmul(&x, m);
            let want = reference(&x, &w, m, k, n);
            // Weights in [−1, 1] on a 16-level grid: step ≤ 2/15, error ≤ 1/15 per weight, and
            // about 1/(15·√3) ≈ 0.04 rms; a sum of k such products with |x| ≤ 1 errs by about
            // 0.04·√(k/3) typically. The bound is three times that.
            let bound = 0.12 * (k as f32 / 3.0).sqrt();
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < bound, "m={m} k={k} n={n}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn the_size_is_known_before_quantizing() {
        for (k, n) in [(40, 3), (576, 3072), (100, 33)] {
            assert_eq!(Q4Matrix::quantize(&vec![0.5; k * n], k, n).bytes(), Q4Matrix::bytes_for(k, n));
        }
        // 576 × 3072: 18 groups × 192 panels × (256 nibble bytes + 64 bytes of f16 d and m).
        assert_eq!(Q4Matrix::bytes_for(576, 3072), 18 * 192 * 320);
    }

    #[test]
    fn a_row_does_not_depend_on_its_batch() {
        let (m, k, n) = (11, 96, 40);
        let (x, w) = (lcg(3, m * k), lcg(4, k * n));
        let q = Q4Matrix::quantize(&w, k, n);
        let all = q.matmul(&x, m);
        for r in 0..m {
            let alone = q.matmul(&x[r * k..(r + 1) * k], 1);
            assert_eq!(alone, all[r * n..(r + 1) * n], "row {r}");
        }
    }

    #[test]
    fn the_portable_kernel_equals_the_vnni_one() {
        if !has_vnni_f16c() {
            eprintln!("SKIPPED the_portable_kernel_equals_the_vnni_one (int4): this CPU lacks AVX-512 VNNI or F16C");
            return;
        }
        let (m, k, n) = (6, 128, 32);
        let (x, w) = (lcg(5, m * k), lcg(6, k * n));
        let q = Q4Matrix::quantize(&w, k, n);
        let a = QuantRows::new(&x, m, k, q.groups, 0, &[]);
        for p in 0..q.panels {
            let mut portable = vec![0.0; m * NR];
            portable_body(&q, &a, p, 0, 4, &mut portable[..4 * NR]);
            portable_body(&q, &a, p, 4, 2, &mut portable[4 * NR..]);
            let mut fast = vec![0.0; m * NR];
            // SAFETY: checked by `has_vnni_f16c`.
            unsafe {
                vnni::tile(&q, &a, p, 0, 4, &mut fast[..4 * NR]);
                vnni::tile(&q, &a, p, 4, 2, &mut fast[4 * NR..]);
            }
            assert_eq!(portable, fast, "panel {p}");
        }
    }

    /// The tiles of every height 1..=[`MR`] (the bottom rows of `x`) give the portable kernel's
    /// bits, for `x` (`m × k`) times `w` (`k × n`) quantized.
    fn tiles_match_portable(
        x: &[f32],
        w: &[f32],
        (m, k, n): (usize, usize, usize),
        tile: impl Fn(&Q4Matrix, &QuantRows, usize, usize, usize, &mut [f32]),
    ) {
        let q = Q4Matrix::quantize(w, k, n);
        let a = QuantRows::new(x, m, k, q.groups, 0, &[]);
        for p in 0..q.panels {
            for rows in 1..=MR {
                let mut portable = vec![0.0; rows * NR];
                portable_body(&q, &a, p, m - rows, rows, &mut portable);
                let mut fast = vec![0.0; rows * NR];
                tile(&q, &a, p, m - rows, rows, &mut fast);
                assert_eq!(portable, fast, "panel {p}, {rows} rows");
            }
        }
    }

    #[test]
    fn the_avx_vnni_kernel_gives_the_portable_ones_bits() {
        if !has_avx_vnni_f16c() {
            eprintln!(
                "SKIPPED the_avx_vnni_kernel_gives_the_portable_ones_bits (int4): this CPU lacks AVX-VNNI or F16C"
            );
            return;
        }
        // Every tile height 1..=4, k not a multiple of 32 and n not one of 16; activations
        // at ±1 (q = ±127) against the grid's ends (nibbles 0 and 15) first, then random.
        let (m, k, n) = (7, 160, 40);
        let signs: Vec<f32> = (0..m * k).map(|i| if (i / 3) % 2 == 0 { 1.0 } else { -1.0 }).collect();
        let ends: Vec<f32> = (0..k * n).map(|i| if i % 7 == 0 { 0.0 } else { 1.0 }).collect();
        for (x, w) in [(signs, ends), (lcg(35, m * k), lcg(36, k * n))] {
            // SAFETY: checked by `has_avx_vnni_f16c`.
            tiles_match_portable(&x, &w, (m, k, n), |q, a, p, row, rows, out| unsafe {
                avx_vnni::tile(q, a, p, row, rows, out)
            });
        }
    }

    #[test]
    fn the_avx2_kernel_gives_the_portable_ones_bits() {
        if !has_avx2_f16c() {
            eprintln!("SKIPPED the_avx2_kernel_gives_the_portable_ones_bits: this CPU lacks AVX2, FMA or F16C");
            return;
        }
        // Rows of activations all +1 or all −1 (q = ±127) and weights 1 but for one 0 per
        // column and group (q = 15 but for one 0) bring each group's i16 sums to their largest,
        // ±15 · 127 · 16 = ±30480 (16 inputs per lane): no lane may saturate. Then random
        // values; every tile height 1..=4 (the one- and two-row tiles take both halves a pass),
        // k not a multiple of 32 (padding) and n not one of 16.
        let (m, k, n) = (7, 160, 40);
        let extreme: Vec<f32> = (0..m * k).map(|i| if (i / k) % 2 == 0 { 1.0 } else { -1.0 }).collect();
        let top: Vec<f32> = (0..k * n).map(|i| if (i / n) % GROUP == (i % n) % GROUP { 0.0 } else { 1.0 }).collect();
        for (x, w) in [(extreme, top), (lcg(11, m * k), lcg(12, k * n)), (lcg(13, m * k), lcg(14, k * n))] {
            // SAFETY: checked by `has_avx2_f16c`.
            tiles_match_portable(&x, &w, (m, k, n), |q, a, p, row, rows, out| unsafe {
                avx2::tile(q, a, p, row, rows, out)
            });
        }
    }

    #[test]
    fn the_512_bit_kernel_gives_the_256_bit_ones_bits() {
        if !vnni::has_avx512() {
            eprintln!("SKIPPED the_512_bit_kernel_gives_the_256_bit_ones_bits: this CPU lacks AVX-512F/BW/VNNI");
            return;
        }
        // 13 rows: a tile of 8 and one of 5 against tiles of 4, 4, 4 and 1; three outlier
        // channels (the wide kernel adds them itself, the narrow one through add_outliers).
        let (m, k, n) = (13, 160, 48);
        let (x, w) = (lcg(7, m * k), lcg(8, k * n));
        for outliers in [vec![], vec![3, 77, 150]] {
            let q = Q4Matrix::quantize_with_outliers(&w, k, n, &outliers);
            let a = QuantRows::new(&x, m, k, q.groups, 0, &q.outliers);
            let apart: Vec<f32> = x.chunks_exact(k).flat_map(|r| q.outliers.iter().map(|&o| r[o])).collect();
            for p in 0..q.panels {
                let (mut narrow, mut wide) = (vec![0.0; m * NR], vec![0.0; m * NR]);
                // SAFETY: checked by `has_avx512` (which implies the 256-bit kernel's features).
                unsafe {
                    for row in (0..m).step_by(MR) {
                        let rows = MR.min(m - row);
                        let tile = &mut narrow[row * NR..(row + rows) * NR];
                        vnni::tile(&q, &a, p, row, rows, tile);
                        q.add_outliers(&apart, p, row, tile);
                    }
                    vnni::tile_wide(&q, &a, &apart, p, 0, 8, &mut wide[..8 * NR]);
                    vnni::tile_wide(&q, &a, &apart, p, 8, 5, &mut wide[8 * NR..]);
                }
                assert_ne!(wide, vec![0.0; m * NR]);
                assert_eq!(wide, narrow, "panel {p}, outliers {outliers:?}");
            }
        }
    }
}
