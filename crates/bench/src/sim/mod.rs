//! [`simulate`]: replays a [`Workload`] through the real scheduler and the simulated device on a
//! virtual clock — no sleeping, no threads — so that 100,000 requests take seconds. Time
//! advances by each step's modelled device time, or jumps to the next arrival when idle. CPU
//! time of the scheduler itself is not added (it is ~10 µs a step; see BENCHMARKS.md). Every
//! figure it reports is **modelled** (the roofline cost model of `tandem_executor::sim`).
//!
//! With streams unsynchronised (`sync=off`) the replay is event-driven, one timeline per
//! stream (`unsynced.rs`).
//!
//! Its records and summary are the benchmark's own ([`RequestRecord`], [`Summary`]), so a
//! simulation and a measured run print in one table.

mod shared;
mod unsynced;

use std::time::{Duration, Instant};

use tandem_core::{FinishReason, ModelOutput, NewRequest, RequestDelta, Scheduler, SchedulerConfig, SchedulerStats};
use tandem_executor::sim::{ClockMode, DeviceProfile, ModelShape, SimExecutor};
use tandem_executor::Executor;

pub use shared::{simulate_shared, SharedContext, Sharing};

use crate::metrics::{RequestRecord, Slo, Summary};
use crate::runner::RunResult;
use crate::system::SystemStats;
use crate::workload::Workload;
use crate::BenchError;

/// The percentiles a simulation reports.
pub const SIM_PERCENTILES: [f64; 3] = [50.0, 95.0, 99.0];

/// One configuration to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub name: String,
    pub scheduler: SchedulerConfig,
    pub model: ModelShape,
    pub device: DeviceProfile,
}

/// A simulation's run (records, summary, modelled engine figures), the scheduler's counters
/// and how long it took to compute.
#[derive(Debug, Clone)]
pub struct SimResult {
    pub run: RunResult,
    /// The scheduler's counters at the end (preemptions, batches formed, prefix hits, ...).
    pub scheduler: SchedulerStats,
    pub wall: Duration,
}

impl SimResult {
    /// Requests per second that met every SLO, over the run (vLLM's goodput).
    pub fn goodput(&self, slo: &Slo) -> f64 {
        Summary::of(&self.run.results, &[], slo).request_goodput.unwrap_or(0.0)
    }
}

/// Per-request timelines of a simulation, filled from the scheduler's deltas.
pub(crate) struct Timelines {
    pub records: Vec<RequestRecord>,
    last_token: Vec<f64>,
}

impl Timelines {
    pub fn new(w: &Workload) -> Self {
        let records = w
            .iter()
            .enumerate()
            .map(|(seq, (at, r))| RequestRecord {
                seq,
                prompt_len: r.prompt_len,
                sent_at: at,
                ..RequestRecord::default()
            })
            .collect();
        Self { records, last_token: vec![0.0; w.len()] }
    }

    /// Applies a step's deltas at `now` (request ids are workload indices).
    pub fn apply(&mut self, deltas: &[RequestDelta], now: Duration) {
        let now = now.as_secs_f64();
        for d in deltas {
            let i = d.id.0 as usize;
            let (Some(r), Some(last)) = (self.records.get_mut(i), self.last_token.get_mut(i)) else { continue };
            if d.token.is_some() {
                r.output_tokens += 1;
                match r.ttft {
                    None => r.ttft = Some(now - r.sent_at),
                    Some(_) => r.itl.push(now - *last),
                }
                *last = now;
            }
            if let Some(reason) = d.finish {
                r.latency = now - r.sent_at;
                r.success = !matches!(reason, FinishReason::Aborted(_) | FinishReason::Rejected(_));
                if !r.success {
                    r.error = format!("{reason:?}");
                }
            }
        }
    }

    pub fn reject(&mut self, i: usize, why: String) {
        if let Some(r) = self.records.get_mut(i) {
            r.success = false;
            r.error = why;
        }
    }
}

/// The scheduler request for workload entry `i`, arriving at `at`.
pub(crate) fn new_request(i: usize, at: f64, r: &crate::dataset::BenchRequest) -> NewRequest {
    let prompt = r.tokens().map_or_else(|| vec![100; r.prompt_len], <[u32]>::to_vec);
    let mut req = NewRequest::new(i as u64, prompt, r.output_len, Duration::from_secs_f64(at));
    req.priority = r.priority;
    req.params.ignore_eos = true;
    req
}

/// A simulated run's result from its timelines and counters.
pub(crate) fn sim_result(
    name: &str,
    w: &Workload,
    records: Vec<RequestRecord>,
    system: SystemStats,
    scheduler: SchedulerStats,
    started: Instant,
) -> SimResult {
    let summary = Summary::of(&records, &SIM_PERCENTILES, &Slo::default());
    let run = RunResult {
        name: name.to_string(),
        run_num: 1,
        request_rate: w.rate,
        max_concurrency: None,
        results: records,
        summary,
        system,
    };
    SimResult { run, scheduler, wall: started.elapsed() }
}

/// Adds the requests of `w` that have arrived by `now`, from `*next` on (a refused one is
/// recorded as failed), and marks the scheduler draining once every request has arrived.
pub(crate) fn admit_arrivals(
    sched: &mut Scheduler,
    w: &Workload,
    next: &mut usize,
    lines: &mut Timelines,
    now: Duration,
) {
    while *next < w.len() && at(w.times[*next]) <= now {
        if let Err(e) = sched.add_request(new_request(*next, w.times[*next], &w.requests[*next])) {
            lines.reject(*next, e.to_string());
        }
        *next += 1;
    }
    sched.set_draining(*next >= w.len());
}

/// Where the clock of a simulation waiting on a batching timer or an arrival moves: 1 ms on,
/// or the next arrival if sooner, and at least 1 µs on. Counts the wait in `idle` (consecutive
/// steps without work) and fails a simulation `name` that makes no progress.
pub(crate) fn idle_tick(
    now: Duration,
    next_arrival: Option<Duration>,
    idle: &mut u64,
    name: &str,
) -> Result<Duration, BenchError> {
    *idle += 1;
    if *idle > MAX_IDLE_STEPS {
        return Err(BenchError::Simulation(format!("simulation {name} made no progress")));
    }
    let tick = now + Duration::from_millis(1);
    Ok(next_arrival.map_or(tick, |t| t.min(tick)).max(now + Duration::from_micros(1)))
}

/// Most consecutive empty steps before a simulation is declared stuck.
const MAX_IDLE_STEPS: u64 = 50_000_000;

fn at(secs: f64) -> Duration {
    Duration::from_secs_f64(secs.max(0.0))
}

/// Runs `workload` (sorted by send time) under `cfg`.
pub fn simulate(cfg: &SimConfig, workload: &Workload) -> Result<SimResult, BenchError> {
    if !cfg.scheduler.streams.synchronize && cfg.scheduler.streams.num_streams > 1 {
        return unsynced::simulate_unsynced(cfg, workload);
    }
    let started = Instant::now();
    let mut sched = Scheduler::new(cfg.scheduler.clone())?;
    let mut exec =
        SimExecutor::new(cfg.model.clone(), cfg.device.clone(), cfg.scheduler.block_size, ClockMode::Virtual)
            .avoiding(cfg.scheduler.eos_token_ids.clone());
    exec.set_streams(&cfg.scheduler.streams);
    let mut lines = Timelines::new(workload);
    let (mut now, mut next, mut idle) = (Duration::ZERO, 0usize, 0u64);
    let (mut busy, mut device, mut batch_sum, mut steps, mut peak_kv) =
        (Vec::<Duration>::new(), Duration::ZERO, 0u64, 0u64, 0f64);
    loop {
        admit_arrivals(&mut sched, workload, &mut next, &mut lines, now);
        if sched.is_idle() {
            match workload.times.get(next) {
                Some(&t) => {
                    now = now.max(at(t));
                    continue;
                }
                None => break,
            }
        }
        let out = sched.schedule(now);
        if out.is_empty() {
            sched.update(&out, &ModelOutput::default(), now)?;
            // Waiting on a batching timer or an arrival: move time forward.
            now = idle_tick(now, workload.times.get(next).map(|&t| at(t)), &mut idle, &cfg.name)?;
            continue;
        }
        idle = 0;
        let model = exec.execute(&out)?;
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
        peak_kv = peak_kv.max(sched.stats().kv_usage());
        lines.apply(&sched.update(&out, &model, now)?, now);
    }
    let stats = sched.stats();
    let system = StepTally { busy, wall: device, batch_sum, steps, peak_kv }.system(&stats);
    Ok(sim_result(&cfg.name, workload, lines.records, system, stats, started))
}

/// What a simulation counted over its steps: each stream's busy time, the device's busy wall
/// time, sequences over all steps, steps, the highest KV usage.
pub(crate) struct StepTally {
    pub busy: Vec<Duration>,
    pub wall: Duration,
    pub batch_sum: u64,
    pub steps: u64,
    pub peak_kv: f64,
}

impl StepTally {
    /// The modelled engine figures of the run, with the scheduler's counters `stats`.
    pub fn system(&self, stats: &SchedulerStats) -> SystemStats {
        let wall = self.wall.as_secs_f64().max(1e-12);
        SystemStats {
            stream_utilisation: self.busy.iter().map(|b| b.as_secs_f64() / wall).collect(),
            mean_batch_size: Some(self.batch_sum as f64 / self.steps.max(1) as f64),
            preemptions: Some(stats.preemptions()),
            steps: Some(self.steps),
            peak_kv_usage: Some(self.peak_kv),
            prefix_cache_queries: Some(stats.prefix_cache_queries),
            prefix_cache_hits: Some(stats.prefix_cache_hits),
            ..SystemStats::default()
        }
    }
}
