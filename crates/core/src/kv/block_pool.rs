//! Device KV blocks: reference counts, the LRU free queue, and the prefix-cache map.
//!
//! vLLM v1's `BlockPool`. A block is *free* when its reference count is 0; a free block may
//! still be *cached* (hold a full block whose [`BlockHash`] is in the map), in which case a
//! prefix-cache hit can take it back without recomputing it. Allocation takes blocks from the
//! head of the free queue (least recently freed first) and evicts their cached hash.
//! Sharing is by reference count: a block shared by two sequences is freed when both are.

use rustc_hash::FxHashMap;

use super::free_list::FreeList;
use super::hash::BlockHash;
use crate::error::InvariantViolation;
use crate::types::{BlockId, TokenId};

/// What a cached block was computed from, confirmed on every hit: a hash match alone is not
/// trusted.
#[derive(Debug, Clone, PartialEq)]
struct Proof {
    parent: Option<BlockHash>,
    tokens: Box<[TokenId]>,
}

#[derive(Debug, Clone)]
pub struct BlockPool {
    ref_cnt: Vec<u32>,
    hash: Vec<Option<BlockHash>>,
    proof: Vec<Option<Proof>>,
    free: FreeList,
    cached: FxHashMap<BlockHash, BlockId>,
    evictions: u64,
}

impl BlockPool {
    pub fn new(num_blocks: usize) -> Self {
        Self {
            ref_cnt: vec![0; num_blocks],
            hash: vec![None; num_blocks],
            proof: vec![None; num_blocks],
            free: FreeList::full(num_blocks),
            cached: FxHashMap::default(),
            evictions: 0,
        }
    }

    pub fn num_blocks(&self) -> usize {
        self.ref_cnt.len()
    }

    /// Blocks with no reference (cached or not): what an allocation can take.
    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Blocks with at least one reference.
    pub fn num_used(&self) -> usize {
        self.num_blocks() - self.num_free()
    }

    /// Full blocks currently findable by hash.
    pub fn num_cached(&self) -> usize {
        self.cached.len()
    }

    /// Cached blocks evicted to make room so far.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    pub fn ref_count(&self, b: BlockId) -> u32 {
        self.ref_cnt.get(b.index()).copied().unwrap_or(0)
    }

    /// Takes `n` blocks (each with reference count 1) into `out`, or none and returns false.
    pub fn allocate(&mut self, n: usize, out: &mut Vec<BlockId>) -> bool {
        if n > self.free.len() {
            return false;
        }
        for _ in 0..n {
            let Some(i) = self.free.pop_front() else { return false };
            let b = BlockId(i);
            self.proof[b.index()] = None;
            if let Some(h) = self.hash[b.index()].take() {
                if self.cached.get(&h) == Some(&b) {
                    self.cached.remove(&h);
                }
                self.evictions += 1;
            }
            self.ref_cnt[b.index()] = 1;
            out.push(b);
        }
        true
    }

    /// The cached block holding this hash, if any (reference count unchanged).
    pub fn lookup(&self, h: BlockHash) -> Option<BlockId> {
        self.cached.get(&h).copied()
    }

    /// Whether cached block `b` was computed from `tokens` after the block hashed `parent`
    /// (a hit is confirmed with this before its KV is reused).
    pub fn verify(&self, b: BlockId, parent: Option<BlockHash>, tokens: &[TokenId]) -> bool {
        matches!(self.proof.get(b.index()), Some(Some(p)) if p.parent == parent && *p.tokens == *tokens)
    }

    /// Takes one more reference to a block found by [`Self::lookup`]; a free one leaves the
    /// free queue. Returns false for an id out of range.
    pub fn touch(&mut self, b: BlockId) -> bool {
        let Some(rc) = self.ref_cnt.get_mut(b.index()) else { return false };
        if *rc == 0 {
            self.free.remove(b.0);
        }
        *rc += 1;
        true
    }

    /// Drops one reference; at zero the block joins the free queue's tail (its cached hash, if
    /// any, stays findable until the block is reallocated). Returns false, changing nothing, for
    /// a block that had no reference (a double free).
    pub fn release(&mut self, b: BlockId) -> bool {
        match self.ref_cnt.get_mut(b.index()) {
            Some(rc) if *rc > 0 => {
                *rc -= 1;
                if *rc == 0 {
                    self.free.push_back(b.0);
                }
                true
            }
            _ => false,
        }
    }

    /// Makes a full, computed block findable by `h`. If another block already holds `h`, the
    /// map keeps that one (both hold the same contents) and this block stays uncached.
    pub fn register(&mut self, b: BlockId, h: BlockHash) {
        if b.index() >= self.num_blocks() || self.hash[b.index()].is_some() {
            return;
        }
        if let std::collections::hash_map::Entry::Vacant(e) = self.cached.entry(h) {
            e.insert(b);
            self.hash[b.index()] = Some(h);
        }
    }

    /// [`Self::register`], keeping what the block was computed from for [`Self::verify`].
    pub fn register_proven(&mut self, b: BlockId, h: BlockHash, parent: Option<BlockHash>, tokens: &[TokenId]) {
        self.register(b, h);
        if self.hash.get(b.index()) == Some(&Some(h)) && self.cached.get(&h) == Some(&b) {
            self.proof[b.index()] = Some(Proof { parent, tokens: tokens.into() });
        }
    }

    /// Forgets every cached hash (e.g. after the executor's weights change).
    pub fn reset_prefix_cache(&mut self) {
        self.cached.clear();
        self.hash.iter_mut().for_each(|h| *h = None);
        self.proof.iter_mut().for_each(|p| *p = None);
    }

    /// Checks the pool's own invariants; `Err` describes the first violation.
    pub fn check(&self) -> Result<(), InvariantViolation> {
        let mut listed = vec![false; self.num_blocks()];
        let mut n = 0;
        for i in self.free.iter() {
            let k = i as usize;
            if listed[k] {
                return Err(InvariantViolation(format!("block {k} twice in the free queue")));
            }
            listed[k] = true;
            n += 1;
        }
        if n != self.free.len() {
            return Err(InvariantViolation(format!("free queue walks {n} blocks but counts {}", self.free.len())));
        }
        for (k, &rc) in self.ref_cnt.iter().enumerate() {
            if (rc == 0) != listed[k] {
                return Err(InvariantViolation(format!(
                    "block {k} has ref count {rc} but in-free-queue = {}",
                    listed[k]
                )));
            }
        }
        for (h, b) in &self.cached {
            if self.hash[b.index()] != Some(*h) {
                return Err(InvariantViolation(format!(
                    "cache maps {h:?} to block {} which holds {:?}",
                    b.0,
                    self.hash[b.index()]
                )));
            }
        }
        let hashed = self.hash.iter().filter(|h| h.is_some()).count();
        if hashed != self.cached.len() {
            return Err(InvariantViolation(format!(
                "{hashed} blocks carry a hash but the map has {}",
                self.cached.len()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_fails_whole_when_short() {
        let mut pool = BlockPool::new(4);
        let mut got = Vec::new();
        assert!(pool.allocate(3, &mut got)); // 4 - 3 = 1 free
        assert!(!pool.allocate(2, &mut got), "2 > 1 free");
        assert_eq!(got.len(), 3, "the failed call took nothing");
        assert_eq!(pool.num_free(), 1);
        pool.check().unwrap();
    }

    #[test]
    fn freed_cached_block_is_reused_by_hit_and_evicted_in_lru_order() {
        let mut pool = BlockPool::new(3);
        let mut a = Vec::new();
        pool.allocate(2, &mut a); // blocks 0,1 used; free queue: 2
        pool.register(a[0], BlockHash(10));
        pool.register(a[1], BlockHash(11));
        // Free 1 then 0: free queue 2, 1, 0 (0 most recent).
        assert!(pool.release(a[1]));
        assert!(pool.release(a[0]));
        assert!(!pool.release(a[0]), "double free refused");
        assert_eq!(pool.num_free(), 3);
        // A hit on hash 10 takes block 0 out of the middle of the queue: free 2, 1.
        let hit = pool.lookup(BlockHash(10)).unwrap();
        assert_eq!(hit, a[0]);
        assert!(pool.touch(hit));
        assert_eq!(pool.num_free(), 2);
        // Allocating 2 takes block 2 (never cached) then block 1 (evicts hash 11).
        let mut b = Vec::new();
        assert!(pool.allocate(2, &mut b));
        assert_eq!(b, vec![BlockId(2), a[1]]);
        assert_eq!(pool.lookup(BlockHash(11)), None);
        assert_eq!(pool.lookup(BlockHash(10)), Some(a[0]));
        assert_eq!(pool.evictions(), 1);
        pool.check().unwrap();
    }

    #[test]
    fn duplicate_hash_keeps_the_first_block() {
        let mut pool = BlockPool::new(2);
        let mut a = Vec::new();
        pool.allocate(2, &mut a);
        pool.register(a[0], BlockHash(7));
        pool.register(a[1], BlockHash(7));
        assert_eq!(pool.lookup(BlockHash(7)), Some(a[0]));
        assert_eq!(pool.num_cached(), 1);
        pool.check().unwrap();
    }
}
