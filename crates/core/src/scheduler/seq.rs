//! A request's state inside the scheduler, and the keys that place it in the waiting queue and
//! the deadline index.

use crate::kv::SeqBlocks;
use crate::policy::Rank;
use crate::request::{RequestState, SamplingParams};
use crate::types::{RequestId, Time, TokenId};

/// Index into the scheduler's slab of sequences.
pub(crate) type Slot = u32;

/// Waiting-queue key: rank first, then arrival, then admission order (`epoch`, unique).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct WaitKey {
    pub rank: Rank,
    pub arrival: Time,
    pub epoch: u64,
    pub slot: Slot,
}

#[derive(Debug, Clone)]
pub(crate) struct Seq {
    pub id: RequestId,
    /// Unique per accepted request, never reused: tells a slot's current occupant from a past one.
    pub epoch: u64,
    /// Prompt followed by every generated token.
    pub tokens: Vec<TokenId>,
    pub prompt_len: usize,
    /// Tokens whose KV is computed or scheduled to be (vLLM v1 counts at schedule time).
    pub num_computed: usize,
    pub params: SamplingParams,
    pub priority: i32,
    pub arrival: Time,
    pub deadline: Option<Time>,
    pub rank: Rank,
    pub state: RequestState,
    pub kv: SeqBlocks,
    /// Samples scheduled in steps whose update has not arrived yet (0, 1 or 2).
    pub pending_samples: u8,
    /// Scheduled at least once.
    pub started: bool,
    /// Prompt tokens the prefix cache served at the first admission (OpenAI's
    /// `usage.prompt_tokens_details.cached_tokens`).
    pub prompt_cached: usize,
    /// Final length bound: `min(prompt + max_tokens, effective max model len)`.
    pub max_len: usize,
    /// Bumped at every preemption, so late updates do not cache blocks of a dropped table.
    pub kv_generation: u32,
    pub preempted_at_step: Option<u64>,
    /// The sync-off stream step this sequence is in, until that step's update: no other step
    /// schedules it meanwhile.
    pub stream_step: Option<u64>,
}

impl Seq {
    /// Tokens known or on their way: `tokens` plus pending samples.
    pub fn num_known(&self) -> usize {
        self.tokens.len() + self.pending_samples as usize
    }

    /// Preempted at least once and waiting to resume.
    pub fn is_resumable(&self) -> bool {
        matches!(self.state, RequestState::Preempted | RequestState::Swapped)
    }

    pub fn wait_key(&self, slot: Slot) -> WaitKey {
        WaitKey { rank: self.rank, arrival: self.arrival, epoch: self.epoch, slot }
    }

    /// Victim order key: the largest is preempted first.
    pub fn victim_key(&self) -> (Rank, Time, u64) {
        (self.rank, self.arrival, self.epoch)
    }

    pub fn deadline_key(&self, slot: Slot) -> Option<(Time, u64, Slot)> {
        self.deadline.map(|d| (d, self.epoch, slot))
    }
}
