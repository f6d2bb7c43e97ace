//! [`simulate`]: runs a workload through the real scheduler and the simulated device on a
//! virtual clock — no sleeping, no threads — so that 100,000 requests take seconds. Time
//! advances by each step's modelled device time, or jumps to the next arrival when idle.
//! CPU time of the scheduler itself is not added (it is ~10 µs a step; see BENCHMARKS.md).

use std::time::{Duration, Instant};

use tandem_core::{FinishReason, ModelOutput, NewRequest, Scheduler, SchedulerConfig, SchedulerStats};
use tandem_executor::sim::{ClockMode, DeviceProfile, ModelShape, SimExecutor};
use tandem_executor::Executor;

use crate::error::EngineError;
use crate::report::{RequestRecord, RunSummary};
use crate::workload::WorkloadRequest;

/// One configuration to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub name: String,
    pub scheduler: SchedulerConfig,
    pub model: ModelShape,
    pub device: DeviceProfile,
}

/// A simulation's summary, its per-request records, and how long it took to compute.
#[derive(Debug, Clone)]
pub struct SimResult {
    pub summary: RunSummary,
    pub records: Vec<RequestRecord>,
    /// The scheduler's counters at the end (preemptions, batches formed, prefix hits, ...).
    pub scheduler: SchedulerStats,
    pub wall: Duration,
}

/// Applies a step's deltas at `now` to the per-request records (indexed by request id).
pub(crate) fn record_deltas(records: &mut [RequestRecord], deltas: &[tandem_core::RequestDelta], now: Duration) {
    for d in deltas {
        let r = &mut records[d.id.0 as usize];
        if d.token.is_some() {
            r.output_tokens += 1;
            r.first_token.get_or_insert(now);
        }
        if let Some(reason) = d.finish {
            r.finish = Some(now);
            r.failed = matches!(reason, FinishReason::Aborted(_) | FinishReason::Rejected(_));
        }
    }
}

/// Most consecutive empty steps before a simulation is declared stuck.
const MAX_IDLE_STEPS: u64 = 50_000_000;

/// Runs `workload` (sorted by arrival) under `cfg`.
pub fn simulate(cfg: &SimConfig, workload: &[WorkloadRequest]) -> Result<SimResult, EngineError> {
    let started = Instant::now();
    let mut sched = Scheduler::new(cfg.scheduler.clone())?;
    let mut exec =
        SimExecutor::new(cfg.model.clone(), cfg.device.clone(), cfg.scheduler.block_size, ClockMode::Virtual)
            .avoiding(cfg.scheduler.eos_token_ids.clone());
    exec.set_streams(&cfg.scheduler.streams);
    let mut records: Vec<RequestRecord> = workload
        .iter()
        .map(|w| RequestRecord { arrival: w.arrival, prompt_tokens: w.prompt.len(), ..RequestRecord::default() })
        .collect();
    let (mut now, mut next, mut idle) = (Duration::ZERO, 0usize, 0u64);
    let (mut busy, mut device, mut batch_sum, mut steps, mut peak_kv) =
        (Vec::<Duration>::new(), Duration::ZERO, 0u64, 0u64, 0f64);
    loop {
        while next < workload.len() && workload[next].arrival <= now {
            let w = &workload[next];
            let mut req = NewRequest::new(next as u64, w.prompt.clone(), w.output_len, w.arrival);
            req.priority = w.priority;
            req.params.ignore_eos = true;
            if sched.add_request(req).is_err() {
                records[next].failed = true;
            }
            next += 1;
        }
        let arrivals_left = next < workload.len();
        sched.set_draining(!arrivals_left);
        if sched.is_idle() {
            match workload.get(next) {
                Some(w) => {
                    now = now.max(w.arrival);
                    continue;
                }
                None => break,
            }
        }
        let out = sched.schedule(now);
        if out.is_empty() {
            sched.update(&out, &ModelOutput::default(), now)?;
            idle += 1;
            if idle > MAX_IDLE_STEPS {
                return Err(EngineError::Executor(format!("simulation {} made no progress", cfg.name)));
            }
            // Waiting on a batching timer or an arrival: move time forward.
            let tick = now + Duration::from_millis(1);
            now = workload.get(next).map_or(tick, |w| w.arrival.min(tick).max(now + Duration::from_micros(1)));
            continue;
        }
        idle = 0;
        let model = exec.execute(&out).map_err(|e| EngineError::Executor(e.to_string()))?;
        now += model.timing.device;
        device += model.timing.device;
        if busy.len() < model.timing.stream_busy.len() {
            busy.resize(model.timing.stream_busy.len(), Duration::ZERO);
        }
        for (b, s) in busy.iter_mut().zip(&model.timing.stream_busy) {
            *b += *s;
        }
        batch_sum += out.seqs.len() as u64;
        steps += 1;
        let st = sched.stats();
        peak_kv = peak_kv.max(st.kv_usage());
        record_deltas(&mut records, &sched.update(&out, &model, now)?, now);
    }
    let stats = sched.stats();
    let mut summary = RunSummary::from_records(&cfg.name, &records);
    summary.preemptions = stats.preemptions();
    summary.steps = steps;
    summary.mean_batch_size = batch_sum as f64 / steps.max(1) as f64;
    summary.peak_kv_usage = peak_kv;
    let wall = device.as_secs_f64().max(1e-12);
    summary.stream_utilisation = busy.iter().map(|b| b.as_secs_f64() / wall).collect();
    Ok(SimResult { summary, records, scheduler: stats, wall: started.elapsed() })
}
