//! [`CpuExecutor`]: runs scheduler steps with a [`LlamaModel`] over a [`PagedKvCache`].
//!
//! All of a step's sequences run as one packed forward: on two cores there is nothing to gain
//! from running micro-batches apart, so each micro-batch is reported busy for its share (by fed
//! tokens) of the fused step's time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tandem_core::{ModelOutput, RequestId, SchedulerOutput, StepTiming, TokenId};

use super::kv_cache::PagedKvCache;
use super::model::{LlamaModel, SeqSlice};
use super::sampling::sample;
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
        let t = out.num_batched_tokens;
        let (mut ids, mut positions) = (Vec::with_capacity(t), Vec::with_capacity(t));
        let mut seqs = Vec::with_capacity(out.seqs.len());
        let mut sample_rows = Vec::new();
        for s in &out.seqs {
            let start_row = ids.len();
            for (i, &tok) in out.tokens(s).iter().enumerate() {
                let tok = if s.feeds_last_sample { self.last_sampled.get(&s.id).copied().unwrap_or(0) } else { tok };
                ids.push(tok);
                positions.push(s.start_pos + i);
            }
            seqs.push(SeqSlice { start_row, len: s.tokens.len(), start_pos: s.start_pos, table: out.block_table(s) });
            if s.sample {
                sample_rows.push(ids.len() - 1);
            }
        }
        let logits = self.model.forward(&ids, &positions, &seqs, &sample_rows, &mut self.cache)?;
        let mut rows = logits.iter();
        let mut sampled = Vec::with_capacity(out.seqs.len());
        for s in &out.seqs {
            let tok = if s.sample {
                let row = rows.next().ok_or_else(|| ExecError::Device("missing logits row".into()))?;
                let fallback = self.nonce ^ s.id.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
                let tok = sample(row, &s.sampler, s.num_generated, fallback);
                self.last_sampled.insert(s.id, tok);
                Some(tok)
            } else {
                None
            };
            sampled.push(tok);
        }
        let device = started.elapsed();
        let share = |r: &std::ops::Range<usize>| {
            let n: usize = out.seqs[r.clone()].iter().map(|s| s.tokens.len()).sum();
            Duration::from_secs_f64(device.as_secs_f64() * n as f64 / t.max(1) as f64)
        };
        let stream_busy = out.micro_batches.iter().map(share).collect();
        Ok(ModelOutput { sampled, timing: StepTiming { device, stream_busy } })
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
