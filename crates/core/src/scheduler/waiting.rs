//! The waiting queue: requests ordered by the queue policy's rank, plus an arrival-ordered index
//! so batching strategies can ask how long the oldest request has waited under any policy.

use std::collections::BTreeSet;
use std::ops::Bound;

use super::seq::WaitKey;
use crate::types::Time;

#[derive(Debug, Default)]
pub(crate) struct WaitingQueue {
    by_rank: BTreeSet<WaitKey>,
    by_arrival: BTreeSet<(Time, u64)>,
    /// Waiting requests that ran before (preempted by recompute or swap).
    resumable: usize,
}

impl WaitingQueue {
    pub fn insert(&mut self, key: WaitKey, resumable: bool) {
        if self.by_rank.insert(key) {
            self.by_arrival.insert((key.arrival, key.epoch));
            self.resumable += resumable as usize;
        }
    }

    /// Removes `key`; returns whether it was queued.
    pub fn remove(&mut self, key: &WaitKey, resumable: bool) -> bool {
        let was = self.by_rank.remove(key);
        if was {
            self.by_arrival.remove(&(key.arrival, key.epoch));
            self.resumable -= resumable as usize;
        }
        was
    }

    pub fn contains(&self, key: &WaitKey) -> bool {
        self.by_rank.contains(key)
    }

    pub fn len(&self) -> usize {
        self.by_rank.len()
    }

    pub fn resumable(&self) -> usize {
        self.resumable
    }

    pub fn oldest_arrival(&self) -> Option<Time> {
        self.by_arrival.first().map(|a| a.0)
    }

    /// The best-ranked request after `cursor` (or the best of all when `cursor` is `None`).
    pub fn next_after(&self, cursor: Option<WaitKey>) -> Option<WaitKey> {
        match cursor {
            None => self.by_rank.first().copied(),
            Some(c) => self.by_rank.range((Bound::Excluded(c), Bound::Unbounded)).next().copied(),
        }
    }
}
