//! [`CpuExecutor`]: runs scheduler steps with a [`LlamaModel`] over a [`PagedKvCache`].
//!
//! With one stream a step's sequences run as one packed forward on all cores. With several
//! (`streams=N`), each micro-batch of the step runs at the same time on its own lane of cores
//! (`streams.rs`), and each lane's busy time is measured there. With streams unsynchronised
//! (`sync=off`), each lane runs its own stream's steps as they come (`unsynced.rs`).

use tandem_core::{ModelOutput, SchedulerOutput};

use super::kv_cache::PagedKvCache;
use super::streams::Lanes;
use super::unsynced;
use crate::model::LlamaModel;
use crate::step_io::{execute_packed, Forwarded, Packed, PackedForward, SamplingState};
use crate::{ExecError, Executor, KvSpec};

/// Bytes of one K or V element in the CPU's KV cache.
const F32: usize = std::mem::size_of::<f32>();

/// The CPU executor.
#[derive(Debug)]
pub struct CpuExecutor {
    model: LlamaModel,
    cache: PagedKvCache,
    sampling: SamplingState,
    lanes: Lanes,
}

impl CpuExecutor {
    /// An executor with a KV pool of `num_blocks` device and `num_host_blocks` host blocks.
    pub fn new(model: LlamaModel, block_size: usize, num_blocks: usize, num_host_blocks: usize) -> Self {
        let c = &model.config;
        let cache = PagedKvCache::new(c.layers, c.kv_dim(), block_size, num_blocks, num_host_blocks);
        Self { model, cache, sampling: SamplingState::new(), lanes: Lanes::default() }
    }

    /// Device blocks that fit in `bytes` of KV memory for this model.
    pub fn blocks_for_memory(model: &LlamaModel, block_size: usize, bytes: u64) -> usize {
        let c = &model.config;
        (bytes / c.kv_bytes_per_block(block_size, F32)) as usize
    }

    pub fn model(&self) -> &LlamaModel {
        &self.model
    }

    /// Steps whose micro-batches shared a written KV block and so ran fused instead of apart.
    pub fn serialized_steps(&self) -> u64 {
        self.lanes.serialized_steps
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

    fn forward(&mut self, p: &Packed<'_>, out: &SchedulerOutput) -> Result<Forwarded, ExecError> {
        let view = self.cache.view();
        if let Some(r) = self.lanes.run(&self.model, &view, p, out) {
            let (logits, busy) = r?;
            return Ok((logits, Some(busy)));
        }
        // The whole forward inside the global pool (`rayon::scope` from outside runs its body on
        // a worker), so its ~5 parallel regions a layer fork from a worker and join there,
        // instead of each being injected from this thread, which then sleeps until woken.
        let model = &self.model;
        // SAFETY: one forward on the view.
        let logits =
            rayon::scope(|_| unsafe { model.forward_on(&p.ids, &p.positions, &p.seqs, &p.sample_rows, &view) })?;
        Ok((logits, None))
    }
}

impl Executor for CpuExecutor {
    fn kv_spec(&self) -> KvSpec {
        let c = &self.model.config;
        KvSpec {
            block_size: self.cache.block_size(),
            bytes_per_block: c.kv_bytes_per_block(self.cache.block_size(), F32),
        }
    }

    fn execute(&mut self, out: &SchedulerOutput) -> Result<ModelOutput, ExecError> {
        execute_packed(self, out)
    }

    fn supports_async(&self) -> bool {
        true
    }

    /// Each stream's steps on its own lane, the lanes at the same time (`unsynced.rs`); with
    /// one lane, one step at a time.
    fn run_streams(
        &mut self,
        jobs: std::sync::mpsc::Receiver<std::sync::Arc<SchedulerOutput>>,
        results: &std::sync::mpsc::Sender<crate::StreamResult>,
    ) {
        if self.lanes.len() < 2 {
            return crate::run_streams_serially(self, jobs, results);
        }
        let view = self.cache.view();
        let shared = unsynced::Shared {
            model: &self.model,
            view: &view,
            sampling: std::sync::Mutex::new(&mut self.sampling),
            claims: unsynced::Claims::default(),
        };
        unsynced::run(&self.lanes.pools, &shared, jobs, results);
    }

    /// One lane of cores per stream (a lane that cannot start leaves the steps fused, which
    /// the reported busy times show: everything on the first stream).
    fn set_streams(&mut self, streams: &tandem_core::StreamConfig) {
        if streams.num_streams.max(1) != self.lanes.len().max(1) || streams.stream_priority != self.lanes.priority() {
            self.lanes = Lanes::new(streams.num_streams, streams.stream_priority).unwrap_or_default();
        }
    }

    fn describe(&self) -> String {
        let c = &self.model.config;
        format!(
            "cpu: {} ({} layers, hidden {}, {} weights, {} blocks, {} stream lane(s))",
            c.architecture,
            c.layers,
            c.hidden,
            self.model.weight_format(),
            self.cache.num_blocks(),
            self.lanes.len().max(1)
        )
    }
}
