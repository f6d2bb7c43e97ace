//! [`SimExecutor`]: answers scheduler steps with deterministic tokens after the modelled time.

use std::time::Duration;

use tandem_core::{ModelOutput, SchedulerOutput, StepTiming, StreamConfig, TokenId};

use super::{step_cost, DeviceProfile, ModelShape};
use crate::{ExecError, Executor, KvSpec};

/// How the simulated device spends the modelled time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockMode {
    /// Sleep for it (serving: latencies are real).
    RealTime,
    /// Only report it; the driver advances a virtual clock (`tandem simulate`).
    Virtual,
}

/// A simulated device running a [`ModelShape`] on a [`DeviceProfile`].
#[derive(Debug, Clone)]
pub struct SimExecutor {
    model: ModelShape,
    device: DeviceProfile,
    block_size: usize,
    clock: ClockMode,
    streams: StreamConfig,
    /// Token ids the sampler must avoid (EOS), so simulated requests run to `max_tokens`.
    avoid: Vec<TokenId>,
    /// Tokens are drawn from `0..vocab` (the tokenizer's, when it is smaller than the shape's).
    vocab: usize,
    steps: u64,
    busy: Duration,
}

impl SimExecutor {
    /// A simulated `model` on `device`; the model is stored at the device's element size.
    pub fn new(mut model: ModelShape, device: DeviceProfile, block_size: usize, clock: ClockMode) -> Self {
        model.dtype_bytes = device.dtype_bytes;
        model.kv_dtype_bytes = device.kv_dtype_bytes;
        let vocab = model.vocab.max(2);
        Self {
            vocab,
            model,
            device,
            block_size,
            clock,
            streams: StreamConfig::default(),
            avoid: Vec::new(),
            steps: 0,
            busy: Duration::ZERO,
        }
    }

    /// Never sample these tokens (the model's EOS ids).
    pub fn avoiding(mut self, tokens: Vec<TokenId>) -> Self {
        self.avoid = tokens;
        self
    }

    /// Sample only ids below `n` (a tokenizer's vocabulary: the shape's may be larger), so
    /// every token decodes to text.
    pub fn sampling_below(mut self, n: usize) -> Self {
        self.vocab = n.clamp(2, self.model.vocab.max(2));
        self
    }

    pub fn model(&self) -> &ModelShape {
        &self.model
    }

    pub fn device(&self) -> &DeviceProfile {
        &self.device
    }

    /// Total modelled device time so far.
    pub fn busy(&self) -> Duration {
        self.busy
    }

    /// KV blocks that fit in `fraction` of device memory after the weights.
    pub fn kv_blocks_for_memory(&self, fraction: f64) -> usize {
        self.kv_spec().blocks_in(self.device.kv_memory(&self.model, fraction))
    }

    /// The token a sequence samples: a hash of (request, position), so a request's text does
    /// not depend on how it was batched, streamed or preempted.
    fn token(&self, id: u64, position: usize) -> TokenId {
        let mut x = id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (position as u64).wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
        x ^= x >> 31;
        x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 29;
        let vocab = self.vocab as u64;
        let mut t = (x % vocab) as TokenId;
        // At most one pass over the vocabulary (if every id is to be avoided, any will do).
        for _ in 0..self.avoid.len().min(self.vocab) {
            if !self.avoid.contains(&t) {
                break;
            }
            t = (t + 1) % vocab as TokenId;
        }
        t
    }
}

impl Executor for SimExecutor {
    fn kv_spec(&self) -> KvSpec {
        KvSpec {
            block_size: self.block_size,
            bytes_per_block: self.model.kv_bytes_per_token() * self.block_size as u64,
        }
    }

    fn execute(&mut self, out: &SchedulerOutput) -> Result<ModelOutput, ExecError> {
        let cost = step_cost(out, &self.model, &self.device, self.block_size);
        let sampled =
            out.seqs.iter().map(|s| s.sample.then(|| self.token(s.id.0, s.start_pos + s.tokens.len()))).collect();
        self.steps += 1;
        self.busy += cost.device;
        if self.clock == ClockMode::RealTime && !cost.device.is_zero() {
            std::thread::sleep(cost.device);
        }
        Ok(ModelOutput {
            sampled,
            timing: StepTiming { device: cost.device, stream_busy: cost.stream_busy, ..StepTiming::default() },
            ..ModelOutput::default()
        })
    }

    fn supports_async(&self) -> bool {
        true // tokens depend only on (request, position): placeholders need no lookup
    }

    fn set_streams(&mut self, streams: &StreamConfig) {
        self.streams = *streams;
    }

    fn describe(&self) -> String {
        format!("simulated {} on {} ({:?} clock)", self.model.name, self.device.name, self.clock)
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // one micro-batch is one range, on purpose
mod tests {
    use super::*;

    #[test]
    fn kv_pool_is_what_memory_leaves_after_weights() {
        let e = SimExecutor::new(ModelShape::qwen2_5_0_5b(), DeviceProfile::h100(), 16, ClockMode::Virtual);
        // 0.9 · 80e9 = 72e9 B; weights 494,032,768 · 2 = 988,065,536 B; left 71,011,934,464 B.
        // A block: 12,288 B/token · 16 = 196,608 B → 361,185 blocks.
        assert_eq!(e.kv_blocks_for_memory(0.9), 361_185);
    }

    #[test]
    fn tokens_depend_only_on_request_and_position_and_avoid_eos() {
        let mut e = SimExecutor::new(ModelShape::smollm2_135m(), DeviceProfile::h100(), 16, ClockMode::Virtual);
        let seq = |id, start| crate::sim::test_seq(id, 1, start, true);
        let out = SchedulerOutput { seqs: vec![seq(1, 5), seq(2, 5)], micro_batches: vec![0..2], ..Default::default() };
        let a = e.execute(&out).unwrap();
        let b = e.execute(&out).unwrap();
        assert_eq!(a.sampled, b.sampled);
        assert_ne!(a.sampled[0], a.sampled[1], "different requests, different text");
        assert!(a.timing.device > Duration::ZERO);
        let banned = a.sampled[0].unwrap();
        let mut e = e.avoiding(vec![banned]).sampling_below(1000);
        let s = e.execute(&out).unwrap().sampled;
        assert_ne!(s[0], Some(banned));
        assert!(s.iter().all(|t| t.unwrap() < 1000), "{s:?}");
    }
}
