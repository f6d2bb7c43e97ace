//! The prefix-cache key of a full block: a hash chained over every token before it.
//!
//! As in vLLM's `hash_block_tokens`, block `i`'s hash covers block `i-1`'s hash and block `i`'s
//! tokens, so equal hashes mean equal whole prefixes (up to 64-bit collisions: about 3·10⁻⁸ for
//! a million cached blocks; vLLM's default builtin hash makes the same trade). SipHash-1-3 with
//! fixed keys (`std`'s `DefaultHasher::new()`) keeps the hash deterministic across runs.

use std::hash::{DefaultHasher, Hasher};

use crate::types::TokenId;

/// Hash of a full block and its whole prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash(pub u64);

/// Hash of `tokens` (one full block) following the block whose hash is `parent`.
pub fn hash_block(parent: Option<BlockHash>, tokens: &[TokenId]) -> BlockHash {
    let mut h = DefaultHasher::new();
    h.write_u64(parent.map_or(0x7a6e_6465_6d00_0001, |p| p.0));
    for &t in tokens {
        h.write_u32(t);
    }
    BlockHash(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_tokens_under_different_parents_hash_differently() {
        let a = hash_block(None, &[1, 2, 3, 4]);
        let b = hash_block(None, &[1, 2, 3, 5]);
        assert_ne!(a, b);
        assert_eq!(a, hash_block(None, &[1, 2, 3, 4]), "deterministic");
        assert_ne!(hash_block(Some(a), &[9, 9, 9, 9]), hash_block(Some(b), &[9, 9, 9, 9]));
    }
}
