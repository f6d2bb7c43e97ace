//! The paged KV cache in host memory: per layer, `num_blocks` blocks of `block_size` tokens ×
//! `kv_dim` (KV heads × head dim) floats for K and the same for V, addressed through the
//! scheduler's block tables, plus the host (swap) tier with the same layout. vLLM's
//! `CacheEngine`, on plain `Vec<f32>`.
//!
//! Within a block, V is token-major (one row per token, what the weighted sum of values reads)
//! and K is channel-major (`kv_dim × block_size`: channel `c` of every token of the block side
//! by side), so that a query's scores against a whole block are `head_dim` vector fused
//! multiply-adds with no transposes or horizontal sums — vLLM's CPU backend also keeps K
//! transposed per block. Blocks are still contiguous, so swapping copies them whole.

use tandem_core::{BlockId, HostBlockId};

use crate::ExecError;

/// K/V storage for every layer, in blocks. Forwards read and write it through a [`KvView`].
#[derive(Debug)]
pub struct PagedKvCache {
    block_size: usize,
    kv_dim: usize,
    num_blocks: usize,
    num_host_blocks: usize,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    host_k: Vec<Vec<f32>>,
    host_v: Vec<Vec<f32>>,
}

impl PagedKvCache {
    pub fn new(layers: usize, kv_dim: usize, block_size: usize, num_blocks: usize, num_host_blocks: usize) -> Self {
        let dev = num_blocks * block_size * kv_dim;
        let host = num_host_blocks * block_size * kv_dim;
        Self {
            block_size,
            kv_dim,
            num_blocks,
            num_host_blocks,
            k: (0..layers).map(|_| vec![0.0; dev]).collect(),
            v: (0..layers).map(|_| vec![0.0; dev]).collect(),
            host_k: (0..layers).map(|_| vec![0.0; host]).collect(),
            host_v: (0..layers).map(|_| vec![0.0; host]).collect(),
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    fn offset(&self, block: BlockId, slot: usize) -> usize {
        (block.index() * self.block_size + slot) * self.kv_dim
    }

    /// A view of the device tier for forwards, several of which may run at once (one per
    /// execution stream): see [`KvView::write`] for what they must keep apart.
    pub(crate) fn view(&mut self) -> KvView<'_> {
        KvView {
            k: self.k.iter_mut().map(|l| l.as_mut_ptr()).collect(),
            v: self.v.iter_mut().map(|l| l.as_mut_ptr()).collect(),
            host_k: self.host_k.iter_mut().map(|l| l.as_mut_ptr()).collect(),
            host_v: self.host_v.iter_mut().map(|l| l.as_mut_ptr()).collect(),
            block_size: self.block_size,
            kv_dim: self.kv_dim,
            num_blocks: self.num_blocks,
            num_host_blocks: self.num_host_blocks,
            _cache: std::marker::PhantomData,
        }
    }

    /// Checks every block of a table is in range.
    pub fn check_table(&self, table: &[BlockId]) -> Result<(), ExecError> {
        check_in_pool(table, self.num_blocks)
    }

    /// Stores the K and V rows of the token at `pos` of a sequence with block table `table`.
    pub fn write(&mut self, layer: usize, table: &[BlockId], pos: usize, k: &[f32], v: &[f32]) {
        // SAFETY: `&mut self`: the view is this call's alone.
        unsafe { self.view().write(layer, table, pos, k, v) }
    }

    /// Block `block`'s keys in layer `layer`, channel-major: `kv_dim × block_size`.
    #[inline]
    pub fn key_block(&self, layer: usize, block: BlockId) -> &[f32] {
        let n = self.block_size * self.kv_dim;
        &self.k[layer][block.index() * n..(block.index() + 1) * n]
    }

    /// Block `block`'s values in layer `layer`, token-major: `block_size × kv_dim`.
    #[inline]
    pub fn value_block(&self, layer: usize, block: BlockId) -> &[f32] {
        let n = self.block_size * self.kv_dim;
        &self.v[layer][block.index() * n..(block.index() + 1) * n]
    }

    /// The V row (all KV heads) of the token at `pos`.
    #[inline]
    pub fn value_at(&self, layer: usize, table: &[BlockId], pos: usize) -> &[f32] {
        let o = self.offset(table[pos / self.block_size], pos % self.block_size);
        &self.v[layer][o..o + self.kv_dim]
    }

    /// The K row (all KV heads) of the token at `pos`, gathered from its block.
    pub fn key_at(&self, layer: usize, table: &[BlockId], pos: usize) -> Vec<f32> {
        let keys = self.key_block(layer, table[pos / self.block_size]);
        (0..self.kv_dim).map(|c| keys[c * self.block_size + pos % self.block_size]).collect()
    }

    /// Copies block `src` of `from` to block `dst` of `to`, every layer.
    fn copy_block(from: &[Vec<f32>], to: &mut [Vec<f32>], src: usize, dst: usize, n: usize) {
        for (f, t) in from.iter().zip(to.iter_mut()) {
            t[dst * n..(dst + 1) * n].copy_from_slice(&f[src * n..(src + 1) * n]);
        }
    }

    /// Copies device blocks to the host tier.
    pub fn swap_out(&mut self, pairs: &[(BlockId, HostBlockId)]) -> Result<(), ExecError> {
        let n = self.block_size * self.kv_dim;
        for &(d, h) in pairs {
            if d.index() >= self.num_blocks || h.index() >= self.num_host_blocks {
                return Err(ExecError::InvalidStep(format!("swap-out pair ({}, {}) out of range", d.0, h.0)));
            }
            Self::copy_block(&self.k, &mut self.host_k, d.index(), h.index(), n);
            Self::copy_block(&self.v, &mut self.host_v, d.index(), h.index(), n);
        }
        Ok(())
    }

    /// Copies host blocks back to the device tier.
    pub fn swap_in(&mut self, pairs: &[(HostBlockId, BlockId)]) -> Result<(), ExecError> {
        let n = self.block_size * self.kv_dim;
        for &(h, d) in pairs {
            if d.index() >= self.num_blocks || h.index() >= self.num_host_blocks {
                return Err(ExecError::InvalidStep(format!("swap-in pair ({}, {}) out of range", h.0, d.0)));
            }
            Self::copy_block(&self.host_k, &mut self.k, h.index(), d.index(), n);
            Self::copy_block(&self.host_v, &mut self.v, h.index(), d.index(), n);
        }
        Ok(())
    }
}

/// Every block of `table` is in a pool of `num_blocks`.
fn check_in_pool(table: &[BlockId], num_blocks: usize) -> Result<(), ExecError> {
    match table.iter().find(|b| b.index() >= num_blocks) {
        Some(b) => Err(ExecError::InvalidStep(format!("block {} beyond the pool of {}", b.0, num_blocks))),
        None => Ok(()),
    }
}

/// The device tier of a [`PagedKvCache`] borrowed exclusively by one step, shared by the
/// step's forwards (one per execution stream, on their own threads). Reads are safe; a write is
/// `unsafe`: the forwards sharing a view must write disjoint blocks and never read a block
/// another one writes — the scheduler's invariant that a block written in a step belongs to
/// that sequence alone (shared prefix blocks are full and read-only), which the CPU executor
/// checks for every step before it runs micro-batches at once.
pub(crate) struct KvView<'a> {
    k: Vec<*mut f32>,
    v: Vec<*mut f32>,
    host_k: Vec<*mut f32>,
    host_v: Vec<*mut f32>,
    block_size: usize,
    kv_dim: usize,
    num_blocks: usize,
    num_host_blocks: usize,
    _cache: std::marker::PhantomData<&'a mut PagedKvCache>,
}

// SAFETY: the pointers are into buffers the view borrows exclusively for its lifetime; access
// from several threads follows `write`'s contract.
unsafe impl Send for KvView<'_> {}
unsafe impl Sync for KvView<'_> {}

impl KvView<'_> {
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    fn block_len(&self) -> usize {
        self.block_size * self.kv_dim
    }

    /// Checks every block of a table is in range.
    pub fn check_table(&self, table: &[BlockId]) -> Result<(), ExecError> {
        check_in_pool(table, self.num_blocks)
    }

    /// Block `block`'s keys in layer `layer`, channel-major: `kv_dim × block_size`.
    #[inline]
    pub fn key_block(&self, layer: usize, block: BlockId) -> &[f32] {
        let n = self.block_len();
        assert!(block.index() < self.num_blocks);
        // SAFETY: in bounds (checked); no forward writes a block another reads (`write`).
        unsafe { std::slice::from_raw_parts(self.k[layer].add(block.index() * n), n) }
    }

    /// Block `block`'s values in layer `layer`, token-major: `block_size × kv_dim`.
    #[inline]
    pub fn value_block(&self, layer: usize, block: BlockId) -> &[f32] {
        let n = self.block_len();
        assert!(block.index() < self.num_blocks);
        // SAFETY: as for `key_block`.
        unsafe { std::slice::from_raw_parts(self.v[layer].add(block.index() * n), n) }
    }

    /// Copies whole blocks, every layer, K and V: `(src, dst)` pairs from the `from` tier
    /// (device when `to_host`) to the other.
    ///
    /// # Safety
    /// No other thread may touch a destination block, nor write a source block, meanwhile.
    unsafe fn copy_blocks(&self, pairs: impl Iterator<Item = (usize, usize)>, to_host: bool) -> Result<(), ExecError> {
        let n = self.block_len();
        let (from, to) = if to_host {
            ((&self.k, &self.v), (&self.host_k, &self.host_v))
        } else {
            ((&self.host_k, &self.host_v), (&self.k, &self.v))
        };
        let (from_len, to_len) =
            if to_host { (self.num_blocks, self.num_host_blocks) } else { (self.num_host_blocks, self.num_blocks) };
        for (src, dst) in pairs {
            if src >= from_len || dst >= to_len {
                return Err(ExecError::InvalidStep(format!("swap pair ({src}, {dst}) out of range")));
            }
            for (f, t) in [(from.0, to.0), (from.1, to.1)] {
                for (fl, tl) in f.iter().zip(t.iter()) {
                    // SAFETY: in bounds (checked); exclusive by the caller's contract; the two
                    // tiers are separate buffers, so the ranges never overlap.
                    unsafe { std::ptr::copy_nonoverlapping(fl.add(src * n), tl.add(dst * n), n) };
                }
            }
        }
        Ok(())
    }

    /// Copies device blocks to the host tier (a swap-out).
    ///
    /// # Safety
    /// As [`Self::copy_blocks`]: no other thread writes the device blocks or touches the host
    /// blocks meanwhile.
    pub unsafe fn swap_out(&self, pairs: &[(BlockId, HostBlockId)]) -> Result<(), ExecError> {
        unsafe { self.copy_blocks(pairs.iter().map(|(d, h)| (d.index(), h.index())), true) }
    }

    /// Copies host blocks back to the device tier (a swap-in).
    ///
    /// # Safety
    /// As [`Self::copy_blocks`].
    pub unsafe fn swap_in(&self, pairs: &[(HostBlockId, BlockId)]) -> Result<(), ExecError> {
        unsafe { self.copy_blocks(pairs.iter().map(|(h, d)| (h.index(), d.index())), false) }
    }

    /// Stores the K and V rows of the token at `pos` of a sequence with block table `table`.
    ///
    /// # Safety
    /// No other thread may read or write the block holding `pos` while this view is shared.
    pub unsafe fn write(&self, layer: usize, table: &[BlockId], pos: usize, k: &[f32], v: &[f32]) {
        let (block, slot) = (table[pos / self.block_size], pos % self.block_size);
        assert!(block.index() < self.num_blocks && k.len() == self.kv_dim && v.len() == self.kv_dim);
        let n = self.block_len();
        // SAFETY: in bounds (checked); exclusive by the caller's contract.
        let keys = unsafe { std::slice::from_raw_parts_mut(self.k[layer].add(block.index() * n), n) };
        for (c, &x) in k.iter().enumerate() {
            keys[c * self.block_size + slot] = x;
        }
        let values = unsafe { std::slice::from_raw_parts_mut(self.v[layer].add(block.index() * n), n) };
        values[slot * self.kv_dim..(slot + 1) * self.kv_dim].copy_from_slice(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_land_in_their_block_and_survive_a_swap_round_trip() {
        // 1 layer, kv_dim 2, 2-token blocks, 3 device blocks, 1 host block.
        let mut c = PagedKvCache::new(1, 2, 2, 3, 1);
        let table = [BlockId(2), BlockId(0)];
        c.write(0, &table, 3, &[1.0, 2.0], &[3.0, 4.0]); // position 3 → block 0, slot 1
        assert_eq!(c.key_at(0, &[BlockId(0), BlockId(0)], 1), vec![1.0, 2.0]);
        assert_eq!(c.value_at(0, &[BlockId(0), BlockId(0)], 1), &[3.0, 4.0]);
        // Keys are channel-major within the block: [c0 of slot 0, c0 of slot 1, c1 of slot 0, c1 of slot 1].
        assert_eq!(c.key_block(0, BlockId(0)), &[0.0, 1.0, 0.0, 2.0]);
        c.swap_out(&[(BlockId(0), HostBlockId(0))]).unwrap();
        c.swap_in(&[(HostBlockId(0), BlockId(1))]).unwrap();
        assert_eq!(c.key_at(0, &[BlockId(1), BlockId(1)], 1), vec![1.0, 2.0]);
        assert!(c.swap_in(&[(HostBlockId(1), BlockId(0))]).is_err(), "host block 1 does not exist");
        assert!(c.check_table(&[BlockId(3)]).is_err());
    }

    #[test]
    fn a_view_reads_and_writes_the_same_blocks() {
        let mut c = PagedKvCache::new(1, 2, 2, 3, 0);
        let table = [BlockId(2), BlockId(0)];
        {
            let view = c.view();
            // SAFETY: one thread.
            unsafe { view.write(0, &table, 3, &[1.0, 2.0], &[3.0, 4.0]) };
            assert_eq!(view.key_block(0, BlockId(0)), &[0.0, 1.0, 0.0, 2.0]);
            assert_eq!(view.value_block(0, BlockId(0)), &[0.0, 0.0, 3.0, 4.0]);
            assert!(view.check_table(&[BlockId(3)]).is_err());
        }
        // What the view wrote, the cache holds.
        assert_eq!(c.key_at(0, &[BlockId(0), BlockId(0)], 1), vec![1.0, 2.0]);
    }
}
