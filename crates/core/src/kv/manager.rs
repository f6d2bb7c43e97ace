//! Applies the block pools to sequences: prefix lookup, slot allocation, caching of computed
//! blocks, freeing and swapping.
//!
//! vLLM v1's `KVCacheManager` (`get_computed_blocks`, `allocate_slots`, `free`,
//! `cache_blocks`) plus v0's swap-in/out. Blocks are registered in the prefix cache only once
//! the executor has *computed* them (in `update`), never at allocation: with micro-batches on
//! separate streams, a block allocated in this step may not be written yet when another stream
//! would read it.

use super::block_pool::{BlockPool, Parent};
use super::hash::{hash_block, BlockHash};
use super::host_pool::HostPool;
use crate::types::{BlockId, HostBlockId, TokenId};

/// One sequence's KV state: device block table, prefix hash chain, host blocks when swapped.
#[derive(Debug, Clone, Default)]
pub struct SeqBlocks {
    /// Device blocks in order; block `i` holds tokens `i*block_size .. (i+1)*block_size`.
    pub(crate) blocks: Vec<BlockId>,
    /// Hash chain of the sequence's full blocks, as far as it has been computed.
    pub(crate) hashes: Vec<BlockHash>,
    /// `blocks[..num_cached]` have been offered to the prefix cache.
    pub(crate) num_cached: usize,
    /// The parent of the first block: the request's cache-salt root (`None`: unsalted).
    pub(crate) salt: Option<BlockHash>,
    /// Host blocks holding the sequence while it is swapped out.
    pub(crate) host: Vec<HostBlockId>,
}

impl SeqBlocks {
    /// The KV state of a new request; with a `cache_salt`, its blocks are shared only with
    /// requests of the same salt.
    pub fn salted(cache_salt: Option<&str>) -> Self {
        Self { salt: cache_salt.map(super::hash::salt_root), ..Self::default() }
    }

    /// The parent hash of block `i`.
    fn parent(&self, i: usize) -> Option<BlockHash> {
        match i {
            0 => self.salt,
            _ => Some(self.hashes[i - 1]),
        }
    }

    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }
    pub fn host_blocks(&self) -> &[HostBlockId] {
        &self.host
    }
}

/// A prefix-cache hit: cached blocks covering the first `num_tokens` tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefixHit {
    pub blocks: Vec<BlockId>,
    pub num_tokens: usize,
    /// The walk stopped at a block whose key matched but whose proof did not.
    pub rejected: bool,
}

/// Device and host block pools plus the rules that map sequences onto them.
#[derive(Debug, Clone)]
pub struct KvCacheManager {
    pool: BlockPool,
    host: HostPool,
    block_size: usize,
    prefix_caching: bool,
    /// Prefix-cache keys keep their low `key_mask` bits (all of them but in collision tests).
    key_mask: u128,
    /// Host blocks released by swap-in this step; reusable only from the next step, so that a
    /// swap-out in the same step cannot overwrite a block before the executor has read it.
    deferred_host_free: Vec<HostBlockId>,
}

impl KvCacheManager {
    pub fn new(num_gpu_blocks: usize, num_host_blocks: usize, block_size: usize, prefix_caching: bool) -> Self {
        Self {
            pool: BlockPool::new(num_gpu_blocks),
            host: HostPool::new(num_host_blocks),
            block_size: block_size.max(1),
            prefix_caching,
            key_mask: u128::MAX,
            deferred_host_free: Vec::new(),
        }
    }

    /// Keys truncated to their low `bits` bits (128: whole). Below 128 only to force
    /// collisions in tests: hits are still confirmed against the blocks' tokens.
    pub fn with_key_bits(mut self, bits: u32) -> Self {
        self.key_mask = if bits >= 128 { u128::MAX } else { (1u128 << bits) - 1 };
        self
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }
    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }
    /// Records prefix-cache events from now on, or stops ([`BlockPool::take_events`]).
    pub fn record_events(&mut self, on: bool) {
        self.pool.record_events(on);
    }
    pub fn take_events(&mut self) -> Vec<super::KvEvent> {
        self.pool.take_events()
    }
    pub fn host(&self) -> &HostPool {
        &self.host
    }
    pub fn num_free(&self) -> usize {
        self.pool.num_free()
    }

    /// Blocks needed to hold `tokens` tokens: `ceil(tokens / block_size)`.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// Extends `seq`'s hash chain over the full blocks of `tokens[..upto]`.
    fn extend_hashes(&self, seq: &mut SeqBlocks, tokens: &[TokenId], upto: usize) {
        let full = upto.min(tokens.len()) / self.block_size;
        while seq.hashes.len() < full {
            let i = seq.hashes.len();
            let parent = seq.parent(i);
            let h = hash_block(parent, &tokens[i * self.block_size..(i + 1) * self.block_size]);
            seq.hashes.push(BlockHash(h.0 & self.key_mask));
        }
    }

    /// The longest cached prefix of `tokens`, leaving at least one token to compute (the model
    /// must run on something to produce logits). Takes no reference yet.
    pub fn find_prefix(&self, seq: &mut SeqBlocks, tokens: &[TokenId]) -> PrefixHit {
        if !self.prefix_caching || tokens.len() < 2 {
            return PrefixHit::default();
        }
        let max_blocks = (tokens.len() - 1) / self.block_size;
        self.extend_hashes(seq, tokens, max_blocks * self.block_size);
        // A hit is taken only if the block was computed from these very tokens after the same
        // parent: a hash match alone is never trusted.
        let bs = self.block_size;
        let mut parent = Parent::Root(seq.salt);
        let mut rejected = false;
        let blocks: Vec<BlockId> = (0..max_blocks)
            .map_while(|i| {
                let b = self.pool.lookup(seq.hashes[i])?;
                if !self.pool.verify(b, parent, &tokens[i * bs..(i + 1) * bs]) {
                    rejected = true;
                    return None;
                }
                parent = self.pool.parent_after(b)?;
                Some(b)
            })
            .collect();
        let num_tokens = blocks.len() * self.block_size;
        PrefixHit { blocks, num_tokens, rejected }
    }

    /// Free blocks that giving `seq` room for `total_tokens` tokens (after taking `hit`) would
    /// consume: new blocks plus hit blocks that currently sit in the free queue.
    pub fn blocks_needed(&self, seq: &SeqBlocks, hit: &[BlockId], total_tokens: usize) -> usize {
        let have = seq.blocks.len() + hit.len();
        let new = self.blocks_for(total_tokens).saturating_sub(have);
        new + hit.iter().filter(|b| self.pool.ref_count(**b) == 0).count()
    }

    /// Appends `hit` to `seq`'s (empty) table and grows it to hold `total_tokens` tokens,
    /// returning how many free blocks it took. All or nothing: `None`, with nothing changed,
    /// when the pool is short (the scheduler then preempts or waits).
    pub fn allocate_slots(&mut self, seq: &mut SeqBlocks, hit: &[BlockId], total_tokens: usize) -> Option<usize> {
        let taken = self.blocks_needed(seq, hit, total_tokens);
        if taken > self.pool.num_free() {
            return None;
        }
        for &b in hit {
            self.pool.touch(b);
            seq.blocks.push(b);
        }
        let new = self.blocks_for(total_tokens).saturating_sub(seq.blocks.len());
        self.pool.allocate(new, &mut seq.blocks).then_some(taken)
    }

    /// Offers the full blocks among the first `num_computed` tokens to the prefix cache.
    pub fn cache_computed(&mut self, seq: &mut SeqBlocks, tokens: &[TokenId], num_computed: usize) {
        if !self.prefix_caching {
            return;
        }
        let full = (num_computed.min(tokens.len()) / self.block_size).min(seq.blocks.len());
        if full <= seq.num_cached {
            return;
        }
        self.extend_hashes(seq, tokens, full * self.block_size);
        let bs = self.block_size;
        for i in seq.num_cached..full {
            let parent = match i {
                0 => Some(Parent::Root(seq.salt)),
                _ => self.pool.parent_after(seq.blocks[i - 1]),
            };
            // Events name a chain's first block with no parent, as vLLM's do (the salt is in
            // its key).
            let parent_key = i.checked_sub(1).map(|j| seq.hashes[j]);
            self.pool.register_proven(seq.blocks[i], seq.hashes[i], parent, parent_key, &tokens[i * bs..(i + 1) * bs]);
        }
        seq.num_cached = full;
    }

    /// Releases every device block of `seq`, last block first (so a prefix's tail is evicted
    /// before its head, as in vLLM).
    pub fn free(&mut self, seq: &mut SeqBlocks) {
        for &b in seq.blocks.iter().rev() {
            self.pool.release(b);
        }
        seq.blocks.clear();
        seq.num_cached = 0;
    }

    /// Releases every host block of `seq`.
    pub fn free_host(&mut self, seq: &mut SeqBlocks) {
        for b in seq.host.drain(..) {
            self.host.free(b);
        }
    }

    /// Moves `seq` to the host tier, listing `(device, host)` copies in `pairs`. All or
    /// nothing: false when the host tier is short.
    pub fn swap_out(&mut self, seq: &mut SeqBlocks, pairs: &mut Vec<(BlockId, HostBlockId)>) -> bool {
        debug_assert!(seq.host.is_empty());
        if !self.host.allocate(seq.blocks.len(), &mut seq.host) {
            return false;
        }
        pairs.extend(seq.blocks.iter().copied().zip(seq.host.iter().copied()));
        self.free(seq);
        true
    }

    /// [`Self::swap_out`] for a step that runs while other steps are being planned (streams
    /// without synchronisation): the device blocks are not freed but handed back, still
    /// allocated, for the caller to free once the step's copies are done; until then no other
    /// step can be given them.
    pub fn swap_out_held(&mut self, seq: &mut SeqBlocks, pairs: &mut Vec<(BlockId, HostBlockId)>) -> Option<SeqBlocks> {
        debug_assert!(seq.host.is_empty());
        if !self.host.allocate(seq.blocks.len(), &mut seq.host) {
            return None;
        }
        pairs.extend(seq.blocks.iter().copied().zip(seq.host.iter().copied()));
        seq.num_cached = 0;
        Some(SeqBlocks { blocks: std::mem::take(&mut seq.blocks), ..SeqBlocks::default() })
    }

    /// The host blocks this scheduling step's swap-ins released, taken out of
    /// [`Self::end_step`]'s hands: for a step whose copies run while later steps are planned,
    /// they are freed when it completes (they come back in a holder for [`Self::free_host`]).
    pub fn take_released_host(&mut self) -> SeqBlocks {
        SeqBlocks { host: std::mem::take(&mut self.deferred_host_free), ..SeqBlocks::default() }
    }

    /// Brings a swapped `seq` back, listing `(host, device)` copies in `pairs`. All or nothing.
    pub fn swap_in(&mut self, seq: &mut SeqBlocks, pairs: &mut Vec<(HostBlockId, BlockId)>) -> bool {
        debug_assert!(seq.blocks.is_empty());
        if !self.pool.allocate(seq.host.len(), &mut seq.blocks) {
            return false;
        }
        pairs.extend(seq.host.iter().copied().zip(seq.blocks.iter().copied()));
        self.deferred_host_free.append(&mut seq.host);
        true
    }

    /// Ends a scheduling step: host blocks released by this step's swap-ins become reusable.
    pub fn end_step(&mut self) {
        for b in self.deferred_host_free.drain(..) {
            self.host.free(b);
        }
    }

    /// Drops every cached prefix.
    pub fn reset_prefix_cache(&mut self) {
        self.pool.reset_prefix_cache();
    }

    /// Host blocks not yet returned by [`Self::end_step`].
    pub fn deferred_host_blocks(&self) -> &[HostBlockId] {
        &self.deferred_host_free
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(n: u32) -> Vec<TokenId> {
        (0..n).collect()
    }

    #[test]
    fn allocate_slots_rounds_up_and_fails_whole() {
        // 4-token blocks, 5 blocks.
        let mut kv = KvCacheManager::new(5, 0, 4, true);
        let mut a = SeqBlocks::default();
        assert_eq!(kv.allocate_slots(&mut a, &[], 9), Some(3)); // ceil(9/4) = 3 blocks; 5 - 3 = 2 free
        assert_eq!(a.blocks.len(), 3);
        assert_eq!(kv.allocate_slots(&mut a, &[], 12), Some(0)); // still 3 blocks: nothing new
        assert_eq!(kv.num_free(), 2);
        let mut b = SeqBlocks::default();
        assert_eq!(kv.allocate_slots(&mut b, &[], 12), None, "3 > 2 free");
        assert!(b.blocks.is_empty());
        kv.free(&mut a);
        assert_eq!(kv.num_free(), 5);
        kv.pool().check().unwrap();
    }

    #[test]
    fn computed_blocks_are_found_by_a_later_identical_prefix() {
        let mut kv = KvCacheManager::new(8, 0, 4, true);
        let prompt = toks(10); // 2 full blocks + 2 tokens
        let mut a = SeqBlocks::default();
        assert_eq!(kv.allocate_slots(&mut a, &[], 10), Some(3));
        // Nothing computed yet: nothing cached.
        let mut probe = SeqBlocks::default();
        assert_eq!(kv.find_prefix(&mut probe, &prompt).num_tokens, 0);
        kv.cache_computed(&mut a, &prompt, 10); // full blocks: 10/4 = 2
        let mut b = SeqBlocks::default();
        let hit = kv.find_prefix(&mut b, &prompt);
        assert_eq!(hit.num_tokens, 8);
        assert_eq!(hit.blocks, a.blocks[..2].to_vec());
        // b needs ceil(10/4) = 3 blocks: 2 shared (in use: cost 0) + 1 new.
        assert_eq!(kv.blocks_needed(&b, &hit.blocks, 10), 1);
        assert_eq!(kv.allocate_slots(&mut b, &hit.blocks, 10), Some(1));
        assert_eq!(kv.pool().ref_count(a.blocks[0]), 2);
        // 8 - 3 (a) - 1 (b's own) = 4 free
        assert_eq!(kv.num_free(), 4);
        kv.free(&mut a);
        kv.free(&mut b);
        assert_eq!(kv.num_free(), 8);
        kv.pool().check().unwrap();
    }

    #[test]
    fn a_hash_match_is_not_trusted_without_the_blocks_tokens() {
        // Block 0 computed for tokens A, but registered under the hash of tokens B — what a
        // hash collision (or a forged key) would give. A request for B must not reuse it.
        let mut kv = KvCacheManager::new(8, 0, 4, true);
        let (a_toks, b_toks): (Vec<TokenId>, Vec<TokenId>) = (vec![1, 2, 3, 4, 9], vec![5, 6, 7, 8, 9]);
        let mut a = SeqBlocks::default();
        kv.allocate_slots(&mut a, &[], 5);
        let forged = hash_block(None, &b_toks[..4]);
        kv.pool.register_proven(a.blocks[0], forged, Some(Parent::Root(None)), None, &a_toks[..4]);
        let mut b = SeqBlocks::default();
        assert_eq!(kv.find_prefix(&mut b, &b_toks).num_tokens, 0, "tokens differ: no hit");
        // The same block proven with B's own tokens is a hit.
        let mut kv = KvCacheManager::new(8, 0, 4, true);
        let mut c = SeqBlocks::default();
        kv.allocate_slots(&mut c, &[], 5);
        kv.cache_computed(&mut c, &b_toks, 5);
        assert_eq!(kv.find_prefix(&mut SeqBlocks::default(), &b_toks).num_tokens, 4);
        kv.pool().check().unwrap();
    }

    #[test]
    fn a_cache_salt_keeps_tenants_apart() {
        // The same 8 tokens computed under salt "a": found again under "a", not unsalted and
        // not under "b".
        let mut kv = KvCacheManager::new(8, 0, 4, true);
        let prompt = toks(9);
        let mut a = SeqBlocks::salted(Some("a"));
        kv.allocate_slots(&mut a, &[], 9);
        kv.cache_computed(&mut a, &prompt, 9);
        let hit =
            |kv: &KvCacheManager, salt: Option<&str>| kv.find_prefix(&mut SeqBlocks::salted(salt), &prompt).num_tokens;
        assert_eq!(hit(&kv, Some("a")), 8);
        assert_eq!(hit(&kv, None), 0);
        assert_eq!(hit(&kv, Some("b")), 0);
    }

    #[test]
    fn a_full_hit_still_leaves_one_token_to_compute() {
        let mut kv = KvCacheManager::new(8, 0, 4, true);
        let prompt = toks(8); // exactly 2 blocks
        let mut a = SeqBlocks::default();
        kv.allocate_slots(&mut a, &[], 8);
        kv.cache_computed(&mut a, &prompt, 8);
        let mut b = SeqBlocks::default();
        // (8 - 1) / 4 = 1 block may be reused; the last block is recomputed.
        assert_eq!(kv.find_prefix(&mut b, &prompt).num_tokens, 4);
    }

    #[test]
    fn swap_round_trip_lists_matching_pairs_and_defers_host_reuse() {
        let mut kv = KvCacheManager::new(4, 4, 4, false);
        let mut a = SeqBlocks::default();
        kv.allocate_slots(&mut a, &[], 8); // 2 blocks
        let dev = a.blocks.clone();
        let mut out = Vec::new();
        assert!(kv.swap_out(&mut a, &mut out));
        assert_eq!(out.iter().map(|p| p.0).collect::<Vec<_>>(), dev);
        assert_eq!((kv.num_free(), kv.host().num_free()), (4, 2)); // 4 - 2 host
        let mut back = Vec::new();
        assert!(kv.swap_in(&mut a, &mut back));
        assert_eq!(back.iter().map(|p| p.0).collect::<Vec<_>>(), out.iter().map(|p| p.1).collect::<Vec<_>>());
        assert_eq!(kv.host().num_free(), 2, "host blocks held until the step ends");
        kv.end_step();
        assert_eq!(kv.host().num_free(), 4);
    }
}
