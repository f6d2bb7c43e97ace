//! The prefix-cache key of a full block: a hash chained over every token before it, and the
//! request's cache salt.
//!
//! As in vLLM's `hash_block_tokens`, block `i`'s hash covers block `i-1`'s hash and block `i`'s
//! tokens, so equal hashes mean equal whole prefixes. The hash is SHA-256 (truncated to 128
//! bits), as vLLM's `sha256` prefix hashing: a 64-bit hash with public keys (what this was) lets
//! anyone who can send prompts search for a block whose chain hash equals a popular prefix's
//! (about 2⁶⁴ evaluations, or 2³² for a colliding pair of one's own) and make later requests
//! reuse KV computed for other tokens — wrong answers, or one tenant's context read by another
//! (vLLM's CVE-2025-25183). A cryptographic hash makes that infeasible; on top of it the block
//! pool keeps each cached block's tokens and parent and confirms them on every hit. Measured
//! cost: ~0.3 µs per 16-token block (BENCHMARKS.md), against milliseconds of forward per step.
//!
//! A request's `cache_salt` (vLLM's) starts its chain from a root of its own, so requests with
//! different salts never share a block, whatever their tokens.

use sha2::{Digest, Sha256};

use crate::types::TokenId;

/// Hash of a full block and its whole prefix (and salt).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash(pub u128);

fn finish(h: Sha256) -> BlockHash {
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    BlockHash(u128::from_le_bytes(b))
}

/// The root a salted request's chain starts from (its first block's parent).
pub fn salt_root(salt: &str) -> BlockHash {
    let mut h = Sha256::new();
    h.update(b"tandem-prefix-salt\0");
    h.update(salt.as_bytes());
    finish(h)
}

/// Hash of `tokens` (one full block) following the block whose hash is `parent` (`None`: the
/// first block of an unsalted request).
pub fn hash_block(parent: Option<BlockHash>, tokens: &[TokenId]) -> BlockHash {
    let mut h = Sha256::new();
    match parent {
        None => h.update([0u8]),
        Some(p) => {
            h.update([1u8]);
            h.update(p.0.to_le_bytes());
        }
    }
    for &t in tokens {
        h.update(t.to_le_bytes());
    }
    finish(h)
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

    #[test]
    fn a_salt_gives_the_same_tokens_another_chain() {
        let plain = hash_block(None, &[1, 2, 3, 4]);
        let (s1, s2) = (salt_root("tenant-a"), salt_root("tenant-b"));
        assert_ne!(s1, s2);
        assert_ne!(hash_block(Some(s1), &[1, 2, 3, 4]), plain);
        assert_ne!(hash_block(Some(s1), &[1, 2, 3, 4]), hash_block(Some(s2), &[1, 2, 3, 4]));
        assert_eq!(hash_block(Some(s1), &[1, 2, 3, 4]), hash_block(Some(salt_root("tenant-a")), &[1, 2, 3, 4]));
    }
}
