//! [`Engine`]: the step loop thread and its device worker.
//!
//! The loop: take new requests and aborts from the control channel; `schedule`; hand the output
//! to the device worker; when the oldest step in flight comes back, `update` and stream the
//! deltas to the request handles. With an executor that fills placeholders (async scheduling),
//! up to two steps are in flight: while the device runs step N, the loop applies step N−1's
//! results and schedules step N+1 — the CPU time spent so is reported as hidden. An executor
//! failure fails the step's requests and the loop goes on.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use tandem_core::{
    BatchingKind, FinishReason, ModelOutput, NewRequest, RequestDelta, RequestId, Scheduler, SchedulerConfig,
    SchedulerOutput, StreamConfig, TokenLogprobs,
};
use tandem_executor::{ExecError, Executor};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

use crate::error::EngineError;
use crate::gate::GateHandle;
use crate::handle::{RequestEvent, RequestHandle};
use crate::metrics::Timeline;
use crate::stats::{EngineStats, StatsAccumulator};

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub scheduler: SchedulerConfig,
    /// Most requests accepted but not yet running; beyond it `submit` fails with `QueueFull`.
    pub max_queued: usize,
    /// Overlap the next step's CPU work with the device's current step when the executor
    /// supports placeholders.
    pub async_scheduling: bool,
    /// When several engines share a device: the way onto it (steps interleaved by compute
    /// share). `None`: this engine has the device to itself.
    pub gate: Option<GateHandle>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self { scheduler: SchedulerConfig::default(), max_queued: 1024, async_scheduling: true, gate: None }
    }
}

/// Messages to the step loop.
pub(crate) enum Control {
    Add(NewRequest, UnboundedSender<RequestEvent>),
    Abort(RequestId),
    Finish(RequestId, FinishReason),
    SetBatching(BatchingKind, mpsc::Sender<Result<(), EngineError>>),
    SetStreams(StreamConfig, mpsc::Sender<Result<(), EngineError>>),
    Shutdown,
}

struct Shared {
    stats: Mutex<StatsAccumulator>,
    queued: AtomicUsize,
}

/// A running engine. Dropping it aborts everything in flight and joins its threads.
pub struct Engine {
    control: Sender<Control>,
    shared: Arc<Shared>,
    max_queued: usize,
    epoch: Instant,
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
        let scheduler = Scheduler::new(config.scheduler.clone())?;
        let shared = Arc::new(Shared { stats: Mutex::new(StatsAccumulator::default()), queued: AtomicUsize::new(0) });
        let (control, rx) = mpsc::channel();
        let depth = if config.async_scheduling && executor.supports_async() { 2 } else { 1 };
        let epoch = Instant::now();
        let mut step_loop = StepLoop::new(scheduler, executor, config.gate.clone(), rx, shared.clone(), depth, epoch);
        let thread = std::thread::Builder::new()
            .name("tandem-engine".into())
            .spawn(move || step_loop.run())
            .map_err(|e| EngineError::Executor(format!("cannot start the engine thread: {e}")))?;
        Ok(Self { control, shared, max_queued: config.max_queued, epoch, thread: Some(thread) })
    }

    /// Submits a request (its `arrival` is overwritten with now). Fails at once with
    /// `QueueFull` when the bounded queue is full; scheduler refusals arrive as the handle's
    /// first event.
    pub fn submit(&self, mut req: NewRequest) -> Result<RequestHandle, EngineError> {
        let queued = self.shared.queued.fetch_add(1, Ordering::SeqCst);
        if queued >= self.max_queued {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(EngineError::QueueFull { queued, retry_after: self.retry_after(queued) });
        }
        req.arrival = self.epoch.elapsed();
        let id = req.id;
        let (tx, rx) = unbounded_channel();
        if self.control.send(Control::Add(req, tx)).is_err() {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(EngineError::NotRunning);
        }
        Ok(RequestHandle::new(id, rx, self.control.clone()))
    }

    /// How long a refused client should wait: the queue drained at the recent throughput.
    fn retry_after(&self, queued: usize) -> Duration {
        let rps = lock(&self.shared.stats).snapshot.throughput_rps;
        let secs = if rps > 0.0 { queued as f64 / rps } else { 1.0 };
        Duration::from_secs_f64(secs.clamp(1.0, 60.0))
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

fn lock(m: &Mutex<StatsAccumulator>) -> MutexGuard<'_, StatsAccumulator> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Per-request bookkeeping on the loop thread.
struct Tracked {
    events: UnboundedSender<RequestEvent>,
    timeline: Timeline,
}

/// A step handed to the device worker (or answered at once when empty).
struct InFlight {
    out: Arc<SchedulerOutput>,
    on_device: bool,
}

type DeviceResult = Result<ModelOutput, ExecError>;

/// Work for the device thread.
enum Job {
    Step(Arc<SchedulerOutput>),
    Streams(StreamConfig),
}

struct StepLoop {
    sched: Scheduler,
    control: Receiver<Control>,
    shared: Arc<Shared>,
    depth: usize,
    epoch: Instant,
    jobs: Sender<Job>,
    results: Receiver<DeviceResult>,
    device: Option<JoinHandle<()>>,
    inflight: VecDeque<InFlight>,
    requests: FxHashMap<RequestId, Tracked>,
    shutting_down: bool,
}

impl StepLoop {
    fn new(
        sched: Scheduler,
        mut executor: Box<dyn Executor>,
        gate: Option<GateHandle>,
        control: Receiver<Control>,
        shared: Arc<Shared>,
        depth: usize,
        epoch: Instant,
    ) -> Self {
        executor.set_streams(&sched.streams());
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (result_tx, results) = mpsc::channel::<DeviceResult>();
        let device = std::thread::Builder::new()
            .name("tandem-device".into())
            .spawn(move || {
                for job in job_rx {
                    match job {
                        Job::Step(out) => {
                            let result = match &gate {
                                Some(g) => g.run(|| executor.execute(&out)),
                                None => executor.execute(&out),
                            };
                            if result_tx.send(result).is_err() {
                                break;
                            }
                        }
                        Job::Streams(s) => executor.set_streams(&s),
                    }
                }
                if let Some(g) = gate {
                    g.leave();
                }
            })
            .ok();
        {
            let mut st = lock(&shared.stats);
            st.snapshot.batching = sched.batching().to_string();
        }
        Self {
            sched,
            control,
            shared,
            depth,
            epoch,
            jobs,
            results,
            device,
            inflight: VecDeque::new(),
            requests: FxHashMap::default(),
            shutting_down: false,
        }
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn device_busy(&self) -> bool {
        self.inflight.iter().any(|f| f.on_device)
    }

    fn run(&mut self) {
        loop {
            self.intake();
            if self.shutting_down {
                break;
            }
            let cpu_start = Instant::now();
            let busy_before = self.device_busy();
            while self.inflight.len() < self.depth {
                let out = Arc::new(self.sched.schedule(self.now()));
                self.note_started(&out);
                let empty = out.is_empty();
                if !empty && self.jobs.send(Job::Step(out.clone())).is_err() {
                    break;
                }
                self.inflight.push_back(InFlight { out, on_device: !empty });
                if empty {
                    break;
                }
            }
            self.account_cpu(cpu_start.elapsed(), busy_before);
            let Some(front) = self.inflight.pop_front() else { continue };
            let result = if front.on_device {
                match self.results.recv() {
                    Ok(r) => r,
                    Err(_) => break, // the device thread is gone
                }
            } else {
                Ok(ModelOutput::default())
            };
            let cpu_start = Instant::now();
            let busy = self.device_busy();
            self.apply(front.out, result);
            // Empty steps (nothing to run) that are next in line need no device: apply them
            // now, or one left queued would keep the loop from ever sleeping while requests
            // wait for a batch to fill.
            while self.inflight.front().is_some_and(|f| !f.on_device) {
                if let Some(f) = self.inflight.pop_front() {
                    self.apply(f.out, Ok(ModelOutput::default()));
                }
            }
            self.account_cpu(cpu_start.elapsed(), busy);
            if self.inflight.is_empty() && !self.has_runnable_work() {
                self.wait_for_work();
            }
        }
        self.abort_everything();
    }

    fn has_runnable_work(&self) -> bool {
        self.sched.num_running() > 0
    }

    /// Blocks until a control message arrives (or briefly, if requests wait on a timer such as
    /// size-or-timeout batching or a deadline).
    fn wait_for_work(&mut self) {
        let msg = if self.sched.is_idle() {
            self.control.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            self.control.recv_timeout(Duration::from_millis(1))
        };
        match msg {
            Ok(m) => self.handle(m),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => self.shutting_down = true,
        }
    }

    fn intake(&mut self) {
        while let Ok(m) = self.control.try_recv() {
            self.handle(m);
        }
    }

    fn handle(&mut self, msg: Control) {
        match msg {
            Control::Add(req, events) => {
                let id = req.id;
                let timeline = Timeline { arrival: req.arrival, prompt_len: req.prompt.len(), ..Timeline::default() };
                match self.sched.add_request(req) {
                    Ok(()) => {
                        self.requests.insert(id, Tracked { events, timeline });
                        lock(&self.shared.stats).snapshot.total_requests += 1;
                    }
                    Err(e) => {
                        self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                        let _ = events.send(RequestEvent::Failed(e.into()));
                    }
                }
            }
            Control::Abort(id) => {
                if let Ok(delta) = self.sched.abort(id) {
                    self.dispatch(&[delta], FxHashMap::default());
                }
            }
            Control::Finish(id, reason) => {
                if let Ok(delta) = self.sched.finish_request(id, reason) {
                    self.dispatch(&[delta], FxHashMap::default());
                }
            }
            Control::SetBatching(kind, reply) => {
                let r = self.sched.set_batching(kind).map_err(EngineError::from);
                if r.is_ok() {
                    lock(&self.shared.stats).snapshot.batching = kind.to_string();
                }
                let _ = reply.send(r);
            }
            Control::SetStreams(streams, reply) => {
                let r = self.sched.set_streams(streams).map_err(EngineError::from);
                if r.is_ok() {
                    let _ = self.jobs.send(Job::Streams(streams));
                }
                let _ = reply.send(r);
            }
            Control::Shutdown => self.shutting_down = true,
        }
    }

    /// Records when requests are first scheduled (they leave the queue).
    fn note_started(&mut self, out: &SchedulerOutput) {
        let now = self.now();
        for s in &out.seqs {
            if let Some(t) = self.requests.get_mut(&s.id) {
                if t.timeline.started.is_none() {
                    t.timeline.started = Some(now);
                    self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                    lock(&self.shared.stats).record_wait(now.saturating_sub(t.timeline.arrival));
                }
            }
        }
    }

    fn apply(&mut self, out: Arc<SchedulerOutput>, result: DeviceResult) {
        let now = self.now();
        let mut logprobs = FxHashMap::default();
        let (deltas, device, busy) = match result {
            Ok(model) => match self.sched.update(&out, &model, now) {
                Ok(d) => {
                    let ids = out.seqs.iter().map(|s| s.id);
                    logprobs = ids.zip(model.logprobs).filter_map(|(id, lp)| Some((id, lp?))).collect();
                    (d, model.timing.device, model.timing.stream_busy)
                }
                Err(e) => (self.fail(&out, now, e.to_string()), Duration::ZERO, Vec::new()),
            },
            Err(e) => (self.fail(&out, now, e.to_string()), Duration::ZERO, Vec::new()),
        };
        let tokens = deltas.iter().filter(|d| d.token.is_some()).count() as u64;
        let finished = self.dispatch(&deltas, logprobs);
        let sched_stats = self.sched.stats();
        let mut st = lock(&self.shared.stats);
        if !out.seqs.is_empty() {
            st.record_step(now, out.seqs.len(), device, &busy, finished, tokens);
            st.snapshot.requests.on_step(out.seqs.len(), out.num_batched_tokens);
        }
        st.snapshot.peak_kv_usage = st.snapshot.peak_kv_usage.max(sched_stats.kv_usage());
        st.snapshot.current_batch_size = out.seqs.len();
        st.snapshot.queue_depth = self.shared.queued.load(Ordering::SeqCst);
        st.snapshot.running = sched_stats.running;
        st.snapshot.scheduler = sched_stats;
    }

    /// Fails a step the executor could not run; the loop goes on.
    fn fail(&mut self, out: &SchedulerOutput, now: Duration, why: String) -> Vec<RequestDelta> {
        let deltas = self.sched.fail_step(out, now).unwrap_or_default();
        for d in &deltas {
            if let Some(t) = self.requests.remove(&d.id) {
                let _ = t.events.send(RequestEvent::Failed(EngineError::Executor(why.clone())));
                self.end_request(t, now, None);
            }
        }
        Vec::new()
    }

    /// Streams deltas (and the log-probabilities of their tokens, where asked for) to their
    /// handles; returns how many requests ended.
    fn dispatch(&mut self, deltas: &[RequestDelta], mut logprobs: FxHashMap<RequestId, TokenLogprobs>) -> u64 {
        let now = self.now();
        let mut ended = 0;
        for d in deltas {
            let Some(t) = self.requests.get_mut(&d.id) else { continue };
            let mut gone = false;
            if let Some(tok) = d.token {
                if let Some(lp) = logprobs.remove(&d.id).filter(|lp| lp.token == tok) {
                    gone |= t.events.send(RequestEvent::Logprobs(lp)).is_err();
                }
                gone |= t.events.send(RequestEvent::Token(tok)).is_err();
                lock(&self.shared.stats).snapshot.requests.on_token(&mut t.timeline, now);
            }
            if let Some(reason) = d.finish {
                let _ = t.events.send(RequestEvent::Finished(reason));
                if let Some(t) = self.requests.remove(&d.id) {
                    self.end_request(t, now, Some(reason));
                }
                ended += 1;
            } else if gone {
                // The handle was dropped: abort now rather than wait for its message.
                if let Ok(delta) = self.sched.abort(d.id) {
                    ended += self.dispatch(&[delta], FxHashMap::default());
                }
            }
        }
        ended
    }

    fn end_request(&mut self, t: Tracked, now: Duration, reason: Option<FinishReason>) {
        let tl = &t.timeline;
        if tl.started.is_none() {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
        }
        let processing = tl.started.map(|s| now.saturating_sub(s));
        let mut st = lock(&self.shared.stats);
        st.record_end(now.saturating_sub(tl.arrival), processing);
        st.snapshot.requests.on_end(tl, now, reason);
    }

    fn account_cpu(&self, spent: Duration, device_busy: bool) {
        let mut st = lock(&self.shared.stats);
        st.snapshot.cpu_time += spent;
        if device_busy {
            st.snapshot.cpu_hidden += spent;
        }
    }

    /// Ends every live request (shutdown) and stops the device worker.
    fn abort_everything(&mut self) {
        let ids: Vec<RequestId> = self.requests.keys().copied().collect();
        for id in ids {
            if let Ok(delta) = self.sched.finish_request(id, FinishReason::Aborted(tandem_core::AbortCause::Client)) {
                self.dispatch(&[delta], FxHashMap::default());
            }
        }
        let (dead_tx, _) = mpsc::channel();
        self.jobs = dead_tx; // closes the worker's queue
        if let Some(d) = self.device.take() {
            let _ = d.join();
        }
    }
}
