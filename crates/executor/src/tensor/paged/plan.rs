//! A step's attention plan: the plain tables the paged-attention kernels read — block tables
//! padded to one width, context lengths, each row's slot, the decode rows and the prefill
//! query tiles — built once per step on the host, and the index arithmetic the kernels
//! (`kernels/paged_attention.cu`) and the CPU reference share. The constants equal the kernel
//! file's `#define`s (a test reads that file).

use crate::model::SeqSlice;
use crate::ExecError;

/// Context tokens one decode block of threads covers (vLLM's `PARTITION_SIZE`, split-K).
pub const PARTITION_SIZE: usize = 512;
/// Query rows of one sequence a prefill block of threads covers.
pub const Q_TILE: usize = 16;
/// Key positions a prefill block stages in shared memory at a time (one per lane).
pub const K_TILE: usize = 32;
/// Threads per block of every attention kernel.
pub const NUM_THREADS: usize = 128;
/// The head dimensions the kernels are instantiated for.
pub const KERNEL_HEAD_DIMS: [usize; 4] = [32, 64, 96, 128];

/// The slot (row of a layer's cache) holding position `pos` of the sequence whose block table
/// is `table`: block `table[pos / block_size]`, offset `pos % block_size`.
pub fn slot(table: &[u32], pos: usize, block_size: usize) -> usize {
    table[pos / block_size] as usize * block_size + pos % block_size
}

/// The KV head query head `h` reads (grouped-query attention: `heads / kv_heads` query heads
/// per KV head, consecutive).
pub fn kv_head(h: usize, heads: usize, kv_heads: usize) -> usize {
    h / (heads / kv_heads)
}

/// The split-K partitions of a `ctx`-token context.
pub fn partitions(ctx: usize) -> usize {
    ctx.div_ceil(PARTITION_SIZE)
}

/// The attention's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
}

/// One step's tables, as the kernels read them (all `u32`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttentionPlan {
    pub shape: AttentionShape,
    /// Rows of the packed batch.
    pub rows: usize,
    /// Blocks of the pool the tables index.
    pub num_blocks: usize,
    /// Width of `block_tables` (the longest table).
    pub max_blocks: usize,
    /// `seqs × max_blocks`, each table padded with 0.
    pub block_tables: Vec<u32>,
    /// Per sequence, its context after this step (`start_pos + len`).
    pub ctx_lens: Vec<u32>,
    /// Per row, the slot its new K/V row is written to.
    pub slots: Vec<u32>,
    /// `(row, seq)` pairs, flattened: sequences fed one token this step.
    pub decode_rows: Vec<u32>,
    /// `(seq, first_row, first_pos, len)` quads, flattened: sequences fed more than one token,
    /// cut into tiles of at most [`Q_TILE`] rows.
    pub tiles: Vec<u32>,
    /// Partitions of the longest decode context (0 without decode rows).
    pub max_partitions: usize,
}

fn narrow(v: usize, what: &str) -> Result<u32, ExecError> {
    u32::try_from(v).map_err(|_| ExecError::InvalidStep(format!("{what} {v} does not fit the kernels' 32 bits")))
}

impl AttentionPlan {
    /// The plan of a packed batch of `rows` rows whose sequences are `seqs`, over a pool of
    /// `num_blocks` blocks. A table that is too short for its context, a block beyond the pool
    /// or rows outside the batch are errors, not panics.
    pub fn new(
        shape: AttentionShape,
        seqs: &[SeqSlice<'_>],
        rows: usize,
        num_blocks: usize,
    ) -> Result<Self, ExecError> {
        let bs = shape.block_size;
        if bs == 0 || shape.kv_heads == 0 || !shape.heads.is_multiple_of(shape.kv_heads) {
            return Err(ExecError::InvalidStep(format!("attention shape {shape:?}")));
        }
        let max_blocks = seqs.iter().map(|s| s.table.len()).max().unwrap_or(0).max(1);
        let mut plan = Self {
            shape,
            rows,
            num_blocks,
            max_blocks,
            block_tables: vec![0; seqs.len() * max_blocks],
            ctx_lens: Vec::with_capacity(seqs.len()),
            slots: vec![0; rows],
            decode_rows: Vec::new(),
            tiles: Vec::new(),
            max_partitions: 0,
        };
        for (si, s) in seqs.iter().enumerate() {
            let ctx = s.start_pos + s.len;
            if s.start_row + s.len > rows {
                return Err(ExecError::InvalidStep(format!(
                    "rows {}..{} beyond a batch of {rows}",
                    s.start_row,
                    s.start_row + s.len
                )));
            }
            if s.table.len() * bs < ctx {
                return Err(ExecError::InvalidStep(format!(
                    "a block table of {} blocks cannot hold {ctx} positions",
                    s.table.len()
                )));
            }
            let table = &mut plan.block_tables[si * max_blocks..si * max_blocks + s.table.len()];
            for (slot, b) in table.iter_mut().zip(s.table) {
                if b.index() >= num_blocks {
                    return Err(ExecError::InvalidStep(format!("block {} beyond the pool of {num_blocks}", b.0)));
                }
                *slot = b.0;
            }
            let table = &plan.block_tables[si * max_blocks..(si + 1) * max_blocks];
            for i in 0..s.len {
                plan.slots[s.start_row + i] = narrow(slot(table, s.start_pos + i, bs), "slot")?;
            }
            plan.ctx_lens.push(narrow(ctx, "context")?);
            let (si32, row) = (narrow(si, "sequence")?, narrow(s.start_row, "row")?);
            if s.len == 1 {
                plan.decode_rows.extend([row, si32]);
                plan.max_partitions = plan.max_partitions.max(partitions(ctx));
            } else {
                for first in (0..s.len).step_by(Q_TILE) {
                    let len = Q_TILE.min(s.len - first);
                    plan.tiles.extend([si32, row + first as u32, narrow(s.start_pos + first, "position")?, len as u32]);
                }
            }
        }
        Ok(plan)
    }

    /// Decode rows of the plan.
    pub fn num_decode(&self) -> usize {
        self.decode_rows.len() / 2
    }

    /// Prefill tiles of the plan.
    pub fn num_tiles(&self) -> usize {
        self.tiles.len() / 4
    }

    /// Sequence `seq`'s padded block table.
    pub fn table(&self, seq: usize) -> &[u32] {
        &self.block_tables[seq * self.max_blocks..(seq + 1) * self.max_blocks]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_core::BlockId;

    fn ids(v: &[u32]) -> Vec<BlockId> {
        v.iter().copied().map(BlockId).collect()
    }

    const SHAPE: AttentionShape = AttentionShape { heads: 4, kv_heads: 2, head_dim: 8, block_size: 4 };

    #[test]
    fn slots_decode_rows_and_tiles_of_a_mixed_step() {
        // Sequence 0: a 20-token chunk from position 6 through blocks [5, 1, 7, 3, 2, 0, 4]
        // (positions 6..26); sequence 1: one decode token at position 9 through [6, 8, 9].
        let (t0, t1) = (ids(&[5, 1, 7, 3, 2, 0, 4]), ids(&[6, 8, 9]));
        let seqs = [
            SeqSlice { start_row: 0, len: 20, start_pos: 6, table: &t0 },
            SeqSlice { start_row: 20, len: 1, start_pos: 9, table: &t1 },
        ];
        let p = AttentionPlan::new(SHAPE, &seqs, 21, 10).unwrap();
        assert_eq!(p.max_blocks, 7);
        assert_eq!(&p.block_tables[7..], &[6, 8, 9, 0, 0, 0, 0]);
        assert_eq!(p.ctx_lens, vec![26, 10]);
        // Row 0 = position 6 = block index 1 (block 1), offset 2 → slot 1·4 + 2 = 6;
        // row 2 = position 8 = block index 2 (block 7), offset 0 → 28; row 20 = position 9 of
        // sequence 1 = block index 2 (block 9), offset 1 → 37.
        assert_eq!((p.slots[0], p.slots[2], p.slots[20]), (6, 28, 37));
        assert_eq!(p.decode_rows, vec![20, 1]);
        // 20 rows in tiles of 16: rows 0..16 from position 6, rows 16..20 from position 22.
        assert_eq!(p.tiles, vec![0, 0, 6, 16, 0, 16, 22, 4]);
        // A 10-token context is one partition; 513 are two.
        assert_eq!((p.max_partitions, partitions(512), partitions(513)), (1, 1, 2));
        // Heads 0, 1 read KV head 0; heads 2, 3 KV head 1.
        assert_eq!((0..4).map(|h| kv_head(h, 4, 2)).collect::<Vec<_>>(), vec![0, 0, 1, 1]);
    }

    #[test]
    fn bad_tables_are_errors() {
        let short = ids(&[0, 1]);
        // 2 blocks of 4 hold 8 positions, not 9.
        let s = [SeqSlice { start_row: 0, len: 1, start_pos: 8, table: &short }];
        assert!(matches!(AttentionPlan::new(SHAPE, &s, 1, 10), Err(ExecError::InvalidStep(_))));
        let far = ids(&[0, 12]);
        let s = [SeqSlice { start_row: 0, len: 1, start_pos: 4, table: &far }];
        assert!(matches!(AttentionPlan::new(SHAPE, &s, 1, 10), Err(ExecError::InvalidStep(_))));
        let ok = ids(&[0, 1]);
        let s = [SeqSlice { start_row: 3, len: 2, start_pos: 0, table: &ok }];
        assert!(matches!(AttentionPlan::new(SHAPE, &s, 4, 10), Err(ExecError::InvalidStep(_))));
        let bad = AttentionShape { kv_heads: 3, ..SHAPE };
        assert!(matches!(AttentionPlan::new(bad, &[], 0, 10), Err(ExecError::InvalidStep(_))));
    }
}
