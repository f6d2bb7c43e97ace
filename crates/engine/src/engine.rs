//! [`Engine`]: the handle callers hold — submit requests, abort them, switch batching and
//! streams, read live statistics — over the step loop thread (`step_loop.rs`) and its device
//! worker (`device.rs`), reached through the control channel (`control.rs`).

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tandem_core::admission::{Backlog, StepGrid, StepTimeModel};
use tandem_core::kv::KvEvent;
use tandem_core::reservation::{Hold, Reservations};
use tandem_core::{BatchingKind, FinishReason, NewRequest, RequestId, Scheduler, SchedulerConfig, StreamConfig};
use tandem_executor::Executor;
use tokio::sync::mpsc::unbounded_channel;

use crate::control::Control;
use crate::device::DeviceWorker;
use crate::error::EngineError;
use crate::gate::GateHandle;
use crate::handle::RequestHandle;
use crate::stats::{EngineStats, StatsAccumulator};
use crate::step_loop::StepLoop;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub scheduler: SchedulerConfig,
    /// Most requests accepted but not yet running; beyond it `submit` fails with `QueueFull`.
    pub max_queued: usize,
    /// Most prompt tokens queued (not yet fed) before `submit` fails with `QueuedTokensFull`
    /// (0: no bound).
    pub max_queued_tokens: usize,
    /// Overlap the next step's CPU work with the device's current step when the executor
    /// supports placeholders.
    pub async_scheduling: bool,
    /// When several engines share a device: the way onto it (steps interleaved by compute
    /// share). `None`: this engine has the device to itself.
    pub gate: Option<GateHandle>,
    /// Where the prefix cache's block events go after each step (vLLM's KV events; `None`:
    /// not recorded).
    pub kv_events: Option<KvEventSender>,
}

/// The prefix-cache events of one step and when they were taken.
#[derive(Debug, Clone, PartialEq)]
pub struct KvEventBatch {
    pub at: std::time::SystemTime,
    pub events: Vec<KvEvent>,
}

/// The receiving end is the publisher's (`tandem_kv_events`).
pub type KvEventSender = tokio::sync::mpsc::UnboundedSender<KvEventBatch>;

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            scheduler: SchedulerConfig::default(),
            max_queued: crate::build::MAX_QUEUED,
            max_queued_tokens: 0,
            async_scheduling: true,
            gate: None,
            kv_events: None,
        }
    }
}

/// Admission's inputs at one moment (see [`Engine::submit_with`]).
struct Outlook {
    backlog: Backlog,
    /// Step time against tokens fed.
    model: StepTimeModel,
    /// The factor predictions are scaled by, learned from past predictions' errors.
    calibration: f64,
    /// When admission reads it.
    now: Duration,
    /// The recent steps' cadence, once measured.
    grid: Option<StepGrid>,
    /// The factor drain waits are scaled by, learned from refusals' actual waits.
    drain_calibration: f64,
    /// Requests finished per second recently.
    throughput_rps: f64,
}

impl Outlook {
    /// How long until `tokens` of the backlog have been fed, before calibration: to the end of
    /// the step that feeds the last of them on the measured step grid, else at the step
    /// model's rate (what a request refused for the backlog ahead waits for; its Retry-After
    /// is this times `drain_calibration`).
    fn drain_estimate(&self, tokens: usize) -> Option<Duration> {
        self.grid
            .and_then(|g| g.wait_for(self.now, tokens))
            .or_else(|| tandem_core::admission::drain_time(&self.model, &self.backlog, tokens))
    }

    /// How long a client refused for a full queue should wait: until one queued request has
    /// started — the backlog's predicted drain time shared among the requests in it; before
    /// any measurement, the queue drained at the recent throughput (1–60 s).
    fn queue_wait(&self, queued: usize) -> Duration {
        if let Some(all) = tandem_core::admission::predict_ttft(&self.model, &self.backlog, 1) {
            return all / queued.max(1) as u32;
        }
        let secs = if self.throughput_rps > 0.0 { queued as f64 / self.throughput_rps } else { 1.0 };
        Duration::from_secs_f64(secs.clamp(1.0, 60.0))
    }
}

/// What the engine and its step loop share.
pub(crate) struct Shared {
    pub stats: Mutex<StatsAccumulator>,
    /// Requests accepted and not yet scheduled (the bounded queue's fill).
    pub queued: AtomicUsize,
    /// Prompt tokens submitted since the scheduler's last snapshot (not in its backlog yet).
    pub unseen_tokens: AtomicUsize,
}

pub(crate) fn lock(m: &Mutex<StatsAccumulator>) -> MutexGuard<'_, StatsAccumulator> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running engine. Dropping it aborts everything in flight and joins its threads.
pub struct Engine {
    control: Sender<Control>,
    shared: Arc<Shared>,
    max_queued: usize,
    max_queued_tokens: usize,
    epoch: Instant,
    /// Places held for clients refused for their deadline (`tandem_core::reservation`); its
    /// lock is held across an admission decision, so that decisions see each other's.
    reservations: Mutex<Reservations>,
    /// Keys places by a request's salt, prompt and length; its random keys are this process's.
    reservation_hasher: std::collections::hash_map::RandomState,
    thread: Option<JoinHandle<()>>,
}

impl Engine {
    /// Starts the step loop with `executor`. The scheduler config's block size must match the
    /// executor's.
    pub fn start(config: EngineConfig, executor: Box<dyn Executor>) -> Result<Self, EngineError> {
        if executor.kv_spec().block_size != config.scheduler.block_size {
            return Err(tandem_core::Error::InvalidConfig {
                field: "block_size",
                problem: format!(
                    "scheduler uses {} but the executor {}",
                    config.scheduler.block_size,
                    executor.kv_spec().block_size
                ),
            }
            .into());
        }
        let mut scheduler = Scheduler::new(config.scheduler.clone())?;
        scheduler.record_kv_events(config.kv_events.is_some());
        let shared = Arc::new(Shared {
            stats: Mutex::new(StatsAccumulator::default()),
            queued: AtomicUsize::new(0),
            unseen_tokens: AtomicUsize::new(0),
        });
        let (control, rx) = mpsc::channel();
        let depth = if config.async_scheduling && executor.supports_async() { 2 } else { 1 };
        let epoch = Instant::now();
        let device = DeviceWorker::spawn(executor, &scheduler.streams(), config.gate.clone())?;
        let mut step_loop = StepLoop::new(scheduler, device, rx, shared.clone(), depth, epoch, config.kv_events);
        let thread = std::thread::Builder::new()
            .name("tandem-engine".into())
            .spawn(move || step_loop.run())
            .map_err(|e| EngineError::Thread { name: "tandem-engine", reason: e.to_string() })?;
        Ok(Self {
            control,
            shared,
            max_queued: config.max_queued,
            max_queued_tokens: config.max_queued_tokens,
            epoch,
            reservations: Mutex::new(Reservations::new(config.max_queued)),
            reservation_hasher: Default::default(),
            thread: Some(thread),
        })
    }

    /// Submits a request (its `arrival` is overwritten with now). Fails at once with
    /// `QueueFull` when the bounded queue is full; scheduler refusals arrive as the handle's
    /// first event.
    pub fn submit(&self, req: NewRequest) -> Result<RequestHandle, EngineError> {
        self.submit_constrained(req, None)
    }

    /// [`Self::submit`] with structured output: every token is sampled under `constraint`'s
    /// mask, which the engine advances with each token.
    pub fn submit_constrained(
        &self,
        req: NewRequest,
        constraint: Option<crate::grammar::Constraint>,
    ) -> Result<RequestHandle, EngineError> {
        self.submit_with(req, constraint, None)
    }

    /// [`Self::submit_constrained`] with admission by predicted wait: when `ttft_deadline` is
    /// set and the predicted time to first token (`tandem_core::admission`) exceeds it, the
    /// request is refused at once with `WouldMissDeadline` and the time the queue ahead needs
    /// to drain enough — and its place is held until then (`tandem_core::reservation`): the
    /// same request sent again (same salt, prompt and length) counts only the places held
    /// before its own, every other one counts them all. Also refused: a full queue, by count
    /// or by prompt tokens.
    pub fn submit_with(
        &self,
        mut req: NewRequest,
        constraint: Option<crate::grammar::Constraint>,
        ttft_deadline: Option<Duration>,
    ) -> Result<RequestHandle, EngineError> {
        req.params.structured = constraint.is_some();
        let prompt = req.prompt.len();
        let now = self.epoch.elapsed();
        let key = self.reservation_key(&req);
        let mut places = self.reservations.lock().unwrap_or_else(|e| e.into_inner());
        let held_ahead = if ttft_deadline.is_some() { places.ahead(now, Some(key)) } else { 0 };
        let mut o = self.outlook(now);
        o.backlog.prefill_tokens += held_ahead;
        // The model's own prediction travels with the request (its error calibrates later
        // ones); admission decides on it scaled by the calibration.
        let raw = tandem_core::admission::predict_ttft(&o.model, &o.backlog, prompt);
        let predicted = raw.map(|p| p.mul_f64(o.calibration));
        // A refusal waiting for `tokens` to drain, estimated at `estimate` before calibration,
        // is timed by the step loop; its error calibrates later waits.
        let refuse = |e: EngineError, deadline: bool, drain: Option<(usize, Duration)>| {
            let mut st = lock(&self.shared.stats);
            if let Some((tokens, estimate)) = drain {
                st.expect_drain(now, tokens, estimate);
            }
            if deadline {
                st.snapshot.refused_deadline += 1;
            } else {
                st.snapshot.refused_queue_full += 1;
            }
            Err(e)
        };
        if let (Some(deadline), Some(p)) = (ttft_deadline, predicted) {
            if p > deadline {
                // The backlog ahead must drain by this many tokens first.
                let excess_tokens =
                    tandem_core::admission::excess_tokens(&o.model, &o.backlog, prompt, o.calibration, deadline);
                let estimate = o.drain_estimate(excess_tokens).filter(|d| !d.is_zero());
                let retry_after = estimate.map_or(p - deadline, |d| d.mul_f64(o.drain_calibration));
                // A retry that keeps its place is not timed again: its first refusal's wait is.
                let timed = places.hold(now, key, prompt, retry_after) != Hold::Kept;
                return refuse(
                    EngineError::WouldMissDeadline { predicted: p, deadline, retry_after, excess_tokens },
                    true,
                    estimate.filter(|_| timed).map(|d| (excess_tokens, d)),
                );
            }
        }
        let queued_tokens = o.backlog.prefill_tokens;
        if self.max_queued_tokens > 0 && queued_tokens + prompt > self.max_queued_tokens {
            // The backlog must shrink by the excess first.
            let excess = queued_tokens + prompt - self.max_queued_tokens;
            let estimate = o.drain_estimate(excess);
            let retry_after = estimate.map_or(Duration::from_secs(1), |d| d.mul_f64(o.drain_calibration));
            let e = EngineError::QueuedTokensFull { queued: queued_tokens, limit: self.max_queued_tokens, retry_after };
            return refuse(e, false, estimate.map(|d| (excess, d)));
        }
        let queued = self.shared.queued.fetch_add(1, Ordering::SeqCst);
        if queued >= self.max_queued {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            let retry_after = o.queue_wait(queued);
            return refuse(EngineError::QueueFull { queued, retry_after }, false, None);
        }
        self.shared.unseen_tokens.fetch_add(prompt, Ordering::SeqCst);
        places.claim(key);
        drop(places);
        req.arrival = now;
        let id = req.id;
        let (tx, rx) = unbounded_channel();
        let cached = Arc::new(AtomicUsize::new(usize::MAX));
        let add = Control::Add(Box::new(req), tx, cached.clone(), constraint.map(Box::new), raw);
        if self.control.send(add).is_err() {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            self.shared.unseen_tokens.fetch_sub(prompt, Ordering::SeqCst);
            return Err(EngineError::NotRunning);
        }
        Ok(RequestHandle::new(id, rx, self.control.clone(), cached))
    }

    /// What a retry of `req` repeats: its salt (which carries the tenant), prompt and length,
    /// hashed with this process's random keys.
    fn reservation_key(&self, req: &NewRequest) -> u64 {
        let mut h = self.reservation_hasher.build_hasher();
        req.cache_salt.hash(&mut h);
        req.prompt.hash(&mut h);
        req.params.max_tokens.hash(&mut h);
        h.finish()
    }

    /// Places held now for refused clients.
    pub fn reservations_held(&self) -> usize {
        self.reservations.lock().unwrap_or_else(|e| e.into_inner()).held(self.epoch.elapsed())
    }

    /// Predicted time to first token of a `prompt_len`-token request submitted now, as
    /// admission decides on it (`None` until a step has been measured).
    pub fn predict_ttft(&self, prompt_len: usize) -> Option<Duration> {
        let now = self.epoch.elapsed();
        let mut o = self.outlook(now);
        o.backlog.prefill_tokens += self.reservations.lock().unwrap_or_else(|e| e.into_inner()).ahead(now, None);
        tandem_core::admission::predict_ttft(&o.model, &o.backlog, prompt_len).map(|p| p.mul_f64(o.calibration))
    }

    /// What admission decides on, read under one lock of the shared statistics: the work
    /// queued now (the scheduler's last snapshot plus what was submitted since) and what the
    /// engine has measured.
    fn outlook(&self, now: Duration) -> Outlook {
        let st = lock(&self.shared.stats);
        let sc = &st.snapshot.scheduler;
        Outlook {
            backlog: Backlog {
                prefill_tokens: sc.prefill_backlog_tokens + self.shared.unseen_tokens.load(Ordering::SeqCst),
                decodes: sc.decoding,
                budget: sc.max_num_batched_tokens,
            },
            model: st.step_model,
            calibration: st.calibration(),
            now,
            grid: st.step_grid(),
            drain_calibration: st.drain_calibration(),
            throughput_rps: st.snapshot.throughput_rps,
        }
    }

    /// Aborts a request by id (the handle's drop does this too).
    pub fn abort(&self, id: RequestId) {
        let _ = self.control.send(Control::Abort(id));
    }

    /// Ends a request for a reason found outside the scheduler (a stop string).
    pub fn finish_request(&self, id: RequestId, reason: FinishReason) {
        let _ = self.control.send(Control::Finish(id, reason));
    }

    /// Switches the batching strategy from the next step on.
    pub fn set_batching(&self, kind: BatchingKind) -> Result<(), EngineError> {
        let (tx, rx) = mpsc::channel();
        self.control.send(Control::SetBatching(kind, tx)).map_err(|_| EngineError::NotRunning)?;
        rx.recv().map_err(|_| EngineError::NotRunning)?
    }

    /// Switches the parallel-stream plan from the next step on.
    pub fn set_streams(&self, streams: StreamConfig) -> Result<(), EngineError> {
        let (tx, rx) = mpsc::channel();
        self.control.send(Control::SetStreams(streams, tx)).map_err(|_| EngineError::NotRunning)?;
        rx.recv().map_err(|_| EngineError::NotRunning)?
    }

    /// A snapshot of the live statistics.
    pub fn stats(&self) -> EngineStats {
        let mut s = lock(&self.shared.stats).snapshot.clone();
        s.uptime = self.epoch.elapsed();
        s.reservations_held = self.reservations_held();
        s
    }

    /// Asks the engine to stop (abort what is in flight) without waiting for it; the threads
    /// are joined when the `Engine` is dropped. For evicting a model other threads still hold.
    pub fn halt(&self) {
        let _ = self.control.send(Control::Shutdown);
    }

    /// Stops accepting work, aborts what is in flight, and joins the threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.control.send(Control::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Dropped on an async worker (the last lease of an evicted model ends inside a
        // response stream): stop without waiting out the step in flight, which would stall
        // the runtime; the threads end by themselves after the shutdown message.
        if tokio::runtime::Handle::try_current().is_ok() {
            self.halt();
            drop(self.thread.take());
        } else {
            self.stop();
        }
    }
}
