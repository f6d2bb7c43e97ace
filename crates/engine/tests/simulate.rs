//! The virtual-time simulator: deterministic, complete, and faithful to the policies.

use std::time::Duration;

use tandem_core::{BatchingKind, SchedulerConfig, StreamAssignment, StreamConfig};
use tandem_engine::{simulate, Arrival, LengthDist, SimConfig, WorkloadSpec};
use tandem_executor::sim::{DeviceProfile, ModelShape};

fn config(name: &str, scheduler: SchedulerConfig) -> SimConfig {
    SimConfig { name: name.into(), scheduler, model: ModelShape::qwen2_5_0_5b(), device: DeviceProfile::h100() }
}

#[test]
fn every_request_completes_with_its_length_and_runs_repeat_exactly() {
    let spec = WorkloadSpec { requests: 500, arrival: Arrival::Poisson { rate: 200.0 }, ..WorkloadSpec::default() };
    let w = spec.generate();
    let cfg = config("base", SchedulerConfig { num_gpu_blocks: 4000, ..SchedulerConfig::default() });
    let a = simulate(&cfg, &w).unwrap();
    assert_eq!((a.summary.completed, a.summary.failed), (500, 0));
    for (r, req) in a.records.iter().zip(&w) {
        assert_eq!(r.output_tokens, req.output_len);
        assert!(r.first_token.unwrap() > r.arrival && r.finish.unwrap() >= r.first_token.unwrap());
    }
    let b = simulate(&cfg, &w).unwrap();
    assert_eq!(a.summary, b.summary, "virtual time makes runs repeatable");
}

#[test]
fn fixed_batching_forms_seed_004s_eight_batches() {
    let spec = WorkloadSpec {
        requests: 30,
        prompt: LengthDist::Fixed(8),
        output: LengthDist::Fixed(50),
        ..WorkloadSpec::default()
    };
    let cfg = config(
        "naive",
        SchedulerConfig {
            batching: BatchingKind::Fixed { batch_size: 4, max_wait: None },
            ..SchedulerConfig::default()
        },
    );
    let r = simulate(&cfg, &spec.generate()).unwrap();
    assert_eq!(r.scheduler.batches_formed, 8);
    assert_eq!(r.summary.completed, 30);
    // Continuous batching runs all 30 together: one batch, and far less time.
    let cont = simulate(&config("continuous", SchedulerConfig::default()), &spec.generate()).unwrap();
    assert_eq!(cont.scheduler.batches_formed, 1);
    assert!(cont.summary.duration * 4 < r.summary.duration, "{:?} vs {:?}", cont.summary.duration, r.summary.duration);
}

#[test]
fn parallel_streams_report_per_stream_utilisation_and_keep_every_token() {
    let spec = WorkloadSpec {
        requests: 300,
        prompt: LengthDist::Uniform(500, 1500),
        output: LengthDist::Uniform(20, 100),
        ..WorkloadSpec::default()
    };
    let w = spec.generate();
    let simple = simulate(&config("simple", SchedulerConfig::default()), &w).unwrap();
    let parallel_cfg =
        SchedulerConfig { streams: StreamConfig::parallel(StreamAssignment::Smart), ..SchedulerConfig::default() };
    let parallel = simulate(&config("parallel", parallel_cfg), &w).unwrap();
    assert_eq!(simple.summary.stream_utilisation.len(), 1);
    assert_eq!(parallel.summary.stream_utilisation.len(), 2);
    assert!(parallel.summary.stream_utilisation.iter().all(|&u| u > 0.0 && u <= 1.0));
    let tokens = |r: &tandem_engine::SimResult| r.records.iter().map(|x| x.output_tokens).collect::<Vec<_>>();
    assert_eq!(tokens(&simple), tokens(&parallel));
    assert!(parallel.summary.duration != Duration::ZERO);
}
