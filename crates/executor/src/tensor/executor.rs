//! [`TensorExecutor`]: runs scheduler steps with a [`TensorModel`] on its candle device, the
//! KV cache in device memory and swapped blocks in host memory.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use tandem_core::{HostBlockId, ModelOutput, RequestId, SchedulerOutput, StepTiming, TokenId};

use super::model::{TensorKvCache, TensorModel, TensorSeq};
use crate::cpu::sample;
use crate::{ExecError, Executor, KvSpec};

/// One block's K and V rows for every layer, on the host.
type HostBlock = Vec<(Tensor, Tensor)>;

/// The tensor executor (CUDA under the `cuda` feature; any candle device).
#[derive(Debug)]
pub struct TensorExecutor {
    model: TensorModel,
    cache: TensorKvCache,
    host: HashMap<HostBlockId, HostBlock>,
    last_sampled: HashMap<RequestId, TokenId>,
    nonce: u64,
}

impl TensorExecutor {
    pub fn new(model: TensorModel, block_size: usize, num_blocks: usize) -> Result<Self, ExecError> {
        let cache = TensorKvCache::new(&model, block_size, num_blocks)?;
        let nonce =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        Ok(Self { model, cache, host: HashMap::new(), last_sampled: HashMap::new(), nonce })
    }

    /// Device bytes of one block (all layers, K and V) at `dtype_bytes` per element.
    pub fn bytes_per_block(model: &TensorModel, block_size: usize, dtype_bytes: usize) -> u64 {
        let c = &model.config;
        (2 * c.layers * block_size * c.kv_dim() * dtype_bytes) as u64
    }

    fn block_rows(&self, block: usize) -> Result<Tensor, ExecError> {
        let bs = self.cache.block_size;
        let rows: Vec<u32> = (block * bs..(block + 1) * bs).map(|r| r as u32).collect();
        Ok(Tensor::from_vec(rows, bs, self.model.device())?)
    }

    fn swap_out(&mut self, pairs: &[(tandem_core::BlockId, HostBlockId)]) -> Result<(), ExecError> {
        for &(d, h) in pairs {
            if d.index() >= self.cache.num_blocks {
                return Err(ExecError::InvalidStep(format!("swap-out of block {} beyond the pool", d.0)));
            }
            let idx = self.block_rows(d.index())?;
            let mut layers = Vec::with_capacity(self.cache.k.len());
            for (k, v) in self.cache.k.iter().zip(&self.cache.v) {
                layers.push((
                    k.index_select(&idx, 0)?.to_device(&Device::Cpu)?,
                    v.index_select(&idx, 0)?.to_device(&Device::Cpu)?,
                ));
            }
            self.host.insert(h, layers);
        }
        Ok(())
    }

    fn swap_in(&mut self, pairs: &[(HostBlockId, tandem_core::BlockId)]) -> Result<(), ExecError> {
        for &(h, d) in pairs {
            if d.index() >= self.cache.num_blocks {
                return Err(ExecError::InvalidStep(format!("swap-in to block {} beyond the pool", d.0)));
            }
            let layers =
                self.host.remove(&h).ok_or_else(|| ExecError::InvalidStep(format!("host block {} is empty", h.0)))?;
            let dev = self.model.device().clone();
            let kvd = self.model.config.kv_dim();
            let idx = self
                .block_rows(d.index())?
                .reshape((self.cache.block_size, 1))?
                .broadcast_as((self.cache.block_size, kvd))?
                .contiguous()?;
            for (li, (k, v)) in layers.into_iter().enumerate() {
                self.cache.k[li].scatter_set(&idx, &k.to_device(&dev)?, 0)?;
                self.cache.v[li].scatter_set(&idx, &v.to_device(&dev)?, 0)?;
            }
        }
        Ok(())
    }
}

impl Executor for TensorExecutor {
    fn kv_spec(&self) -> KvSpec {
        let bytes = self.cache.k.first().map_or(4, |t| t.dtype().size_in_bytes());
        KvSpec {
            block_size: self.cache.block_size,
            bytes_per_block: Self::bytes_per_block(&self.model, self.cache.block_size, bytes),
        }
    }

    fn execute(&mut self, out: &SchedulerOutput) -> Result<ModelOutput, ExecError> {
        let started = Instant::now();
        for id in &out.finished {
            self.last_sampled.remove(id);
        }
        self.swap_out(&out.swap_out)?;
        self.swap_in(&out.swap_in)?;
        let t = out.num_batched_tokens;
        let (mut ids, mut positions, mut seqs, mut sample_rows) =
            (Vec::with_capacity(t), Vec::with_capacity(t), Vec::new(), Vec::new());
        for s in &out.seqs {
            let start_row = ids.len();
            for (i, &tok) in out.tokens(s).iter().enumerate() {
                ids.push(if s.feeds_last_sample { self.last_sampled.get(&s.id).copied().unwrap_or(0) } else { tok });
                positions.push(s.start_pos + i);
            }
            seqs.push(TensorSeq { start_row, len: s.tokens.len(), start_pos: s.start_pos, table: out.block_table(s) });
            if s.sample {
                sample_rows.push(ids.len() - 1);
            }
        }
        let logits = if ids.is_empty() {
            Vec::new()
        } else {
            self.model.forward(&ids, &positions, &seqs, &sample_rows, &mut self.cache)?
        };
        let mut rows = logits.iter();
        let mut sampled = Vec::with_capacity(out.seqs.len());
        for s in &out.seqs {
            sampled.push(if s.sample {
                let row = rows.next().ok_or_else(|| ExecError::Device("missing logits row".into()))?;
                let tok =
                    sample(row, &s.sampler, s.num_generated, self.nonce ^ s.id.0.wrapping_mul(0x2545_f491_4f6c_dd1d));
                self.last_sampled.insert(s.id, tok);
                Some(tok)
            } else {
                None
            });
        }
        let device = started.elapsed();
        let share = |r: &std::ops::Range<usize>| {
            let n: usize = out.seqs[r.clone()].iter().map(|s| s.tokens.len()).sum();
            Duration::from_secs_f64(device.as_secs_f64() * n as f64 / t.max(1) as f64)
        };
        Ok(ModelOutput {
            sampled,
            timing: StepTiming { device, stream_busy: out.micro_batches.iter().map(share).collect() },
        })
    }

    fn supports_async(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        let c = &self.model.config;
        format!(
            "tensor ({:?}): {} ({} layers, hidden {}, {} blocks)",
            self.model.device(),
            c.architecture,
            c.layers,
            c.hidden,
            self.cache.num_blocks
        )
    }
}
