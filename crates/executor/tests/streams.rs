//! Parallel streams on the CPU executor: a step's micro-batches run at the same time on their
//! own lanes of cores, give the tokens the fused step gives, and report each lane's measured
//! busy time (not a split of the step's time by tokens).

use std::sync::OnceLock;

use tandem_core::{BlockId, RequestId, SchedulerOutput, StreamConfig};
use tandem_executor::cpu::CpuExecutor;
use tandem_executor::model::{load_model_as, LlamaModel, WeightFormat};
use tandem_executor::store::default_model;
use tandem_executor::Executor;

/// The default int8 model, loaded once (seconds in a test build); each test gets a copy.
fn model() -> LlamaModel {
    static MODEL: OnceLock<LlamaModel> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            load_model_as(&default_model().expect("fetch the default model"), WeightFormat::Q8).expect("load").model
        })
        .clone()
}

/// A step of prefills `(id, tokens, first block)`, split into `micro_batches`.
fn step(prefills: &[(u64, usize, u32)], micro_batches: Vec<std::ops::Range<usize>>) -> SchedulerOutput {
    let mut out = SchedulerOutput::default();
    for &(id, n, first_block) in prefills {
        let tokens = (0..n).map(|j| (100 + (id as usize * 31 + j * 7) % 20_000) as u32);
        let table = (0..n.div_ceil(16) as u32).map(|b| BlockId(first_block + b));
        out.push_seq(RequestId(id), tokens, 0, table, true);
        out.num_batched_tokens += n;
    }
    out.micro_batches = micro_batches;
    out
}

#[test]
#[allow(clippy::single_range_in_vec_init)] // one micro-batch is one range, on purpose
fn micro_batches_run_apart_with_the_fused_steps_tokens_and_their_own_busy_time() {
    // A 256-token prefill (blocks 0..16) and a 4-token one (block 40), each sampling.
    let prefills = [(1, 256, 0), (2, 4, 40)];
    let mut fused = CpuExecutor::new(model(), 16, 64, 0);
    let one = fused.execute(&step(&prefills, vec![0..2])).unwrap();
    assert_eq!(one.timing.stream_busy, vec![one.timing.device], "one stream: the whole step");

    let mut apart = CpuExecutor::new(model(), 16, 64, 0);
    apart.set_streams(&StreamConfig { num_streams: 2, ..StreamConfig::default() });
    let two = apart.execute(&step(&prefills, vec![0..1, 1..2])).unwrap();
    assert_eq!(two.sampled, one.sampled, "the same greedy tokens as the fused step");
    assert_eq!(apart.serialized_steps(), 0);
    let busy = &two.timing.stream_busy;
    assert_eq!(busy.len(), 2);
    // Measured on each lane: the 256-token prefill takes far longer than the 4-token one (the
    // old token split would say 256/260 and 4/260 by construction; this is a clock).
    assert!(busy[0] > busy[1] * 4 && !busy[1].is_zero(), "{busy:?}");
    assert!(busy.iter().all(|b| *b <= two.timing.device), "{busy:?} within {:?}", two.timing.device);
}

#[test]
#[allow(clippy::single_range_in_vec_init)]
fn micro_batches_sharing_a_written_block_run_fused() {
    // Both prefills write block 0: they cannot run at once, so the step runs fused, reports
    // everything on the first stream, and is counted.
    let prefills = [(1, 8, 0), (2, 8, 0)];
    let mut e = CpuExecutor::new(model(), 16, 8, 0);
    e.set_streams(&StreamConfig { num_streams: 2, ..StreamConfig::default() });
    let out = e.execute(&step(&prefills, vec![0..1, 1..2])).unwrap();
    assert_eq!(e.serialized_steps(), 1);
    assert_eq!(out.timing.stream_busy, vec![out.timing.device, std::time::Duration::ZERO]);
}
