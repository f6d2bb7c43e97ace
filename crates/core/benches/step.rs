//! One `schedule()` + `update()` step at decode batch sizes 16..512, with 2,000 requests
//! waiting, 16-token blocks, ~1k-token contexts, prefix caching on (so full blocks are hashed
//! as they fill). The fake model output is built inside the timed loop, like an executor would.
//!
//! `cargo bench -p tandem-core --bench step`. Target: <= 30 µs per step at batch 256. Also the
//! prefix-cache hash of one 16-token block (`-- hash_block`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tandem_core::{Limits, ModelOutput, NewRequest, Scheduler, SchedulerConfig};

const WAITING: u64 = 2_000;
const PROMPT: u32 = 1_000;
/// Steps before the state is rebuilt, so contexts stay between 1k and 1.5k tokens.
const STEPS_PER_STATE: u64 = 500;

/// A scheduler with `batch` requests decoding and 2,000 waiting.
fn steady_state(batch: usize) -> Scheduler {
    let cfg = SchedulerConfig {
        max_num_seqs: batch,
        max_num_batched_tokens: 1 << 20, // prefill everything at once while building
        num_gpu_blocks: batch * 100 + 64,
        max_num_partial_prefills: batch,
        ..SchedulerConfig::default()
    };
    let mut s = Scheduler::new(cfg).unwrap();
    for id in 0..batch as u64 + WAITING {
        // Distinct prompts: no accidental prefix sharing.
        let prompt = (0..PROMPT).map(|i| (id as u32).wrapping_mul(7919).wrapping_add(i) % 49_000 + 1).collect();
        s.add_request(NewRequest::new(id, prompt, 3_000, Duration::ZERO)).unwrap();
    }
    step(&mut s, 1); // prefill all `batch`
    s.set_limits(Limits {
        max_num_seqs: batch,
        max_num_batched_tokens: batch.max(2_048),
        long_prefill_token_threshold: 0,
    })
    .unwrap();
    step(&mut s, 2);
    assert_eq!(s.stats().last_batch_size, batch, "decoding the whole batch");
    assert_eq!(s.num_waiting() as u64, WAITING);
    s
}

fn step(s: &mut Scheduler, token: u32) -> usize {
    let out = s.schedule(Duration::ZERO);
    let model = ModelOutput::sampled(out.seqs.iter().map(|q| q.sample.then_some(token)).collect());
    let deltas = s.update(&out, &model, Duration::ZERO).unwrap();
    deltas.len()
}

fn bench_decode_step(c: &mut Criterion) {
    let mut group = c.benchmark_group("schedule_update_decode_step");
    group.measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1)).sample_size(30);
    for batch in [16usize, 64, 128, 256, 512] {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            let mut state = steady_state(batch);
            let mut age = 0u64;
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for i in 0..iters {
                    if age == STEPS_PER_STATE {
                        state = steady_state(batch);
                        age = 0;
                    }
                    let start = Instant::now();
                    black_box(step(&mut state, 3 + (i % 1000) as u32));
                    timed += start.elapsed();
                    age += 1;
                }
                timed
            });
        });
    }
    group.finish();
}

/// The prefix-cache key of one 16-token block (SHA-256 over the parent hash and the tokens):
/// what each full block of a prompt costs to hash.
fn bench_block_hash(c: &mut Criterion) {
    let tokens: Vec<u32> = (0..16).map(|i| 1_000 + i * 37).collect();
    let parent = tandem_core::kv::hash_block(None, &tokens);
    c.bench_function("hash_block/16_tokens", |b| {
        b.iter(|| tandem_core::kv::hash_block(black_box(Some(parent)), black_box(&tokens)))
    });
}

criterion_group!(benches, bench_decode_step, bench_block_hash);
criterion_main!(benches);
