//! [`FaultyExecutor`]: wraps an executor and fails a seeded random share of its steps — for
//! the soak and chaos tests (the role of Jepsen's nemesis or a fault-injecting filesystem).
//!
//! A failed step is run by the inner executor first and its results then thrown away, as a
//! device fault mid-step would leave things: the inner executor's bookkeeping (finished
//! requests forgotten, swaps done) stays true, but the step's tokens are lost and the engine
//! must end that step's requests — and only those — and go on.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tandem_core::{ModelOutput, SchedulerOutput, StreamConfig};

use crate::{ExecError, Executor, KvSpec};

/// An executor whose steps fail with probability `rate`.
pub struct FaultyExecutor {
    inner: Box<dyn Executor>,
    rate: f64,
    rng: ChaCha8Rng,
    injected: u64,
}

impl FaultyExecutor {
    /// Fails each step of `inner` with probability `rate` (0..=1), drawn from `seed`.
    pub fn new(inner: Box<dyn Executor>, rate: f64, seed: u64) -> Self {
        Self { inner, rate: rate.clamp(0.0, 1.0), rng: ChaCha8Rng::seed_from_u64(seed), injected: 0 }
    }
}

impl Executor for FaultyExecutor {
    fn kv_spec(&self) -> KvSpec {
        self.inner.kv_spec()
    }

    fn execute(&mut self, out: &SchedulerOutput) -> Result<ModelOutput, ExecError> {
        let result = self.inner.execute(out)?;
        if !out.seqs.is_empty() && self.rng.random_bool(self.rate) {
            self.injected += 1;
            return Err(ExecError::Device(format!("injected fault #{} (step {})", self.injected, out.step).into()));
        }
        Ok(result)
    }

    fn supports_async(&self) -> bool {
        self.inner.supports_async()
    }

    fn set_streams(&mut self, streams: &StreamConfig) {
        self.inner.set_streams(streams);
    }

    fn describe(&self) -> String {
        format!("{} (failing {:.0}% of steps)", self.inner.describe(), self.rate * 100.0)
    }
}
