//! The contract between scheduler and executor: [`SchedulerOutput`] goes out, [`ModelOutput`]
//! comes back (vLLM's `SchedulerOutput` / `ModelRunnerOutput`). Plain data, no shared state.
//!
//! To keep a step allocation-light at large batch sizes, the fed tokens and the block tables of
//! all sequences live in two flat arrays; each [`ScheduledSeq`] holds ranges into them
//! (read them with [`SchedulerOutput::tokens`] and [`SchedulerOutput::block_table`]).
//!
//! **Executor obligations**, in this order within a step:
//! 1. copy every `swap_out` pair device → host;
//! 2. copy every `swap_in` pair host → device;
//! 3. run the model on `seqs` (the micro-batches may run concurrently), writing each fed
//!    token's K/V at its position through the block table, and sample where `sample` is set.
//!
//! A device block freed by a swap-out may be reused by this very step (hence 1 before 2 and 3).
//!
//! With `sync=off` each output is one stream's step ([`SchedulerOutput::stream`]) and steps of
//! different streams run at the same time: they never share a sequence, a block one of them
//! writes belongs to that one alone (shared prefix blocks are full and only read), and their
//! results may come back in any order.

use std::ops::Range;
use std::time::Duration;

use crate::request::SamplerParams;
use crate::types::{BlockId, HostBlockId, RequestId, TokenId};

/// One sequence's work in a step.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduledSeq {
    pub id: RequestId,
    /// Range into [`SchedulerOutput::token_ids`]: the tokens to feed (a prefill chunk, or the
    /// one last sampled token when decoding). Never empty.
    pub tokens: Range<usize>,
    /// Position in the sequence of the first fed token (= tokens whose KV is already cached).
    pub start_pos: usize,
    /// Range into [`SchedulerOutput::block_ids`]: the whole block table, in order; it has room
    /// for `start_pos + tokens.len()` tokens.
    pub blocks: Range<usize>,
    /// Sample a token after the last fed one (the chunk reaches the end of the known tokens).
    pub sample: bool,
    pub sampler: SamplerParams,
    /// Tokens generated before the one this step samples (for seeded sampling streams).
    pub num_generated: usize,
    /// Async scheduling: the one fed token is not known yet; feed the token this executor
    /// sampled for this request in the previous step (its value in `token_ids` is
    /// [`PLACEHOLDER_TOKEN`]). If there is none (the request was aborted or its previous step
    /// failed meanwhile), feed any token: the scheduler discards that result.
    pub feeds_last_sample: bool,
    /// Range into [`SchedulerOutput::token_ids`]: the tokens before `start_pos` (prompt and
    /// generated), sent with a prefill chunk that starts past 0 (a prefix-cache hit, a later
    /// chunk, a recompute) when the sampler has penalties, which need every token the request
    /// has seen while the executor only sees what is fed (vLLM sends new requests' prompts the
    /// same way). Empty otherwise; never counted as fed.
    pub context: Range<usize>,
    /// Range into [`SchedulerOutput::banned_ids`]: tokens the sampler must not pick this step
    /// (EOS and stop tokens of a request below its `min_tokens`). Empty for most sequences.
    pub banned: Range<usize>,
    /// Range into [`SchedulerOutput::logit_bias`]: (token, bias) added to this sample's logits
    /// (OpenAI's `logit_bias`). Empty for most sequences.
    pub bias: Range<usize>,
    /// Range into [`SchedulerOutput::allowed_words`]: structured output's token mask for this
    /// sample (bit `t % 32` of word `t / 32` set = token `t` allowed; tokens past the mask are
    /// not). Empty: unconstrained. The scheduler leaves it empty; the engine fills it.
    pub allowed: Range<usize>,
}

/// Stands in `token_ids` for a token still being sampled on the device.
pub const PLACEHOLDER_TOKEN: TokenId = TokenId::MAX;

impl ScheduledSeq {
    /// A sequence feeding `tokens` (a range of the output's `token_ids`) from `start_pos`
    /// through `blocks`, with default sampling, no history and nothing banned: for code that
    /// builds steps by hand (executor tests, `tandem bench-model`).
    pub fn new(id: RequestId, tokens: Range<usize>, start_pos: usize, blocks: Range<usize>, sample: bool) -> Self {
        Self {
            id,
            tokens,
            start_pos,
            blocks,
            sample,
            sampler: SamplerParams::default(),
            num_generated: 0,
            feeds_last_sample: false,
            context: 0..0,
            banned: 0..0,
            bias: 0..0,
            allowed: 0..0,
        }
    }

    pub fn num_tokens(&self) -> usize {
        self.tokens.len()
    }
    /// Whether the sequence is in prefill (fed more than one token, or its first token).
    pub fn is_prefill(&self) -> bool {
        self.tokens.len() > 1 || self.num_generated == 0
    }
}

/// Everything the executor must do in one step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SchedulerOutput {
    /// Step number, from 0; `update` must receive outputs in this order.
    pub step: u64,
    pub seqs: Vec<ScheduledSeq>,
    /// All fed tokens, concatenated in `seqs` order.
    pub token_ids: Vec<TokenId>,
    /// All block tables, concatenated in `seqs` order.
    pub block_ids: Vec<BlockId>,
    /// Index ranges into `seqs`, one per execution stream (index = stream; a range may be
    /// empty); a single range when serial, none when nothing is scheduled.
    pub micro_batches: Vec<Range<usize>>,
    /// Streams without synchronisation (`sync=off`): the one stream this step runs on (its
    /// micro-batch is the range at that index, the others are empty). Such a step runs while
    /// other streams' steps are in flight; none of its sequences is in another one. `None`
    /// for a synchronised step, whose micro-batches run together.
    pub stream: Option<usize>,
    /// Device → host copies to do first.
    pub swap_out: Vec<(BlockId, HostBlockId)>,
    /// Host → device copies to do second.
    pub swap_in: Vec<(HostBlockId, BlockId)>,
    /// Requests that ended since the previous output: the executor may drop their state.
    pub finished: Vec<RequestId>,
    /// Requests preempted in this step (their blocks were dropped or swapped out).
    pub preempted: Vec<RequestId>,
    /// Sum of fed tokens; never above the token budget.
    pub num_batched_tokens: usize,
    /// All banned tokens, concatenated in `seqs` order (see [`ScheduledSeq::banned`]).
    pub banned_ids: Vec<TokenId>,
    /// All token masks, concatenated (see [`ScheduledSeq::allowed`]).
    pub allowed_words: Vec<u32>,
    /// All logit biases, concatenated in `seqs` order (see [`ScheduledSeq::bias`]).
    pub logit_bias: Vec<(TokenId, f32)>,
}

impl SchedulerOutput {
    /// Appends a sequence feeding `tokens` from `start_pos` through block table `table` (see
    /// [`ScheduledSeq::new`]); the step's plan (`micro_batches`, `num_batched_tokens`) stays
    /// the caller's to set. For code that builds steps by hand.
    pub fn push_seq(
        &mut self,
        id: RequestId,
        tokens: impl IntoIterator<Item = TokenId>,
        start_pos: usize,
        table: impl IntoIterator<Item = BlockId>,
        sample: bool,
    ) -> &mut ScheduledSeq {
        let t0 = self.token_ids.len();
        self.token_ids.extend(tokens);
        let b0 = self.block_ids.len();
        self.block_ids.extend(table);
        let seq = ScheduledSeq::new(id, t0..self.token_ids.len(), start_pos, b0..self.block_ids.len(), sample);
        self.seqs.push(seq);
        let last = self.seqs.len() - 1;
        &mut self.seqs[last]
    }

    /// The tokens to feed for `seq`.
    pub fn tokens(&self, seq: &ScheduledSeq) -> &[TokenId] {
        &self.token_ids[seq.tokens.clone()]
    }

    /// The tokens `seq` must not sample this step.
    pub fn banned(&self, seq: &ScheduledSeq) -> &[TokenId] {
        self.banned_ids.get(seq.banned.clone()).unwrap_or_default()
    }

    /// The logit biases of `seq`'s sample.
    pub fn bias(&self, seq: &ScheduledSeq) -> &[(TokenId, f32)] {
        self.logit_bias.get(seq.bias.clone()).unwrap_or_default()
    }

    /// The token mask of `seq`'s sample, if constrained (see [`ScheduledSeq::allowed`]).
    pub fn allowed(&self, seq: &ScheduledSeq) -> Option<&[u32]> {
        self.allowed_words.get(seq.allowed.clone()).filter(|m| !m.is_empty())
    }

    /// The block table of `seq`.
    pub fn block_table(&self, seq: &ScheduledSeq) -> &[BlockId] {
        &self.block_ids[seq.blocks.clone()]
    }

    /// True when there is nothing for the executor to do.
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty() && self.swap_out.is_empty() && self.swap_in.is_empty()
    }

    /// Sequences that sample this step.
    pub fn num_samples(&self) -> usize {
        self.seqs.iter().filter(|s| s.sample).count()
    }
}

/// Measured (or simulated) time of one step on the device.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepTiming {
    /// Wall time from the step's launch to its results.
    pub device: Duration,
    /// Busy time of each stream, aligned with `SchedulerOutput::micro_batches`.
    pub stream_busy: Vec<Duration>,
    /// Part of `device` spent copying the step's swap-outs and swap-ins.
    pub swap: Duration,
}

/// Log-probabilities around one sampled token (OpenAI's `logprobs`), from the model's raw
/// distribution — before temperature and filters, as vLLM reports by default.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    /// The sampled token and its log-probability.
    pub token: TokenId,
    pub logprob: f32,
    /// The most likely tokens, most likely first (as many as the request asked for).
    pub top: Vec<(TokenId, f32)>,
}

/// What the executor returns for one [`SchedulerOutput`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelOutput {
    /// Aligned with `SchedulerOutput::seqs`: `Some(token)` exactly where `sample` was set.
    pub sampled: Vec<Option<TokenId>>,
    pub timing: StepTiming,
    /// Aligned with `seqs` like `sampled`, `Some` where a sampling sequence asked for
    /// log-probabilities (`SamplerParams::logprobs`); empty when none did or the executor
    /// does not compute them (the simulator).
    pub logprobs: Vec<Option<TokenLogprobs>>,
}

impl ModelOutput {
    /// An output with `sampled` and no timing (tests, fake executors).
    pub fn sampled(sampled: Vec<Option<TokenId>>) -> Self {
        Self { sampled, ..Self::default() }
    }
}
