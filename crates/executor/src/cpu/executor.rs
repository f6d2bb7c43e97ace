//! [`CpuExecutor`]: runs scheduler steps with a [`LlamaModel`] over a [`PagedKvCache`].
//!
//! All of a step's sequences run as one packed forward: on two cores there is nothing to gain
//! from running micro-batches apart, so each micro-batch is reported busy for its share (by fed
//! tokens) of the fused step's time.

use tandem_core::{ModelOutput, SchedulerOutput};

use super::kv_cache::PagedKvCache;
use crate::model::LlamaModel;
use crate::step_io::{execute_packed, Packed, PackedForward, SamplingState};
use crate::{ExecError, Executor, KvSpec};

/// The CPU executor.
#[derive(Debug)]
pub struct CpuExecutor {
    model: LlamaModel,
    cache: PagedKvCache,
    sampling: SamplingState,
}

impl CpuExecutor {
    /// An executor with a KV pool of `num_blocks` device and `num_host_blocks` host blocks.
    pub fn new(model: LlamaModel, block_size: usize, num_blocks: usize, num_host_blocks: usize) -> Self {
        let c = &model.config;
        let cache = PagedKvCache::new(c.layers, c.kv_dim(), block_size, num_blocks, num_host_blocks);
        Self { model, cache, sampling: SamplingState::new() }
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

impl PackedForward for CpuExecutor {
    fn sampling(&mut self) -> &mut SamplingState {
        &mut self.sampling
    }

    fn swap(&mut self, out: &SchedulerOutput) -> Result<(), ExecError> {
        self.cache.swap_out(&out.swap_out)?;
        self.cache.swap_in(&out.swap_in)
    }

    fn forward(&mut self, p: &Packed<'_>) -> Result<Vec<Vec<f32>>, ExecError> {
        self.model.forward(&p.ids, &p.positions, &p.seqs, &p.sample_rows, &mut self.cache)
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
        execute_packed(self, out)
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
