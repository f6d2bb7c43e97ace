//! [`simulate_shared`]: several models' workloads on one simulated device, on a virtual clock,
//! either **time-sliced** the way tandem's contexts share a device (every step gets the whole
//! device; steps of contending contexts interleave by compute share through
//! `tandem_core::contexts::FairShare`, and an idle context leaves the device to the others) or
//! **statically partitioned** (each context runs alone on a fixed fraction of the device's
//! bandwidth, compute and memory, like MIG — what a static half/half split does).
//!
//! Both modes give each context the same scheduler config (so the same KV blocks): the
//! comparison isolates how compute is shared.

use std::time::Duration;

use tandem_core::contexts::FairShare;
use tandem_core::{ModelOutput, NewRequest, Scheduler, SchedulerConfig};
use tandem_executor::sim::{ClockMode, DeviceProfile, ModelShape, SimExecutor};
use tandem_executor::Executor;

use crate::error::EngineError;
use crate::report::{RequestRecord, RunSummary};
use crate::sim::{record_deltas, simulate, SimConfig, SimResult};
use crate::workload::WorkloadRequest;

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
    /// Sorted by arrival.
    pub workload: Vec<WorkloadRequest>,
}

struct Running<'a> {
    ctx: &'a SharedContext,
    sched: Scheduler,
    exec: SimExecutor,
    records: Vec<RequestRecord>,
    next: usize,
    steps: u64,
    batch_sum: u64,
}

impl Running<'_> {
    fn admit(&mut self, now: Duration) {
        let w = &self.ctx.workload;
        while self.next < w.len() && w[self.next].arrival <= now {
            let r = &w[self.next];
            let mut req = NewRequest::new(self.next as u64, r.prompt.clone(), r.output_len, r.arrival);
            req.priority = r.priority;
            req.params.ignore_eos = true;
            if self.sched.add_request(req).is_err() {
                self.records[self.next].failed = true;
            }
            self.next += 1;
        }
        self.sched.set_draining(self.next >= w.len());
    }

    fn next_arrival(&self) -> Option<Duration> {
        self.ctx.workload.get(self.next).map(|w| w.arrival)
    }
}

/// Runs every context's workload on `device` shared as `sharing`; one result per context, in
/// order.
pub fn simulate_shared(
    device: &DeviceProfile,
    contexts: &[SharedContext],
    sharing: Sharing,
) -> Result<Vec<SimResult>, EngineError> {
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

fn time_sliced(device: &DeviceProfile, contexts: &[SharedContext]) -> Result<Vec<SimResult>, EngineError> {
    let started = std::time::Instant::now();
    let mut fair = FairShare::new();
    let mut run: Vec<Running<'_>> = Vec::new();
    for c in contexts {
        fair.register(&c.name, c.share);
        let exec = SimExecutor::new(c.model.clone(), device.clone(), c.scheduler.block_size, ClockMode::Virtual)
            .avoiding(c.scheduler.eos_token_ids.clone());
        let records = c
            .workload
            .iter()
            .map(|w| RequestRecord { arrival: w.arrival, prompt_tokens: w.prompt.len(), ..RequestRecord::default() })
            .collect();
        run.push(Running {
            ctx: c,
            sched: Scheduler::new(c.scheduler.clone())?,
            exec,
            records,
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
            let model = r.exec.execute(&out).map_err(|e| EngineError::Executor(e.to_string()))?;
            now += model.timing.device;
            fair.charge(&contexts[i].name, model.timing.device);
            r.steps += 1;
            r.batch_sum += out.seqs.len() as u64;
            let deltas = r.sched.update(&out, &model, now)?;
            record_deltas(&mut r.records, &deltas, now);
            ran = true;
            break;
        }
        if !ran {
            // Everyone is waiting on a timer or memory: move time on.
            stuck += 1;
            if stuck > 50_000_000 {
                return Err(EngineError::Executor("shared simulation made no progress".into()));
            }
            let tick = now + Duration::from_millis(1);
            now = run
                .iter()
                .filter_map(Running::next_arrival)
                .fold(tick, Duration::min)
                .max(now + Duration::from_micros(1));
        } else {
            stuck = 0;
        }
    }
    Ok(run
        .into_iter()
        .map(|r| {
            let stats = r.sched.stats();
            let mut summary = RunSummary::from_records(&r.ctx.name, &r.records);
            summary.preemptions = stats.preemptions();
            summary.steps = r.steps;
            summary.mean_batch_size = r.batch_sum as f64 / r.steps.max(1) as f64;
            SimResult { summary, records: r.records, scheduler: stats, wall: started.elapsed() }
        })
        .collect())
}

/// Requests per second that met both SLOs (TTFT ≤ `ttft`, TPOT ≤ `tpot`), over the context's
/// whole run (first arrival → last completion): vLLM's goodput.
pub fn goodput(result: &SimResult, ttft: Duration, tpot: Duration) -> f64 {
    let good = result
        .records
        .iter()
        .filter(|r| !r.failed && r.finish.is_some())
        .filter(|r| {
            let first = r.ttft().unwrap_or(Duration::MAX);
            let per_token = match (r.e2e(), r.output_tokens) {
                (Some(e2e), n) if n > 1 => (e2e.saturating_sub(first)) / (n as u32 - 1),
                _ => Duration::ZERO,
            };
            first <= ttft && per_token <= tpot
        })
        .count();
    good as f64 / result.summary.duration.as_secs_f64().max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{Arrival, LengthDist, WorkloadSpec};

    fn ctx(name: &str, model: ModelShape, rate: f64, seed: u64) -> SharedContext {
        let spec = WorkloadSpec {
            requests: 200,
            arrival: Arrival::Poisson { rate },
            prompt: LengthDist::Fixed(128),
            output: LengthDist::Fixed(64),
            seed,
            ..WorkloadSpec::default()
        };
        let scheduler = SchedulerConfig { num_gpu_blocks: 4096, ..SchedulerConfig::default() };
        SharedContext { name: name.into(), model, scheduler, share: 1.0, workload: spec.generate() }
    }

    #[test]
    fn a_lone_busy_model_gets_the_whole_device_when_time_sliced() {
        // One model busy, the other with no requests: time-slicing gives the busy one the whole
        // device, a static half gives it half the bandwidth, so its steps take longer.
        let busy = ctx("busy", ModelShape::qwen2_5_0_5b(), 50.0, 1);
        let idle = SharedContext { workload: Vec::new(), ..ctx("idle", ModelShape::qwen2_5_0_5b(), 1.0, 2) };
        let h100 = DeviceProfile::h100();
        let sliced = simulate_shared(&h100, &[busy.clone(), idle.clone()], Sharing::TimeSliced).unwrap();
        let parted = simulate_shared(&h100, &[busy, idle], Sharing::Partitioned).unwrap();
        assert_eq!(sliced[0].summary.completed, 200);
        assert_eq!(parted[0].summary.completed, 200);
        assert!(
            sliced[0].summary.tpot_ms.mean < parted[0].summary.tpot_ms.mean,
            "{:?} vs {:?}",
            sliced[0].summary.tpot_ms,
            parted[0].summary.tpot_ms
        );
    }

    #[test]
    fn contending_models_both_finish_and_goodput_counts_only_slo_meeting_requests() {
        let a = ctx("a", ModelShape::qwen2_5_0_5b(), 20.0, 3);
        let b = ctx("b", ModelShape::qwen2_5_1_5b(), 20.0, 4);
        let r = simulate_shared(&DeviceProfile::h100(), &[a, b], Sharing::TimeSliced).unwrap();
        assert!(r.iter().all(|x| x.summary.completed == 200 && x.summary.failed == 0));
        // Impossible SLOs: no goodput; generous ones: all of the throughput.
        assert_eq!(goodput(&r[0], Duration::ZERO, Duration::ZERO), 0.0);
        let all = goodput(&r[0], Duration::from_secs(3600), Duration::from_secs(3600));
        assert!((all - r[0].summary.request_throughput).abs() < 1e-9, "{all} vs {}", r[0].summary.request_throughput);
    }
}
