//! Prefix-cache events: which full blocks became findable by their key and which stopped being,
//! for routers that route on exact cache contents.
//!
//! vLLM's `KVCacheEvent`s (`BlockStored`, `BlockRemoved`, `AllBlocksCleared`), recorded where
//! the block pool changes its map and taken by the engine after each step, which publishes them
//! (the core does no I/O). As in vLLM, a block is *stored* when it is registered in the prefix
//! cache (computed and full; a duplicate of a block already cached is not stored again) and
//! *removed* when its key leaves the map: reallocated for other tokens, or the cache reset.
//! Consecutive blocks stored by one chain are one event (vLLM's batching of a request's
//! blocks); so are consecutive removals.

use super::hash::BlockHash;
use crate::types::TokenId;

/// One change of the prefix cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvEvent {
    /// Blocks `hashes` (a chain: each after the one before, the first after `parent`) became
    /// findable; `tokens` are their tokens, block after block.
    Stored { hashes: Vec<BlockHash>, parent: Option<BlockHash>, tokens: Vec<TokenId> },
    /// These keys are no longer findable.
    Removed { hashes: Vec<BlockHash> },
    /// Every key was dropped.
    Cleared,
}

/// The events since they were last taken; records nothing until switched on.
#[derive(Debug, Clone, Default)]
pub struct KvEventLog {
    on: bool,
    events: Vec<KvEvent>,
}

impl KvEventLog {
    pub fn new(on: bool) -> Self {
        Self { on, events: Vec::new() }
    }

    /// Block `hash` (its `tokens`) stored after `parent`; joins the last event when that one
    /// stored `parent` itself.
    pub fn stored(&mut self, hash: BlockHash, parent: Option<BlockHash>, tokens: &[TokenId]) {
        if !self.on {
            return;
        }
        if let Some(KvEvent::Stored { hashes, tokens: all, .. }) = self.events.last_mut() {
            if parent.is_some() && hashes.last() == parent.as_ref() {
                hashes.push(hash);
                all.extend_from_slice(tokens);
                return;
            }
        }
        self.events.push(KvEvent::Stored { hashes: vec![hash], parent, tokens: tokens.to_vec() });
    }

    pub fn removed(&mut self, hash: BlockHash) {
        if !self.on {
            return;
        }
        match self.events.last_mut() {
            Some(KvEvent::Removed { hashes }) => hashes.push(hash),
            _ => self.events.push(KvEvent::Removed { hashes: vec![hash] }),
        }
    }

    /// Everything was dropped: earlier events no longer matter to a subscriber that sees this.
    pub fn cleared(&mut self) {
        if self.on {
            self.events.push(KvEvent::Cleared);
        }
    }

    /// The events recorded since the last call, oldest first.
    pub fn take(&mut self) -> Vec<KvEvent> {
        std::mem::take(&mut self.events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_is_one_event_and_an_unrelated_block_starts_another() {
        let mut log = KvEventLog::new(true);
        let h = BlockHash;
        log.stored(h(1), None, &[10, 11]);
        log.stored(h(2), Some(h(1)), &[12, 13]); // follows block 1: same event
        log.stored(h(9), Some(h(5)), &[20, 21]); // follows a block stored earlier: a new one
        log.removed(h(1));
        log.removed(h(2));
        log.cleared();
        assert_eq!(
            log.take(),
            vec![
                KvEvent::Stored { hashes: vec![h(1), h(2)], parent: None, tokens: vec![10, 11, 12, 13] },
                KvEvent::Stored { hashes: vec![h(9)], parent: Some(h(5)), tokens: vec![20, 21] },
                KvEvent::Removed { hashes: vec![h(1), h(2)] },
                KvEvent::Cleared,
            ]
        );
        assert!(log.take().is_empty(), "taken once");
    }

    #[test]
    fn off_records_nothing() {
        let mut log = KvEventLog::new(false);
        log.stored(BlockHash(1), None, &[1]);
        log.removed(BlockHash(1));
        log.cleared();
        assert!(log.take().is_empty());
    }
}
