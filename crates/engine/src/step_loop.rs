//! [`StepLoop`]: the engine's step loop thread. Take new requests and aborts from the control
//! channel; `schedule`; hand the output to the device worker; when the oldest step in flight
//! comes back, `update` and stream the deltas to the request handles. With streams
//! unsynchronised (`sync=off`), every free stream gets its own step (`schedule_stream`) and
//! each result is applied as soon as its stream finishes, in whatever order they finish. With an executor that
//! fills placeholders (async scheduling), up to two steps are in flight: while the device runs
//! step N, the loop applies step N−1's results and schedules step N+1 — the CPU time spent so
//! is reported as hidden (vLLM's async scheduling); not while a structured-output request runs
//! (its next mask needs its last token). An executor failure fails the step's
//! requests and the loop goes on. The shared statistics are locked once per step.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use tandem_core::{FinishReason, ModelOutput, RequestDelta, RequestId, Scheduler, SchedulerOutput, TokenLogprobs};
use tokio::sync::mpsc::UnboundedSender;

use crate::control::Control;
use crate::device::{DeviceResult, DeviceWorker};
use crate::engine::{lock, KvEventBatch, KvEventSender, Shared};
use crate::error::EngineError;
use crate::grammar::Constraint;
use crate::handle::{PromptCached, RequestEvent};
use crate::metrics::Timeline;
use crate::stats::StatsAccumulator;

/// Per-request bookkeeping on the loop thread.
struct Tracked {
    events: UnboundedSender<RequestEvent>,
    timeline: Timeline,
    cached: PromptCached,
    /// Structured output's grammar state.
    constraint: Option<Box<Constraint>>,
}

/// A step handed to the device worker (or answered at once when empty).
struct InFlight {
    out: Arc<SchedulerOutput>,
    on_device: bool,
}

/// Statistics gathered between steps, folded into the shared snapshot under the one lock taken
/// per step (in `apply`).
#[derive(Default)]
struct PendingStats {
    cpu: Duration,
    cpu_hidden: Duration,
    waits: Vec<Duration>,
    accepted: u64,
    masks: u64,
    mask_time: Duration,
    /// Prompt tokens of requests added since the last snapshot of the scheduler's backlog.
    added_tokens: usize,
}

pub(crate) struct StepLoop {
    sched: Scheduler,
    control: Receiver<Control>,
    shared: Arc<Shared>,
    depth: usize,
    epoch: Instant,
    device: DeviceWorker,
    inflight: VecDeque<InFlight>,
    requests: FxHashMap<RequestId, Tracked>,
    pending: PendingStats,
    shutting_down: bool,
    /// When the device last went from idle to busy (`None` while idle).
    busy_since: Option<Duration>,
    /// Busy wall time of the device up to `busy_since`.
    device_wall_done: Duration,
    /// Where each step's prefix-cache events go.
    kv_events: Option<KvEventSender>,
}

impl StepLoop {
    pub fn new(
        sched: Scheduler,
        device: DeviceWorker,
        control: Receiver<Control>,
        shared: Arc<Shared>,
        depth: usize,
        epoch: Instant,
        kv_events: Option<KvEventSender>,
    ) -> Self {
        {
            let mut st = lock(&shared.stats);
            st.snapshot.batching = sched.batching().to_string();
            st.snapshot.streams = sched.streams();
        }
        Self {
            sched,
            control,
            shared,
            depth,
            epoch,
            device,
            inflight: VecDeque::new(),
            requests: FxHashMap::default(),
            pending: PendingStats::default(),
            shutting_down: false,
            busy_since: None,
            device_wall_done: Duration::ZERO,
            kv_events,
        }
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn device_busy(&self) -> bool {
        self.inflight.iter().any(|f| f.on_device)
    }

    pub fn run(&mut self) {
        loop {
            self.intake();
            if self.shutting_down {
                break;
            }
            let cpu_start = Instant::now();
            let busy_before = self.device_busy();
            let launched =
                if self.sched.streams().synchronize { self.launch_synchronised() } else { self.launch_streams() };
            self.account_cpu(cpu_start.elapsed(), busy_before);
            if !self.complete_next() {
                break; // the device thread is gone
            }
            if self.inflight.is_empty() && (!launched || !self.has_runnable_work()) {
                self.wait_for_work();
            }
        }
        self.abort_everything();
    }

    /// Synchronised streams: keeps up to `depth` steps in flight (two with async
    /// scheduling), each step's micro-batches run together. Returns whether it launched any.
    fn launch_synchronised(&mut self) -> bool {
        let mut launched = false;
        // Structured output needs each sample before its next mask: while a constrained request
        // runs, one step at a time — a second step in flight would hold only the requests the
        // first one lacks, splitting the batch into two half-size cohorts.
        let constrained = self.requests.values().any(|t| t.constraint.is_some());
        let depth = if constrained { 1 } else { self.depth };
        while self.inflight.len() < depth {
            let mut out = self.sched.schedule(self.now());
            self.fill_masks(&mut out);
            let out = Arc::new(out);
            self.note_started(&out);
            let empty = out.is_empty();
            if !empty && !self.device.run(out.clone()) {
                break;
            }
            self.note_device_start(!empty);
            self.inflight.push_back(InFlight { out, on_device: !empty });
            launched = true;
            if empty {
                break;
            }
        }
        launched
    }

    /// Streams without synchronisation: every free stream is given its next step at once (the
    /// scheduler plans it from the requests no other stream is running). Waits, launching
    /// nothing, while a synchronised step is still in flight (just after a switch). Returns
    /// whether it launched any step with work.
    fn launch_streams(&mut self) -> bool {
        if self.inflight.iter().any(|f| f.out.stream.is_none()) {
            return true;
        }
        let mut launched = false;
        for stream in 0..self.sched.streams().num_streams {
            if !self.sched.stream_is_free(stream) {
                continue;
            }
            let mut out = self.sched.schedule_stream(self.now(), stream);
            self.fill_masks(&mut out);
            let out = Arc::new(out);
            self.note_started(&out);
            if out.is_empty() {
                self.apply(out, Ok(ModelOutput::default()));
                continue;
            }
            if !self.device.run(out.clone()) {
                let failed = Err(tandem_executor::ExecError::Device("the device thread is gone".into()));
                self.apply(out, failed);
                break;
            }
            self.note_device_start(true);
            self.inflight.push_back(InFlight { out, on_device: true });
            launched = true;
        }
        launched
    }

    /// Waits for the next result from the device and applies it (and any empty steps then
    /// next in line). False if the device thread is gone.
    fn complete_next(&mut self) -> bool {
        self.apply_empty_front();
        if !self.device_busy() {
            return true;
        }
        let Some((step, result)) = self.device.result() else { return false };
        let cpu_start = Instant::now();
        if let Some(i) = self.inflight.iter().position(|f| f.out.step == step) {
            if let Some(f) = self.inflight.remove(i) {
                self.apply(f.out, result);
            }
        }
        let busy = self.device_busy();
        self.apply_empty_front();
        // Counted with the next step's statistics.
        self.account_cpu(cpu_start.elapsed(), busy);
        true
    }

    /// Applies the empty steps (nothing to run) that are next in line: they need no device,
    /// and one left queued would keep the loop from ever sleeping while requests wait for a
    /// batch to fill.
    fn apply_empty_front(&mut self) {
        while self.inflight.front().is_some_and(|f| !f.on_device) {
            if let Some(f) = self.inflight.pop_front() {
                self.apply(f.out, Ok(ModelOutput::default()));
            }
        }
    }

    /// Structured output: the token mask of every constrained sample of `out`, from the
    /// request's grammar state (its tokens so far are all known: a constrained request never
    /// has a placeholder).
    fn fill_masks(&mut self, out: &mut tandem_core::SchedulerOutput) {
        for i in 0..out.seqs.len() {
            let s = &out.seqs[i];
            if !s.sample {
                continue;
            }
            let Some(c) = self.requests.get_mut(&s.id).and_then(|t| t.constraint.as_mut()) else { continue };
            let started = std::time::Instant::now();
            let mask = c.mask();
            self.pending.mask_time += started.elapsed();
            self.pending.masks += 1;
            if let Some(mask) = mask {
                let w0 = out.allowed_words.len();
                out.allowed_words.extend_from_slice(&mask);
                out.seqs[i].allowed = w0..out.allowed_words.len();
            }
        }
    }

    /// Notes the device getting a step (for the device's busy wall time).
    fn note_device_start(&mut self, on_device: bool) {
        if on_device && self.busy_since.is_none() {
            self.busy_since = Some(self.now());
        }
    }

    /// The device's busy wall time so far: time with at least one step on it.
    fn device_wall(&mut self, now: Duration) -> Duration {
        let current = self.busy_since.map_or(Duration::ZERO, |t| now.saturating_sub(t));
        if !self.device_busy() {
            if let Some(t) = self.busy_since.take() {
                self.device_wall_done += now.saturating_sub(t);
            }
            return self.device_wall_done;
        }
        self.device_wall_done + current
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
            Control::Add(req, events, cached, constraint, predicted_ttft) => {
                let id = req.id;
                let prompt_len = req.prompt.len();
                let timeline = Timeline { arrival: req.arrival, prompt_len, predicted_ttft, ..Timeline::default() };
                match self.sched.add_request(*req) {
                    Ok(()) => {
                        self.requests.insert(id, Tracked { events, timeline, cached, constraint });
                        self.pending.accepted += 1;
                        self.pending.added_tokens += prompt_len;
                    }
                    Err(e) => {
                        self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                        self.shared.unseen_tokens.fetch_sub(prompt_len, Ordering::SeqCst);
                        let _ = events.send(RequestEvent::Failed(e.into()));
                    }
                }
            }
            Control::Abort(id) => {
                if let Ok(delta) = self.sched.abort(id) {
                    self.dispatch_alone(delta);
                }
            }
            Control::Finish(id, reason) => {
                if let Ok(delta) = self.sched.finish_request(id, reason) {
                    self.dispatch_alone(delta);
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
                    self.device.set_streams(streams);
                    lock(&self.shared.stats).snapshot.streams = streams;
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
                    // Admitted now: what the prefix cache served is known (and the request is
                    // live, which it may no longer be when its first token comes back).
                    if let Some(n) = self.sched.prompt_cached_tokens(s.id) {
                        t.cached.store(n, Ordering::Relaxed);
                    }
                    self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                    self.pending.waits.push(now.saturating_sub(t.timeline.arrival));
                }
            }
        }
    }

    /// Applies a step's result: the scheduler's update, the deltas streamed to their
    /// handles, and the step's statistics — under one lock of the shared snapshot.
    fn apply(&mut self, out: Arc<SchedulerOutput>, result: DeviceResult) {
        let now = self.now();
        let shared = Arc::clone(&self.shared);
        let mut st = lock(&shared.stats);
        let added_tokens = self.pending.added_tokens;
        self.flush_pending(&mut st);
        let mut logprobs = FxHashMap::default();
        let (deltas, device, busy) = match result {
            Ok(model) => match self.sched.update(&out, &model, now) {
                Ok(d) => {
                    let ids = out.seqs.iter().map(|s| s.id);
                    logprobs = ids.zip(model.logprobs).filter_map(|(id, lp)| Some((id, lp?))).collect();
                    (d, model.timing.device, model.timing.stream_busy)
                }
                Err(e) => (self.fail(&out, now, &EngineError::Scheduler(e), &mut st), Duration::ZERO, Vec::new()),
            },
            Err(e) => (self.fail(&out, now, &EngineError::from(e), &mut st), Duration::ZERO, Vec::new()),
        };
        let tokens = deltas.iter().filter(|d| d.token.is_some()).count() as u64;
        let finished = self.dispatch(&deltas, logprobs, &mut st);
        let sched_stats = self.sched.stats();
        st.snapshot.device_wall = self.device_wall(now);
        if !out.seqs.is_empty() {
            st.step_model.observe(out.num_batched_tokens, device.as_secs_f64());
            st.record_step(now, out.seqs.len(), device, &busy, finished, tokens);
            st.snapshot.requests.on_step(out.seqs.len(), out.num_batched_tokens);
        }
        st.snapshot.peak_kv_usage = st.snapshot.peak_kv_usage.max(sched_stats.kv_usage());
        st.snapshot.current_batch_size = out.seqs.len();
        st.snapshot.queue_depth = self.shared.queued.load(Ordering::SeqCst);
        st.snapshot.running = sched_stats.running;
        st.record_fed(now, sched_stats.prefill_tokens_fed);
        st.snapshot.scheduler = sched_stats;
        // Those requests are in the scheduler's backlog now, no longer unseen.
        self.shared.unseen_tokens.fetch_sub(added_tokens, Ordering::SeqCst);
        drop(st);
        self.publish_kv_events();
    }

    /// Sends the prefix-cache events of the steps scheduled and applied so far (blocks stored
    /// by this update, keys removed by the allocations of the steps scheduled before it).
    fn publish_kv_events(&mut self) {
        let Some(tx) = &self.kv_events else { return };
        let events = self.sched.take_kv_events();
        if !events.is_empty() && tx.send(KvEventBatch { at: std::time::SystemTime::now(), events }).is_err() {
            // The publisher is gone: stop recording rather than pile events up.
            self.sched.record_kv_events(false);
            self.kv_events = None;
        }
    }

    fn flush_pending(&mut self, st: &mut StatsAccumulator) {
        let p = std::mem::take(&mut self.pending);
        st.snapshot.cpu_time += p.cpu;
        st.snapshot.cpu_hidden += p.cpu_hidden;
        st.snapshot.total_requests += p.accepted;
        st.snapshot.grammar_masks += p.masks;
        st.snapshot.grammar_mask_time += p.mask_time;
        for w in p.waits {
            st.record_wait(w);
        }
    }

    /// Fails a step the executor could not run; the loop goes on.
    fn fail(
        &mut self,
        out: &SchedulerOutput,
        now: Duration,
        why: &EngineError,
        st: &mut StatsAccumulator,
    ) -> Vec<RequestDelta> {
        let deltas = self.sched.fail_step(out, now).unwrap_or_default();
        for d in &deltas {
            if let Some(t) = self.requests.remove(&d.id) {
                let _ = t.events.send(RequestEvent::Failed(why.clone()));
                self.end_request(t, now, None, st);
            }
        }
        Vec::new()
    }

    /// One delta outside a step (an abort, a stop string), with its own short lock.
    fn dispatch_alone(&mut self, delta: RequestDelta) {
        let shared = Arc::clone(&self.shared);
        let mut st = lock(&shared.stats);
        self.dispatch(&[delta], FxHashMap::default(), &mut st);
    }

    /// Streams deltas (and the log-probabilities of their tokens, where asked for) to their
    /// handles; returns how many requests ended.
    fn dispatch(
        &mut self,
        deltas: &[RequestDelta],
        mut logprobs: FxHashMap<RequestId, TokenLogprobs>,
        st: &mut StatsAccumulator,
    ) -> u64 {
        let now = self.now();
        let mut ended = 0;
        for d in deltas {
            let Some(t) = self.requests.get_mut(&d.id) else { continue };
            let mut gone = false;
            if let Some(tok) = d.token {
                if let Some(c) = t.constraint.as_mut() {
                    c.consume(tok);
                }
                if let Some(lp) = logprobs.remove(&d.id).filter(|lp| lp.token == tok) {
                    gone |= t.events.send(RequestEvent::Logprobs(lp)).is_err();
                }
                gone |= t.events.send(RequestEvent::Token(tok)).is_err();
                if let Some(ratio) = st.snapshot.requests.on_token(&mut t.timeline, now) {
                    st.record_prediction(ratio);
                }
            }
            if let Some(reason) = d.finish {
                let _ = t.events.send(RequestEvent::Finished(reason));
                if let Some(t) = self.requests.remove(&d.id) {
                    self.end_request(t, now, Some(reason), st);
                }
                ended += 1;
            } else if gone {
                // The handle was dropped: abort now rather than wait for its message.
                if let Ok(delta) = self.sched.abort(d.id) {
                    ended += self.dispatch(&[delta], FxHashMap::default(), st);
                }
            }
        }
        ended
    }

    fn end_request(&mut self, t: Tracked, now: Duration, reason: Option<FinishReason>, st: &mut StatsAccumulator) {
        let tl = &t.timeline;
        if tl.started.is_none() {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
        }
        let processing = tl.started.map(|s| now.saturating_sub(s));
        st.record_end(now.saturating_sub(tl.arrival), processing);
        st.snapshot.requests.on_end(tl, now, reason);
    }

    fn account_cpu(&mut self, spent: Duration, device_busy: bool) {
        self.pending.cpu += spent;
        if device_busy {
            self.pending.cpu_hidden += spent;
        }
    }

    /// Ends every live request (shutdown) and stops the device worker.
    fn abort_everything(&mut self) {
        let ids: Vec<RequestId> = self.requests.keys().copied().collect();
        for id in ids {
            if let Ok(delta) = self.sched.finish_request(id, FinishReason::Aborted(tandem_core::AbortCause::Client)) {
                self.dispatch_alone(delta);
            }
        }
        self.device.stop();
        let shared = Arc::clone(&self.shared);
        self.flush_pending(&mut lock(&shared.stats));
    }
}
