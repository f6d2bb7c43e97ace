//! [`simulate`](super::simulate) with streams unsynchronised (`sync=off`): an event-driven
//! replay in which each stream is its own timeline. A free stream is given its step at once
//! (`Scheduler::schedule_stream`), the step ends at its modelled time, and the clock jumps to
//! the next step to end (or the next arrival when every stream is idle) — the engine's sync-off
//! loop on a virtual clock.
//!
//! Modelled, and so labelled: each of the `n` streams runs on its lane's resources
//! (`DeviceProfile::lane`: on a CPU its share of the cores, as the executor's lanes; on a GPU a
//! static `1/n` slice, which overstates a lone stream's time, since an idle stream's share goes
//! to the busy one there).

use std::time::{Duration, Instant};

use tandem_core::{ModelOutput, Scheduler, SchedulerOutput};
use tandem_executor::sim::{ClockMode, SimExecutor};
use tandem_executor::Executor;

use super::{admit_arrivals, at, idle_tick, sim_result, SimConfig, SimResult, StepTally, Timelines};
use crate::workload::Workload;
use crate::BenchError;

/// A stream's step in flight: the step, its answer and when it ends.
struct Running {
    out: SchedulerOutput,
    model: ModelOutput,
    ends: Duration,
}

/// Runs `workload` under `cfg` with unsynchronised streams.
pub(super) fn simulate_unsynced(cfg: &SimConfig, workload: &Workload) -> Result<SimResult, BenchError> {
    let started = Instant::now();
    let n = cfg.scheduler.streams.num_streams.max(1);
    let mut sched = Scheduler::new(cfg.scheduler.clone())?;
    let slice = cfg.device.lane(n);
    let mut exec = SimExecutor::new(cfg.model.clone(), slice, cfg.scheduler.block_size, ClockMode::Virtual)
        .avoiding(cfg.scheduler.eos_token_ids.clone());
    let mut lines = Timelines::new(workload);
    let mut streams: Vec<Option<Running>> = (0..n).map(|_| None).collect();
    let (mut now, mut next, mut idle) = (Duration::ZERO, 0usize, 0u64);
    let mut busy = vec![Duration::ZERO; n];
    let (mut wall, mut busy_since) = (Duration::ZERO, None::<Duration>);
    let (mut batch_sum, mut steps, mut peak_kv) = (0u64, 0u64, 0f64);
    loop {
        admit_arrivals(&mut sched, workload, &mut next, &mut lines, now);
        for (s, slot) in streams.iter_mut().enumerate() {
            if slot.is_some() {
                continue;
            }
            let out = sched.schedule_stream(now, s);
            if out.is_empty() {
                lines.apply(&sched.update(&out, &ModelOutput::default(), now)?, now);
                continue;
            }
            let model = exec.execute(&out)?;
            busy[s] += model.timing.device;
            batch_sum += out.seqs.len() as u64;
            steps += 1;
            busy_since.get_or_insert(now);
            *slot = Some(Running { ends: now + model.timing.device, out, model });
        }
        peak_kv = peak_kv.max(sched.stats().kv_usage());
        let first = streams.iter().enumerate().filter_map(|(i, r)| Some((r.as_ref()?.ends, i))).min();
        let Some((ends, s)) = first else {
            if let Some(t) = busy_since.take() {
                wall += now.saturating_sub(t);
            }
            if sched.is_idle() {
                match workload.times.get(next) {
                    Some(&t) => now = now.max(at(t)),
                    None => break,
                }
            } else {
                now = idle_tick(now, workload.times.get(next).map(|&t| at(t)), &mut idle, &cfg.name)?;
            }
            continue;
        };
        idle = 0;
        now = now.max(ends);
        if let Some(r) = streams[s].take() {
            lines.apply(&sched.update(&r.out, &r.model, now)?, now);
        }
    }
    let stats = sched.stats();
    let system = StepTally { busy, wall, batch_sum, steps, peak_kv }.system(&stats);
    Ok(sim_result(&cfg.name, workload, lines.records, system, stats, started))
}
