//! [`simulate_shared`]: several models' workloads on one simulated device, on a virtual clock,
//! either **time-sliced** the way tandem's contexts share a device (every step gets the whole
//! device; steps of contending contexts interleave by compute share through
//! `tandem_core::contexts::FairShare`, and an idle context leaves the device to the others) or
//! **statically partitioned** (each context runs alone on a fixed fraction of the device's
//! bandwidth, compute and memory, like MIG — what a static half/half split does).
//!
//! Both modes give each context the same scheduler config (so the same KV blocks): the
//! comparison isolates how compute is shared. Every figure is modelled.

use std::time::{Duration, Instant};

use tandem_core::contexts::FairShare;
use tandem_core::{ModelOutput, Scheduler, SchedulerConfig};
use tandem_executor::sim::{ClockMode, DeviceProfile, ModelShape, SimExecutor};
use tandem_executor::Executor;

use super::{admit_arrivals, at, idle_tick, sim_result, simulate, SimConfig, SimResult, Timelines};
use crate::system::SystemStats;
use crate::workload::Workload;
use crate::BenchError;

/// How the device is shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// tandem's contexts: whole device per step, steps interleaved by share.
    TimeSliced,
    /// A fixed equal fraction of the device per context.
    Partitioned,
}

/// One model on the shared device.
#[derive(Debug, Clone)]
pub struct SharedContext {
    pub name: String,
    pub model: ModelShape,
    pub scheduler: SchedulerConfig,
    pub share: f64,
    /// Sorted by send time.
    pub workload: Workload,
}

struct Running<'a> {
    ctx: &'a SharedContext,
    sched: Scheduler,
    exec: SimExecutor,
    lines: Timelines,
    next: usize,
    steps: u64,
    batch_sum: u64,
}

impl Running<'_> {
    fn admit(&mut self, now: Duration) {
        admit_arrivals(&mut self.sched, &self.ctx.workload, &mut self.next, &mut self.lines, now);
    }

    fn next_arrival(&self) -> Option<Duration> {
        self.ctx.workload.times.get(self.next).map(|&t| at(t))
    }
}

/// Runs every context's workload on `device` shared as `sharing`; one result per context, in
/// order.
pub fn simulate_shared(
    device: &DeviceProfile,
    contexts: &[SharedContext],
    sharing: Sharing,
) -> Result<Vec<SimResult>, BenchError> {
    match sharing {
        Sharing::Partitioned => {
            let part = device.partition(1.0 / contexts.len().max(1) as f64);
            contexts
                .iter()
                .map(|c| {
                    let cfg = SimConfig {
                        name: c.name.clone(),
                        scheduler: c.scheduler.clone(),
                        model: c.model.clone(),
                        device: part.clone(),
                    };
                    simulate(&cfg, &c.workload)
                })
                .collect()
        }
        Sharing::TimeSliced => time_sliced(device, contexts),
    }
}

fn time_sliced(device: &DeviceProfile, contexts: &[SharedContext]) -> Result<Vec<SimResult>, BenchError> {
    let started = Instant::now();
    let mut fair = FairShare::new();
    let mut run: Vec<Running<'_>> = Vec::new();
    for c in contexts {
        fair.register(&c.name, c.share);
        let exec = SimExecutor::new(c.model.clone(), device.clone(), c.scheduler.block_size, ClockMode::Virtual)
            .avoiding(c.scheduler.eos_token_ids.clone());
        run.push(Running {
            ctx: c,
            sched: Scheduler::new(c.scheduler.clone())?,
            exec,
            lines: Timelines::new(&c.workload),
            next: 0,
            steps: 0,
            batch_sum: 0,
        });
    }
    let mut now = Duration::ZERO;
    let mut stuck = 0u64;
    loop {
        for r in run.iter_mut() {
            r.admit(now);
        }
        let mut candidates: Vec<usize> = (0..run.len()).filter(|&i| !run[i].sched.is_idle()).collect();
        if candidates.is_empty() {
            match run.iter().filter_map(Running::next_arrival).min() {
                Some(t) => {
                    now = now.max(t);
                    continue;
                }
                None => break,
            }
        }
        // The ready context with the least virtual time whose step has work.
        let mut ran = false;
        while !candidates.is_empty() {
            let names: Vec<&str> = candidates.iter().map(|&i| contexts[i].name.as_str()).collect();
            let Some(pick) = fair.pick(names.iter().copied()) else { break };
            let i = candidates[names.iter().position(|n| *n == pick).unwrap_or(0)];
            let r = &mut run[i];
            let out = r.sched.schedule(now);
            if out.is_empty() {
                r.sched.update(&out, &ModelOutput::default(), now)?;
                candidates.retain(|&c| c != i);
                continue;
            }
            let model = r.exec.execute(&out)?;
            now += model.timing.device;
            fair.charge(&contexts[i].name, model.timing.device);
            r.steps += 1;
            r.batch_sum += out.seqs.len() as u64;
            let deltas = r.sched.update(&out, &model, now)?;
            r.lines.apply(&deltas, now);
            ran = true;
            break;
        }
        if !ran {
            // Everyone is waiting on a timer or memory: move time on.
            now =
                idle_tick(now, run.iter().filter_map(Running::next_arrival).min(), &mut stuck, "of the shared device")?;
        } else {
            stuck = 0;
        }
    }
    Ok(run
        .into_iter()
        .map(|r| {
            let stats = r.sched.stats();
            let system = SystemStats {
                preemptions: Some(stats.preemptions()),
                steps: Some(r.steps),
                mean_batch_size: Some(r.batch_sum as f64 / r.steps.max(1) as f64),
                prefix_cache_queries: Some(stats.prefix_cache_queries),
                prefix_cache_hits: Some(stats.prefix_cache_hits),
                ..SystemStats::default()
            };
            sim_result(&r.ctx.name, &r.ctx.workload, r.lines.records, system, stats, started)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arrival::Arrival;
    use crate::dataset::{DatasetSpec, LengthDist, PromptSet};
    use crate::metrics::Slo;
    use crate::workload::WorkloadSpec;

    fn ctx(name: &str, model: ModelShape, rate: f64, seed: u64) -> SharedContext {
        let spec = WorkloadSpec {
            dataset: DatasetSpec::Modelled {
                prompt: LengthDist::Fixed(128),
                output: LengthDist::Fixed(64),
                shared_prefix_fraction: 0.0,
            },
            requests: 200,
            priority_levels: 1,
            arrival: Arrival::Poisson { rate },
        };
        let scheduler = SchedulerConfig { num_gpu_blocks: 4096, ..SchedulerConfig::default() };
        let workload = spec.generate(PromptSet::fixed(seed), None).unwrap();
        SharedContext { name: name.into(), model, scheduler, share: 1.0, workload }
    }

    #[test]
    fn a_lone_busy_model_gets_the_whole_device_when_time_sliced() {
        // One model busy, the other with no requests: time-slicing gives the busy one the whole
        // device, a static half gives it half the bandwidth, so its steps take longer.
        let busy = ctx("busy", ModelShape::qwen2_5_0_5b(), 50.0, 1);
        let idle = SharedContext { workload: Workload::default(), ..ctx("idle", ModelShape::qwen2_5_0_5b(), 1.0, 2) };
        let h100 = DeviceProfile::h100();
        let sliced = simulate_shared(&h100, &[busy.clone(), idle.clone()], Sharing::TimeSliced).unwrap();
        let parted = simulate_shared(&h100, &[busy, idle], Sharing::Partitioned).unwrap();
        assert_eq!(sliced[0].run.summary.completed, 200);
        assert_eq!(parted[0].run.summary.completed, 200);
        assert!(
            sliced[0].run.summary.tpot_ms.mean < parted[0].run.summary.tpot_ms.mean,
            "{:?} vs {:?}",
            sliced[0].run.summary.tpot_ms,
            parted[0].run.summary.tpot_ms
        );
    }

    #[test]
    fn contending_models_both_finish_and_goodput_counts_only_slo_meeting_requests() {
        let a = ctx("a", ModelShape::qwen2_5_0_5b(), 20.0, 3);
        let b = ctx("b", ModelShape::qwen2_5_1_5b(), 20.0, 4);
        let r = simulate_shared(&DeviceProfile::h100(), &[a, b], Sharing::TimeSliced).unwrap();
        assert!(r.iter().all(|x| x.run.summary.completed == 200 && x.run.summary.failed == 0));
        // Impossible SLOs: no goodput; generous ones: all of the throughput.
        let slo = |ms: f64| Slo { ttft_ms: Some(ms), tpot_ms: Some(ms), e2el_ms: None };
        assert_eq!(r[0].goodput(&slo(0.0)), 0.0);
        let all = r[0].goodput(&slo(3.6e6));
        let rps = r[0].run.summary.request_throughput;
        assert!((all - rps).abs() < 1e-9, "{all} vs {rps}");
    }
}
