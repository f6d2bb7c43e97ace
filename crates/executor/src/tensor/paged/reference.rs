//! The CPU reference of the paged-attention kernels: the same grid decomposition, the same
//! index arithmetic and the same order of softmax steps as `kernels/paged_attention.cu`, loop
//! for loop (decode: per head and partition, then the reduce; prefill: per tile, head and
//! query, an online softmax over key tiles), in f32 over f32 or bf16 storage as the kernels
//! accumulate in f32 over bf16. It is what the tensor executor runs on the CPU device, so every
//! test of that executor against the CPU executor checks these tables and this arithmetic;
//! only the order of a dot product's terms differs on the GPU (lanes, then a shuffle tree).

use candle_core::WithDType;

use super::plan::{kv_head, partitions, slot, AttentionPlan, AttentionShape, K_TILE, PARTITION_SIZE};

fn f<T: WithDType>(x: T) -> f32 {
    x.to_f64() as f32
}

fn dot<T: WithDType>(q: &[f32], k: &[T]) -> f32 {
    q.iter().zip(k).map(|(&a, &b)| a * f(b)).sum()
}

/// Attention of the plan's rows: `q` and the result are `rows × heads × head_dim`, `k` and `v`
/// one layer's cache (`slots × kv_heads × head_dim`).
pub fn attention<T: WithDType>(plan: &AttentionPlan, q: &[T], k: &[T], v: &[T], scale: f32) -> Vec<T> {
    let s = plan.shape;
    let mut out = vec![T::from_f64(0.0); plan.rows * s.heads * s.head_dim];
    decode(plan, q, k, v, scale, &mut out);
    prefill(plan, q, k, v, scale, &mut out);
    out
}

/// Query head `h` of row `row`, in f32.
fn query<T: WithDType>(q: &[T], s: &AttentionShape, row: usize, h: usize) -> Vec<f32> {
    let at = (row * s.heads + h) * s.head_dim;
    q[at..at + s.head_dim].iter().map(|&x| f(x)).collect()
}

/// `paged_decode` then `paged_decode_reduce`: split-K over partitions of [`PARTITION_SIZE`].
fn decode<T: WithDType>(plan: &AttentionPlan, q: &[T], k: &[T], v: &[T], scale: f32, out: &mut [T]) {
    let s = plan.shape;
    let (d, kv_dim) = (s.head_dim, s.kv_heads * s.head_dim);
    for i in 0..plan.num_decode() {
        let (row, seq) = (plan.decode_rows[2 * i] as usize, plan.decode_rows[2 * i + 1] as usize);
        let ctx = plan.ctx_lens[seq] as usize;
        let table = plan.table(seq);
        for h in 0..s.heads {
            let kvh = kv_head(h, s.heads, s.kv_heads);
            let qv = query(q, &s, row, h);
            let row_of = |pos: usize| slot(table, pos, s.block_size) * kv_dim + kvh * d;
            // One block of threads per partition: (max, sum, normalized partial).
            let parts: Vec<(f32, f32, Vec<f32>)> = (0..partitions(ctx))
                .map(|p| {
                    let start = p * PARTITION_SIZE;
                    let n = (start + PARTITION_SIZE).min(ctx) - start;
                    let mut logits: Vec<f32> = (0..n).map(|t| dot(&qv, &k[row_of(start + t)..][..d]) * scale).collect();
                    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    logits.iter_mut().for_each(|l| *l = (*l - m).exp());
                    let sum: f32 = logits.iter().sum();
                    let partial = (0..d)
                        .map(|c| (0..n).map(|t| logits[t] * f(v[row_of(start + t) + c])).sum::<f32>() / sum)
                        .collect();
                    (m, sum, partial)
                })
                .collect();
            let dst = &mut out[(row * s.heads + h) * d..][..d];
            if plan.max_partitions == 1 {
                dst.iter_mut().zip(&parts[0].2).for_each(|(o, &a)| *o = T::from_f64(a as f64));
                continue;
            }
            // The reduce: partition p weighs exp_sum_p · e^(max_p − max).
            let m = parts.iter().map(|p| p.0).fold(f32::NEG_INFINITY, f32::max);
            let weights: Vec<f32> = parts.iter().map(|p| p.1 * (p.0 - m).exp()).collect();
            let total: f32 = weights.iter().sum();
            for (c, o) in dst.iter_mut().enumerate() {
                let a: f32 = parts.iter().zip(&weights).map(|(p, w)| p.2[c] * w).sum();
                *o = T::from_f64((a / total) as f64);
            }
        }
    }
}

/// `paged_prefill`: each tile's queries against key tiles of [`K_TILE`], causal inside the
/// chunk, with a running max and sum per query.
fn prefill<T: WithDType>(plan: &AttentionPlan, q: &[T], k: &[T], v: &[T], scale: f32, out: &mut [T]) {
    let s = plan.shape;
    let (d, kv_dim) = (s.head_dim, s.kv_heads * s.head_dim);
    for tile in plan.tiles.chunks_exact(4) {
        let [seq, first_row, first_pos, len] = [tile[0], tile[1], tile[2], tile[3]].map(|x| x as usize);
        let table = plan.table(seq);
        let kv_len = first_pos + len;
        for h in 0..s.heads {
            let kvh = kv_head(h, s.heads, s.kv_heads);
            let row_of = |pos: usize| slot(table, pos, s.block_size) * kv_dim + kvh * d;
            for r in 0..len {
                let qv = query(q, &s, first_row + r, h);
                let qpos = first_pos + r;
                let (mut m, mut l, mut acc) = (f32::NEG_INFINITY, 0.0f32, vec![0.0f32; d]);
                for kt in (0..kv_len).step_by(K_TILE) {
                    // Lane j scores key kt + j; keys after the query are masked.
                    let scores: Vec<f32> = (kt..kt + K_TILE)
                        .map(
                            |key| {
                                if key <= qpos {
                                    dot(&qv, &k[row_of(key)..][..d]) * scale
                                } else {
                                    f32::NEG_INFINITY
                                }
                            },
                        )
                        .collect();
                    let new_m = scores.iter().copied().fold(m, f32::max);
                    if new_m == f32::NEG_INFINITY {
                        continue;
                    }
                    let p: Vec<f32> =
                        scores.iter().map(|&x| if x == f32::NEG_INFINITY { 0.0 } else { (x - new_m).exp() }).collect();
                    let corr = (m - new_m).exp();
                    l = l * corr + p.iter().sum::<f32>();
                    acc.iter_mut().for_each(|a| *a *= corr);
                    for (j, &pt) in p.iter().enumerate().filter(|(_, &pt)| pt != 0.0) {
                        let at = row_of(kt + j);
                        acc.iter_mut().enumerate().for_each(|(c, a)| *a += pt * f(v[at + c]));
                    }
                    m = new_m;
                }
                let dst = &mut out[((first_row + r) * s.heads + h) * d..][..d];
                dst.iter_mut().zip(&acc).for_each(|(o, &a)| *o = T::from_f64((a / l) as f64));
            }
        }
    }
}

/// `write_kv_slots`: row `r` of `src` (`rows × kv_dim`) into slot `slots[r]` of `cache`.
pub fn write_slots<T: Copy>(cache: &mut [T], src: &[T], slots: &[u32], kv_dim: usize) {
    for (r, &slot) in slots.iter().enumerate() {
        let dst = slot as usize * kv_dim;
        cache[dst..dst + kv_dim].copy_from_slice(&src[r * kv_dim..(r + 1) * kv_dim]);
    }
}

/// `copy_blocks`: block `pairs[2i]` of `src` to block `pairs[2i + 1]` of `dst`, a block being
/// `block_elems` contiguous elements.
pub fn copy_blocks<T: Copy>(dst: &mut [T], src: &[T], pairs: &[u32], block_elems: usize) {
    for pair in pairs.chunks_exact(2) {
        let (from, to) = (pair[0] as usize * block_elems, pair[1] as usize * block_elems);
        dst[to..to + block_elems].copy_from_slice(&src[from..from + block_elems]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SeqSlice;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use tandem_core::BlockId;

    /// Plain causal attention of one sequence's query row at position `qpos`, reading K/V by
    /// position from `kpos`/`vpos` (`positions × kv_heads × d`), in f64.
    fn naive(q: &[f32], kpos: &[f32], vpos: &[f32], qpos: usize, s: &AttentionShape, scale: f32) -> Vec<f32> {
        let d = s.head_dim;
        let mut out = vec![0.0f32; s.heads * d];
        for h in 0..s.heads {
            let kvh = kv_head(h, s.heads, s.kv_heads);
            let at = |p: usize| (p * s.kv_heads + kvh) * d;
            let scores: Vec<f64> = (0..=qpos)
                .map(|p| (0..d).map(|c| q[h * d + c] as f64 * kpos[at(p) + c] as f64).sum::<f64>() * scale as f64)
                .collect();
            let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|x| (x - m).exp()).collect();
            let sum: f64 = e.iter().sum();
            for c in 0..d {
                out[h * d + c] = ((0..=qpos).map(|p| e[p] * vpos[at(p) + c] as f64).sum::<f64>() / sum) as f32;
            }
        }
        out
    }

    /// A random step: sequences with random contexts (some past several partitions), random
    /// chunk lengths (1 = decode) and shuffled block tables over one pool; checks every row
    /// against plain attention.
    fn check_random_step(seed: u64, shape: AttentionShape) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (d, kv_dim, bs) = (shape.head_dim, shape.kv_heads * shape.head_dim, shape.block_size);
        let nseq = rng.random_range(1..5usize);
        // (start_pos, len): contexts up to 1,300 tokens (three partitions).
        let lens: Vec<(usize, usize)> = (0..nseq)
            .map(|_| {
                let len = if rng.random_bool(0.5) { 1 } else { rng.random_range(2..40) };
                (rng.random_range(0..1300usize), len)
            })
            .collect();
        let blocks_needed: Vec<usize> = lens.iter().map(|&(p, n)| (p + n).div_ceil(bs)).collect();
        let num_blocks = blocks_needed.iter().sum::<usize>() + 3;
        let mut pool: Vec<u32> = (0..num_blocks as u32).collect();
        for i in (1..pool.len()).rev() {
            pool.swap(i, rng.random_range(0..=i));
        }
        let mut tables = Vec::new();
        let mut next = 0;
        for &b in &blocks_needed {
            tables.push(pool[next..next + b].iter().copied().map(BlockId).collect::<Vec<_>>());
            next += b;
        }
        let rows: usize = lens.iter().map(|l| l.1).sum();
        let mut seqs = Vec::new();
        let mut row = 0;
        for (i, &(start_pos, len)) in lens.iter().enumerate() {
            seqs.push(SeqSlice { start_row: row, len, start_pos, table: &tables[i] });
            row += len;
        }
        let plan = AttentionPlan::new(shape, &seqs, rows, num_blocks).unwrap();
        let mut rnd = |n: usize| (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<f32>>();
        // Each sequence's K/V by position, written into the pool through its table.
        let kv_by_pos: Vec<(Vec<f32>, Vec<f32>)> =
            lens.iter().map(|&(p, n)| (rnd((p + n) * kv_dim), rnd((p + n) * kv_dim))).collect();
        let (mut k, mut v) = (vec![0.0f32; num_blocks * bs * kv_dim], vec![0.0f32; num_blocks * bs * kv_dim]);
        for (si, (kp, vp)) in kv_by_pos.iter().enumerate() {
            let table: Vec<u32> = tables[si].iter().map(|b| b.0).collect();
            let slots: Vec<u32> = (0..kp.len() / kv_dim).map(|p| slot(&table, p, bs) as u32).collect();
            write_slots(&mut k, kp, &slots, kv_dim);
            write_slots(&mut v, vp, &slots, kv_dim);
        }
        let q = rnd(rows * shape.heads * d);
        let scale = 1.0 / (d as f32).sqrt();
        let out = attention(&plan, &q, &k, &v, scale);
        for (si, s) in seqs.iter().enumerate() {
            for i in 0..s.len {
                let r = s.start_row + i;
                let qrow = &q[r * shape.heads * d..(r + 1) * shape.heads * d];
                let want = naive(qrow, &kv_by_pos[si].0, &kv_by_pos[si].1, s.start_pos + i, &shape, scale);
                let got = &out[r * shape.heads * d..(r + 1) * shape.heads * d];
                let err = want.iter().zip(got).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                assert!(
                    err < 2e-5,
                    "seed {seed} {shape:?}: sequence {si} row {i} (context {}): |Δ| {err}",
                    s.start_pos + s.len
                );
            }
        }
    }

    #[test]
    fn random_steps_equal_plain_attention() {
        let shapes = [
            AttentionShape { heads: 4, kv_heads: 2, head_dim: 8, block_size: 4 },
            AttentionShape { heads: 6, kv_heads: 1, head_dim: 16, block_size: 16 },
            AttentionShape { heads: 2, kv_heads: 2, head_dim: 32, block_size: 7 },
        ];
        for seed in 0..24 {
            check_random_step(seed, shapes[seed as usize % shapes.len()]);
        }
    }

    #[test]
    fn bf16_storage_accumulates_in_f32() {
        // One decode row over 600 positions (two partitions) of bf16 K/V: the result equals
        // the f32 reference over the same (bf16-rounded) values, within bf16 rounding of the output.
        let shape = AttentionShape { heads: 2, kv_heads: 1, head_dim: 8, block_size: 16 };
        let table: Vec<BlockId> = (0..38).rev().map(BlockId).collect();
        let s = [SeqSlice { start_row: 0, len: 1, start_pos: 599, table: &table }];
        let plan = AttentionPlan::new(shape, &s, 1, 38).unwrap();
        assert_eq!(plan.max_partitions, 2);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut rnd = |n| (0..n).map(|_| half::bf16::from_f32(rng.random_range(-1.0f32..1.0))).collect::<Vec<_>>();
        let (q, k, v) = (rnd(16), rnd(38 * 16 * 8), rnd(38 * 16 * 8));
        let widen = |x: &[half::bf16]| x.iter().map(|b| b.to_f32()).collect::<Vec<f32>>();
        let want = attention(&plan, &widen(&q), &widen(&k), &widen(&v), 0.35);
        let got = attention(&plan, &q, &k, &v, 0.35);
        for (w, g) in want.iter().zip(&got) {
            assert!((w - g.to_f32()).abs() <= w.abs() / 128.0 + 1e-6, "{w} vs {g}");
        }
    }

    #[test]
    fn block_copies_move_whole_blocks() {
        // Blocks of 3 elements: src blocks 2 and 0 into dst blocks 0 and 1.
        let src = [0, 1, 2, 3, 4, 5, 6, 7, 8];
        let mut dst = [0; 6];
        copy_blocks(&mut dst, &src, &[2, 0, 0, 1], 3);
        assert_eq!(dst, [6, 7, 8, 0, 1, 2]);
    }
}
