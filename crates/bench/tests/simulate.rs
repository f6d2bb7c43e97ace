//! The virtual-time simulator: deterministic, complete, and faithful to the policies.

use tandem_bench::{
    simulate, Arrival, DatasetSpec, LengthDist, PromptSet, SimConfig, SimResult, Workload, WorkloadSpec,
};
use tandem_core::{BatchingKind, SchedulerConfig, StreamAssignment, StreamConfig};
use tandem_executor::sim::{DeviceProfile, ModelShape};

fn config(name: &str, scheduler: SchedulerConfig) -> SimConfig {
    SimConfig { name: name.into(), scheduler, model: ModelShape::qwen2_5_0_5b(), device: DeviceProfile::h100() }
}

fn workload(requests: usize, prompt: LengthDist, output: LengthDist, arrival: Arrival) -> Workload {
    let dataset = DatasetSpec::Modelled { prompt, output, shared_prefix_fraction: 0.0 };
    WorkloadSpec { dataset, requests, priority_levels: 1, arrival }.generate(PromptSet::fixed(0), None).unwrap()
}

#[test]
fn every_request_completes_with_its_length_and_runs_repeat_exactly() {
    let w =
        workload(500, LengthDist::sharegpt_prompt(), LengthDist::sharegpt_output(), Arrival::Poisson { rate: 200.0 });
    let cfg = config("base", SchedulerConfig { num_gpu_blocks: 4000, ..SchedulerConfig::default() });
    let a = simulate(&cfg, &w).unwrap();
    assert_eq!((a.run.summary.completed, a.run.summary.failed), (500, 0));
    for (r, req) in a.run.results.iter().zip(&w.requests) {
        assert_eq!(r.output_tokens, req.output_len);
        assert!(r.ttft.unwrap() > 0.0 && r.latency >= r.ttft.unwrap());
        // One inter-token gap per token after the first.
        assert_eq!(r.itl.len(), req.output_len - 1);
    }
    let b = simulate(&cfg, &w).unwrap();
    assert_eq!(a.run.summary, b.run.summary, "virtual time makes runs repeatable");
}

#[test]
fn fixed_batching_forms_seed_004s_eight_batches() {
    let w = workload(30, LengthDist::Fixed(8), LengthDist::Fixed(50), Arrival::AllAtOnce);
    let cfg = config(
        "naive",
        SchedulerConfig {
            batching: BatchingKind::Fixed { batch_size: 4, max_wait: None },
            ..SchedulerConfig::default()
        },
    );
    let r = simulate(&cfg, &w).unwrap();
    assert_eq!(r.scheduler.batches_formed, 8);
    assert_eq!(r.run.summary.completed, 30);
    // Continuous batching runs all 30 together: one batch, and far less time.
    let cont = simulate(&config("continuous", SchedulerConfig::default()), &w).unwrap();
    assert_eq!(cont.scheduler.batches_formed, 1);
    let (c, f) = (cont.run.summary.duration, r.run.summary.duration);
    assert!(c * 4.0 < f, "{c} vs {f}");
}

#[test]
fn parallel_streams_report_per_stream_utilisation_and_keep_every_token() {
    let w = workload(300, LengthDist::Uniform(500, 1500), LengthDist::Uniform(20, 100), Arrival::AllAtOnce);
    let simple = simulate(&config("simple", SchedulerConfig::default()), &w).unwrap();
    let parallel_cfg =
        SchedulerConfig { streams: StreamConfig::parallel(StreamAssignment::Smart), ..SchedulerConfig::default() };
    let parallel = simulate(&config("parallel", parallel_cfg), &w).unwrap();
    assert_eq!(simple.run.system.stream_utilisation.len(), 1);
    assert_eq!(parallel.run.system.stream_utilisation.len(), 2);
    assert!(parallel.run.system.stream_utilisation.iter().all(|&u| u > 0.0 && u <= 1.0));
    let tokens = |r: &SimResult| r.run.results.iter().map(|x| x.output_tokens).collect::<Vec<_>>();
    assert_eq!(tokens(&simple), tokens(&parallel));
    assert!(parallel.run.summary.duration != 0.0);
}

#[test]
fn a_shared_prefix_workload_reports_its_hit_rate() {
    // Every prompt starts with the one 64-token prefix: four full 16-token blocks. After the
    // first request computes them, later ones find them cached.
    let dataset = DatasetSpec::Modelled {
        prompt: LengthDist::Fixed(128),
        output: LengthDist::Fixed(4),
        shared_prefix_fraction: 1.0,
    };
    let w = WorkloadSpec { dataset, requests: 50, priority_levels: 1, arrival: Arrival::Fixed { rate: 100.0 } }
        .generate(PromptSet::fixed(1), None)
        .unwrap();
    let r = simulate(&config("prefix", SchedulerConfig::default()), &w).unwrap();
    let hit = r.run.system.prefix_cache_hit_rate().unwrap();
    // At most 64 of each 128 prompt tokens can hit: just under 50% over 50 requests.
    assert!((0.4..=0.5).contains(&hit), "{hit}");
    let cold = simulate(
        &config("cold", SchedulerConfig::default()),
        &workload(50, LengthDist::Fixed(128), LengthDist::Fixed(4), Arrival::Fixed { rate: 100.0 }),
    )
    .unwrap();
    assert_eq!(cold.run.system.prefix_cache_hit_rate(), Some(0.0));
}
