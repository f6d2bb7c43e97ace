//! [`TensorExecutor`]: runs scheduler steps with a [`TensorModel`] on its candle device, the
//! KV cache in device memory and swapped blocks in host memory.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use tandem_core::{HostBlockId, ModelOutput, SchedulerOutput};

use super::model::{TensorKvCache, TensorModel};
use super::paged;
use crate::step_io::{execute_packed, Forwarded, Packed, PackedForward, SamplingState};
use crate::{ExecError, Executor, KvSpec};

/// One block's K and V (`block_size·kv_dim` each) for every layer, on the host.
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

    /// Checks that every device block of a swap-in is in the pool, before its host blocks are
    /// taken out (the block copy checks again, but only after that).
    fn check_pool(&self, blocks: &[u32]) -> Result<(), ExecError> {
        match blocks.iter().find(|&&b| b as usize >= self.cache.num_blocks) {
            Some(b) => Err(ExecError::InvalidStep(format!("swap of block {b} beyond the pool"))),
            None => Ok(()),
        }
    }

    /// Device → host: per layer, the step's blocks gathered by one block-copy kernel into a
    /// staging tensor, copied to the host in one transfer, then split per block.
    fn swap_out(&mut self, pairs: &[(tandem_core::BlockId, HostBlockId)]) -> Result<(), ExecError> {
        if pairs.is_empty() {
            return Ok(());
        }
        // gather_blocks checks the blocks are in the pool before anything changes.
        let blocks: Vec<u32> = pairs.iter().map(|p| p.0 .0).collect();
        let bs = self.cache.block_size;
        let mut host: Vec<HostBlock> = pairs.iter().map(|_| Vec::with_capacity(self.cache.k.len())).collect();
        for (k, v) in self.cache.k.iter().zip(&self.cache.v) {
            let ks = paged::gather_blocks(k, &blocks, bs)?.to_device(&Device::Cpu)?;
            let vs = paged::gather_blocks(v, &blocks, bs)?.to_device(&Device::Cpu)?;
            for (i, layers) in host.iter_mut().enumerate() {
                layers.push((ks.get(i)?, vs.get(i)?));
            }
        }
        for (&(_, h), layers) in pairs.iter().zip(host) {
            self.host.insert(h, layers);
        }
        Ok(())
    }

    /// Host → device: per layer, the blocks stacked on the host, one transfer, then one
    /// block-copy kernel into their slots.
    fn swap_in(&mut self, pairs: &[(HostBlockId, tandem_core::BlockId)]) -> Result<(), ExecError> {
        if pairs.is_empty() {
            return Ok(());
        }
        let blocks: Vec<u32> = pairs.iter().map(|p| p.1 .0).collect();
        self.check_pool(&blocks)?;
        let mut host = Vec::with_capacity(pairs.len());
        for &(h, _) in pairs {
            host.push(
                self.host.remove(&h).ok_or_else(|| ExecError::InvalidStep(format!("host block {} is empty", h.0)))?,
            );
        }
        let dev = self.model.device().clone();
        let bs = self.cache.block_size;
        for li in 0..self.cache.k.len() {
            let ks: Vec<&Tensor> = host.iter().map(|layers| &layers[li].0).collect();
            let vs: Vec<&Tensor> = host.iter().map(|layers| &layers[li].1).collect();
            paged::scatter_blocks(&self.cache.k[li], &Tensor::stack(&ks, 0)?.to_device(&dev)?, &blocks, bs)?;
            paged::scatter_blocks(&self.cache.v[li], &Tensor::stack(&vs, 0)?.to_device(&dev)?, &blocks, bs)?;
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
        // One fused forward on one device stream (CUDA streams per micro-batch: not built yet).
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
