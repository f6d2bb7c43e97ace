//! The paged KV cache: which device and host blocks hold which sequence's keys and values.
//!
//! Follows vLLM v1's `BlockPool` / `KVCacheManager` split: [`BlockPool`] is the mechanism
//! (ref-counted blocks, an LRU free queue, the prefix-cache map), [`KvCacheManager`] applies it
//! to sequences (allocate slots for new tokens, find cached prefixes, free, swap to the
//! [`HostPool`]). Allocation returns `None`/`false` when there is no room; it never panics.
//! The core never touches tensors: it hands block ids to the executor.

mod block_pool;
mod events;
mod free_list;
mod hash;
mod host_pool;
mod manager;

pub use block_pool::BlockPool;
pub use events::{KvEvent, KvEventLog};
pub use hash::{hash_block, salt_root, BlockHash};
pub use host_pool::HostPool;
pub use manager::{KvCacheManager, PrefixHit, SeqBlocks};
