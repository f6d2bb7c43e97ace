//! Device KV blocks: reference counts, the LRU free queue, and the prefix-cache map.
//!
//! vLLM v1's `BlockPool`. A block is *free* when its reference count is 0; a free block may
//! still be *cached* (hold a full block whose [`BlockHash`] is in the map), in which case a
//! prefix-cache hit can take it back without recomputing it. Allocation takes blocks from the
//! head of the free queue (least recently freed first) and evicts their cached hash.
//! Sharing is by reference count: a block shared by two sequences is freed when both are.
//!
//! A hash match is never trusted alone. Every computed block gets a *content id*, unique for
//! the pool's life, and a cached block keeps a [`Proof`]: its tokens and its parent's content
//! id (or the chain's root: the cache salt). A hit must match both, block by block from the
//! first, so a hit's KV was computed from exactly the hitting request's tokens after exactly
//! its prefix — whatever the hash: the soundness of a reuse does not rest on the key (tests
//! truncate keys to a few bits to show it).

use rustc_hash::FxHashMap;

use super::events::{KvEvent, KvEventLog};
use super::free_list::FreeList;
use super::hash::BlockHash;
use crate::error::InvariantViolation;
use crate::types::{BlockId, TokenId};

/// What comes before a block: the start of a chain (with its cache-salt root, if any), or the
/// block whose content id is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parent {
    Root(Option<BlockHash>),
    Block(u64),
}

/// What a cached block was computed from, confirmed on every hit: a hash match alone is not
/// trusted.
#[derive(Debug, Clone, PartialEq)]
struct Proof {
    parent: Parent,
    tokens: Box<[TokenId]>,
}

#[derive(Debug, Clone)]
pub struct BlockPool {
    ref_cnt: Vec<u32>,
    hash: Vec<Option<BlockHash>>,
    proof: Vec<Option<Proof>>,
    /// Each block's content id while it holds computed, registered KV (see the module doc).
    content: Vec<Option<u64>>,
    next_content: u64,
    free: FreeList,
    cached: FxHashMap<BlockHash, BlockId>,
    evictions: u64,
    /// Keys entering and leaving `cached`, for subscribers (off unless asked for).
    events: KvEventLog,
}

impl BlockPool {
    pub fn new(num_blocks: usize) -> Self {
        Self {
            ref_cnt: vec![0; num_blocks],
            hash: vec![None; num_blocks],
            proof: vec![None; num_blocks],
            content: vec![None; num_blocks],
            next_content: 0,
            free: FreeList::full(num_blocks),
            cached: FxHashMap::default(),
            evictions: 0,
            events: KvEventLog::default(),
        }
    }

    /// Records prefix-cache events ([`KvEvent`]) from now on, or stops.
    pub fn record_events(&mut self, on: bool) {
        self.events = KvEventLog::new(on);
    }

    /// The prefix-cache events since the last call.
    pub fn take_events(&mut self) -> Vec<KvEvent> {
        self.events.take()
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

    /// The keys findable now (what a subscriber applying [`Self::take_events`] holds).
    pub fn cached_keys(&self) -> impl Iterator<Item = BlockHash> + '_ {
        self.cached.keys().copied()
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
            self.content[b.index()] = None;
            if let Some(h) = self.hash[b.index()].take() {
                if self.cached.get(&h) == Some(&b) {
                    self.cached.remove(&h);
                    self.events.removed(h);
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

    /// Whether cached block `b` was computed from `tokens` after `parent` (a hit is confirmed
    /// with this before its KV is reused).
    pub fn verify(&self, b: BlockId, parent: Parent, tokens: &[TokenId]) -> bool {
        matches!(self.proof.get(b.index()), Some(Some(p)) if p.parent == parent && *p.tokens == *tokens)
    }

    /// What follows block `b` in a chain: [`Parent::Block`] of its content id, if it has one.
    pub fn parent_after(&self, b: BlockId) -> Option<Parent> {
        self.content.get(b.index()).copied().flatten().map(Parent::Block)
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

    /// Records that block `b` now holds KV computed from `tokens` after `parent` (`None`: a
    /// parent without a content id, so `b`'s content cannot be proven and it is not cached),
    /// and makes it findable by `h` unless another block holds `h`. A block with the same proof
    /// as the one holding `h` shares its content id (its children are found through either).
    /// A block that becomes findable is a [`KvEvent::Stored`] after `parent_key`.
    pub fn register_proven(
        &mut self,
        b: BlockId,
        h: BlockHash,
        parent: Option<Parent>,
        parent_key: Option<BlockHash>,
        tokens: &[TokenId],
    ) {
        let (Some(parent), true) = (parent, b.index() < self.num_blocks()) else { return };
        if self.content[b.index()].is_some() {
            return;
        }
        let proof = Proof { parent, tokens: tokens.into() };
        let same = self.cached.get(&h).filter(|&&q| self.proof[q.index()].as_ref() == Some(&proof));
        self.content[b.index()] = match same {
            Some(&q) => self.content[q.index()],
            None => {
                self.next_content += 1;
                Some(self.next_content)
            }
        };
        let was_cached = self.cached.contains_key(&h);
        self.register(b, h);
        if self.cached.get(&h) == Some(&b) {
            self.proof[b.index()] = Some(proof);
            if !was_cached {
                self.events.stored(h, parent_key, tokens);
            }
        }
    }

    /// Forgets every cached hash (e.g. after the executor's weights change).
    pub fn reset_prefix_cache(&mut self) {
        self.cached.clear();
        self.events.cleared();
        self.hash.iter_mut().for_each(|h| *h = None);
        self.proof.iter_mut().for_each(|p| *p = None);
        self.content.iter_mut().for_each(|c| *c = None);
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
    fn a_child_is_found_only_after_the_very_block_it_was_computed_after() {
        // 2 blocks. A0 (tokens 1,2) then A1 (tokens 3,4) after it, under keys 5 and 6.
        let mut pool = BlockPool::new(2);
        let mut a = Vec::new();
        pool.allocate(2, &mut a);
        pool.register_proven(a[0], BlockHash(5), Some(Parent::Root(None)), None, &[1, 2]);
        pool.register_proven(a[1], BlockHash(6), pool.parent_after(a[0]), Some(BlockHash(5)), &[3, 4]);
        let after_a0 = pool.parent_after(a[0]).unwrap();
        assert!(pool.verify(a[1], after_a0, &[3, 4]), "the real chain is found");
        // Both freed (queue: A0, A1); one allocation reuses A0's block for C0 = tokens 7,8,
        // registered under A0's old key 5 — a key collision — while A1 stays cached.
        pool.release(a[0]);
        pool.release(a[1]);
        let mut c = Vec::new();
        pool.allocate(1, &mut c);
        assert_eq!(c, vec![a[0]]);
        pool.register_proven(c[0], BlockHash(5), Some(Parent::Root(None)), None, &[7, 8]);
        // A request 7,8,3,4 hashing to keys 5, 6 finds C0 (its own tokens) and then A1 — whose
        // KV was computed after 1,2. Matching the parent's key would accept it; its content id
        // does not.
        assert_eq!(pool.lookup(BlockHash(5)), Some(c[0]));
        assert!(pool.verify(c[0], Parent::Root(None), &[7, 8]));
        assert_eq!(pool.lookup(BlockHash(6)), Some(a[1]));
        let after_c0 = pool.parent_after(c[0]).unwrap();
        assert_ne!(after_c0, after_a0, "content ids are never reused");
        assert!(!pool.verify(a[1], after_c0, &[3, 4]), "A1 was not computed after C0");
    }

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
