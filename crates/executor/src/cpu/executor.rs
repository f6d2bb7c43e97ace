//! [`CpuExecutor`]: runs scheduler steps with a [`LlamaModel`] over a [`PagedKvCache`].
//!
//! All of a step's sequences run as one packed forward: on two cores there is nothing to gain
//! from running micro-batches apart, so each micro-batch is reported busy for its share (by fed
//! tokens) of the fused step's time.

use std::collections::HashMap;
use std::time::Instant;

use tandem_core::{ModelOutput, RequestId, SchedulerOutput, StepTiming, TokenId};

use super::kv_cache::PagedKvCache;
use super::model::LlamaModel;
use crate::{ExecError, Executor, KvSpec};

/// The CPU executor.
#[derive(Debug)]
pub struct CpuExecutor {
    model: LlamaModel,
    cache: PagedKvCache,
    /// The token sampled for each live request in its latest step (placeholders read it).
    last_sampled: HashMap<RequestId, TokenId>,
    /// Seed for requests without one (random per executor).
    nonce: u64,
}

impl CpuExecutor {
    /// An executor with a KV pool of `num_blocks` device and `num_host_blocks` host blocks.
    pub fn new(model: LlamaModel, block_size: usize, num_blocks: usize, num_host_blocks: usize) -> Self {
        let c = &model.config;
        let cache = PagedKvCache::new(c.layers, c.kv_dim(), block_size, num_blocks, num_host_blocks);
        let nonce =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        Self { model, cache, last_sampled: HashMap::new(), nonce }
    }

    /// Device blocks that fit in `bytes` of KV memory for this model.
    pub fn blocks_for_memory(model: &LlamaModel, block_size: usize, bytes: u64) -> usize {
        let c = &model.config;
        (bytes / PagedKvCache::bytes_per_block(c.layers, c.kv_dim(), block_size)) as usize
    }

    pub fn model(&self) -> &LlamaModel {
        &self.model
    }
}

impl Executor for CpuExecutor {
    fn kv_spec(&self) -> KvSpec {
        let c = &self.model.config;
        KvSpec {
            block_size: self.cache.block_size(),
            bytes_per_block: PagedKvCache::bytes_per_block(c.layers, c.kv_dim(), self.cache.block_size()),
        }
    }

    fn execute(&mut self, out: &SchedulerOutput) -> Result<ModelOutput, ExecError> {
        let started = Instant::now();
        for id in &out.finished {
            self.last_sampled.remove(id);
        }
        self.cache.swap_out(&out.swap_out)?;
        self.cache.swap_in(&out.swap_in)?;
        let p = crate::step_io::pack(out, &self.last_sampled);
        let logits = self.model.forward(&p.ids, &p.positions, &p.seqs, &p.sample_rows, &mut self.cache)?;
        let mut output = crate::step_io::sample_all(out, &logits, &mut self.last_sampled, self.nonce)?;
        let device = started.elapsed();
        output.timing = StepTiming { device, stream_busy: crate::busy_by_tokens(out, device) };
        Ok(output)
    }

    fn supports_async(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        let c = &self.model.config;
        format!(
            "cpu: {} ({} layers, hidden {}, {} weights, {} blocks)",
            c.architecture,
            c.layers,
            c.hidden,
            self.model.weight_format(),
            self.cache.num_blocks()
        )
    }
}
