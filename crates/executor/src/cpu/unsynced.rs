//! Streams without synchronisation on the CPU (`sync=off`): each stream's lane (`streams.rs`)
//! takes its own steps from its own queue and answers each as soon as it is done, so a lane
//! running decodes keeps stepping while another lane works through a long prefill chunk. The
//! lanes share the weights, the sampling state (behind a lock, held only to pack and to sample)
//! and the paged KV pool through one [`KvView`].
//!
//! The scheduler guarantees that steps in flight on different streams share no sequence and no
//! written block; before a step touches the pool, [`Claims`] checks that against every other
//! step in flight (the blocks it writes — fed positions and swap destinations — against every
//! block the others hold, and the other way round) and refuses the step if it would race, so a
//! broken invariant is an error, never a data race.

use std::collections::HashSet;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rayon::ThreadPool;
use tandem_core::{BlockId, ModelOutput, SchedulerOutput, StepTiming};

use super::kv_cache::KvView;
use super::streams::written_blocks;
use crate::model::LlamaModel;
use crate::step_io::{pack, SamplingState};
use crate::{ExecError, StreamResult};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A step in flight's blocks: its step, the blocks it writes, every block it touches.
type Claimed = (u64, HashSet<BlockId>, HashSet<BlockId>);

/// The KV blocks of the steps in flight.
#[derive(Debug, Default)]
pub(crate) struct Claims {
    inflight: Mutex<Vec<Claimed>>,
}

/// Holds a step's claim until dropped.
pub(crate) struct Claim<'a> {
    claims: &'a Claims,
    step: u64,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        lock(&self.claims.inflight).retain(|c| c.0 != self.step);
    }
}

/// The blocks `out` writes (fed positions, swap-in destinations) and every block it touches.
fn blocks_of(out: &SchedulerOutput, block_size: usize) -> (HashSet<BlockId>, HashSet<BlockId>) {
    let mut written: HashSet<BlockId> = out.swap_in.iter().map(|p| p.1).collect();
    let mut all: HashSet<BlockId> = out.block_ids.iter().copied().collect();
    for s in &out.seqs {
        written.extend(written_blocks(out, s, block_size).iter().copied());
    }
    all.extend(written.iter().copied());
    all.extend(out.swap_out.iter().map(|p| p.0));
    (written, all)
}

impl Claims {
    /// Claims `out`'s blocks, or refuses if they overlap a step in flight's.
    pub fn claim(&self, out: &SchedulerOutput, block_size: usize) -> Result<Claim<'_>, ExecError> {
        let (written, all) = blocks_of(out, block_size);
        let mut inflight = lock(&self.inflight);
        for (step, w, a) in inflight.iter() {
            if let Some(b) = written.intersection(a).chain(w.intersection(&all)).next() {
                return Err(ExecError::InvalidStep(format!(
                    "step {} shares KV block {} with step {step}, in flight on another stream",
                    out.step, b.0
                )));
            }
        }
        inflight.push((out.step, written, all));
        Ok(Claim { claims: self, step: out.step })
    }
}

/// What every lane shares.
pub(crate) struct Shared<'a> {
    pub model: &'a LlamaModel,
    pub view: &'a KvView<'a>,
    pub sampling: Mutex<&'a mut SamplingState>,
    pub claims: Claims,
}

/// Runs the steps of `jobs` on their streams' lanes until `jobs` closes, each result sent on
/// `results` as soon as its step is done.
pub(crate) fn run(
    pools: &[ThreadPool],
    shared: &Shared<'_>,
    jobs: Receiver<Arc<SchedulerOutput>>,
    results: &Sender<StreamResult>,
) {
    std::thread::scope(|scope| {
        let mut lanes = Vec::with_capacity(pools.len());
        for (stream, pool) in pools.iter().enumerate() {
            let (tx, rx) = mpsc::channel::<Arc<SchedulerOutput>>();
            let results = results.clone();
            let spawned =
                std::thread::Builder::new().name(format!("tandem-stream{stream}")).spawn_scoped(scope, move || {
                    for out in rx {
                        let r = run_step(stream, pool, shared, &out);
                        if results.send((out.step, r)).is_err() {
                            break;
                        }
                    }
                });
            // A lane whose thread cannot start answers its steps with the error.
            lanes.push(spawned.ok().map(|_| tx));
        }
        for out in jobs {
            let stream = out.stream.unwrap_or(0);
            let sent = match lanes.get(stream) {
                Some(Some(tx)) => tx.send(Arc::clone(&out)).is_ok(),
                _ => false,
            };
            if !sent {
                let why =
                    ExecError::InvalidStep(format!("step {} names stream {stream}, which is not running", out.step));
                if results.send((out.step, Err(why))).is_err() {
                    break;
                }
            }
        }
    });
}

/// One step on lane `stream`: swaps, forward on the lane's threads, sampling; its busy time is
/// the lane's wall time on it.
fn run_step(
    stream: usize,
    pool: &ThreadPool,
    shared: &Shared<'_>,
    out: &SchedulerOutput,
) -> Result<ModelOutput, ExecError> {
    let started = Instant::now();
    let view = shared.view;
    let _claim = shared.claims.claim(out, view.block_size())?;
    lock(&shared.sampling).forget(&out.finished);
    // SAFETY: the claim proves no other step in flight touches these blocks.
    unsafe {
        view.swap_out(&out.swap_out)?;
        view.swap_in(&out.swap_in)?;
    }
    let swap = started.elapsed();
    let p = pack(out, &lock(&shared.sampling).last);
    let logits = if p.ids.is_empty() {
        Vec::new()
    } else {
        // SAFETY: as above: this step's written blocks are its own, and nobody writes the
        // blocks it reads.
        pool.install(|| unsafe { shared.model.forward_on(&p.ids, &p.positions, &p.seqs, &p.sample_rows, view) })?
    };
    let mut output = lock(&shared.sampling).sample_all(out, &p.ids, &logits)?;
    let device = started.elapsed();
    let mut stream_busy = vec![Duration::ZERO; out.micro_batches.len().max(stream + 1)];
    stream_busy[stream] = device;
    output.timing = StepTiming { device, stream_busy, swap };
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_core::RequestId;

    #[test]
    fn a_step_writing_a_block_another_step_holds_is_refused() {
        // 4-token blocks. Step 1 feeds positions 4..6 of table [0, 1] (writes block 1).
        let mut a = SchedulerOutput { step: 1, ..SchedulerOutput::default() };
        a.push_seq(RequestId(1), [5, 6], 4, [BlockId(0), BlockId(1)], true);
        // Step 2 reads block 0 as a shared prefix and writes block 2: no conflict.
        let mut b = SchedulerOutput { step: 2, ..SchedulerOutput::default() };
        b.push_seq(RequestId(2), [7], 4, [BlockId(0), BlockId(2)], true);
        // Step 3 reads block 1, which step 1 is writing.
        let mut c = SchedulerOutput { step: 3, ..SchedulerOutput::default() };
        c.push_seq(RequestId(3), [8], 8, [BlockId(0), BlockId(1), BlockId(3)], true);
        let claims = Claims::default();
        let held = claims.claim(&a, 4).unwrap();
        let _b = claims.claim(&b, 4).unwrap();
        assert!(claims.claim(&c, 4).is_err());
        drop(held); // step 1 is done: block 1 is written and may be read
        assert!(claims.claim(&c, 4).is_ok());
    }
}
