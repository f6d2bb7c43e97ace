//! Executors: what runs a [`SchedulerOutput`] on a device and answers with a [`ModelOutput`].
//!
//! The [`Executor`] trait is the other half of the core's contract (vLLM's `ModelRunner`). This
//! crate holds every executor: the simulated device ([`sim`]), the CPU executor ([`cpu`]: our
//! forward and kernels) and the tensor executor ([`tensor`]: candle tensors on any device, CUDA
//! behind the `cuda` feature), over the device-neutral Llama model ([`model`]) and its
//! tokenizer ([`text`]). Every executor runs the same scheduler: a simulated result is a real
//! scheduling result.

pub mod cpu;
pub mod fault;
pub mod model;
pub mod sim;
mod step_io;
pub mod store;
pub mod synth;
pub mod tensor;
pub mod text;

use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use tandem_core::{ModelOutput, SchedulerOutput, StreamConfig};

/// A sync-off step's result, tagged with its step number (streams finish in any order).
pub type StreamResult = (u64, Result<ModelOutput, ExecError>);

/// Runs sync-off steps one at a time, in the order received: what an executor without
/// execution streams does (still correct, as the scheduler takes their results in any order).
pub fn run_streams_serially<E: Executor + ?Sized>(
    e: &mut E,
    jobs: Receiver<Arc<SchedulerOutput>>,
    results: &Sender<StreamResult>,
) {
    for out in jobs {
        if results.send((out.step, e.execute(&out))).is_err() {
            break;
        }
    }
}

/// Per-stream busy time of a step that ran as one fused forward on the first stream: all of
/// `device` there, nothing on the others (they ran nothing apart).
pub fn fused_busy(out: &SchedulerOutput, device: std::time::Duration) -> Vec<std::time::Duration> {
    let mut busy = vec![std::time::Duration::ZERO; out.micro_batches.len().max(1)];
    busy[0] = device;
    busy
}

/// The KV cache geometry an executor needs, from which a memory budget becomes a block count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvSpec {
    /// Tokens per block (must match the scheduler's `block_size`).
    pub block_size: usize,
    /// Device bytes one block takes across all layers (K and V).
    pub bytes_per_block: u64,
}

impl KvSpec {
    /// Blocks that fit in `bytes` of memory.
    pub fn blocks_in(&self, bytes: u64) -> usize {
        (bytes / self.bytes_per_block.max(1)) as usize
    }
}

mod error;
pub use error::{ErrorSource, ExecError};

/// Runs scheduler steps. Implementations own the device state (weights, KV pool).
pub trait Executor: Send {
    /// KV geometry, for sizing the pool.
    fn kv_spec(&self) -> KvSpec;
    /// Runs one step: swap-outs, swap-ins, then the model (see `tandem_core::output`).
    fn execute(&mut self, out: &SchedulerOutput) -> Result<ModelOutput, ExecError>;
    /// Whether this executor fills `feeds_last_sample` placeholders, so the engine may keep a
    /// second step in flight (async scheduling).
    fn supports_async(&self) -> bool {
        false
    }
    /// Applies parallel-stream settings (stream count, priority, synchronization).
    fn set_streams(&mut self, _streams: &StreamConfig) {}
    /// Streams without synchronisation: runs every step received on `jobs` on the stream it
    /// names ([`SchedulerOutput::stream`]) and sends each result, tagged with its step, on
    /// `results`, until `jobs` closes. An executor with execution streams runs different
    /// streams' steps at the same time; this default runs them one at a time
    /// ([`run_streams_serially`]).
    fn run_streams(&mut self, jobs: Receiver<Arc<SchedulerOutput>>, results: &Sender<StreamResult>) {
        run_streams_serially(self, jobs, results);
    }
    /// A short description for logs and reports.
    fn describe(&self) -> String;
}
