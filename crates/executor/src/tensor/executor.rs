//! [`TensorExecutor`]: runs scheduler steps with a [`TensorModel`] on its candle device, the
//! KV cache in device memory and swapped blocks in host memory.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use tandem_core::{HostBlockId, ModelOutput, SchedulerOutput};

use super::model::{TensorKvCache, TensorModel};
use crate::step_io::{execute_packed, Forwarded, Packed, PackedForward, SamplingState};
use crate::{ExecError, Executor, KvSpec};

/// One block's K and V rows for every layer, on the host.
type HostBlock = Vec<(Tensor, Tensor)>;

/// The tensor executor (CUDA under the `cuda` feature; any candle device).
#[derive(Debug)]
pub struct TensorExecutor {
    model: TensorModel,
    cache: TensorKvCache,
    host: HashMap<HostBlockId, HostBlock>,
    sampling: SamplingState,
}

impl TensorExecutor {
    pub fn new(model: TensorModel, block_size: usize, num_blocks: usize) -> Result<Self, ExecError> {
        let cache = TensorKvCache::new(&model, block_size, num_blocks)?;
        Ok(Self { model, cache, host: HashMap::new(), sampling: SamplingState::new() })
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

impl PackedForward for TensorExecutor {
    fn sampling(&mut self) -> &mut SamplingState {
        &mut self.sampling
    }

    fn swap(&mut self, out: &SchedulerOutput) -> Result<(), ExecError> {
        self.swap_out(&out.swap_out)?;
        self.swap_in(&out.swap_in)
    }

    fn forward(&mut self, p: &Packed<'_>, _: &SchedulerOutput) -> Result<Forwarded, ExecError> {
        // One fused forward on one device stream (CUDA streams per micro-batch: issue 19).
        Ok((self.model.forward(&p.ids, &p.positions, &p.seqs, &p.sample_rows, &mut self.cache)?, None))
    }
}

impl Executor for TensorExecutor {
    fn kv_spec(&self) -> KvSpec {
        let bytes = self.cache.k.first().map_or(4, |t| t.dtype().size_in_bytes());
        KvSpec {
            block_size: self.cache.block_size,
            bytes_per_block: self.model.config.kv_bytes_per_block(self.cache.block_size, bytes),
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
            "tensor ({:?}): {} ({} layers, hidden {}, {} blocks)",
            self.model.device(),
            c.architecture,
            c.layers,
            c.hidden,
            self.cache.num_blocks
        )
    }
}
