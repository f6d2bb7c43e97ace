//! End-to-end tests of the threaded engine: streaming, drop-to-abort, the bounded queue,
//! run-time strategy switches, executor failures, async overlap, and that splitting steps over
//! streams never changes which tokens a request gets.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tandem_core::{
    AbortCause, BatchingKind, FinishReason, ModelOutput, NewRequest, RequestId, SchedulerConfig, SchedulerOutput,
    StepTiming, StreamAssignment, StreamConfig, TokenId,
};
use tandem_engine::{Engine, EngineConfig, EngineError, RequestEvent};
use tandem_executor::sim::{ClockMode, DeviceProfile, ModelShape, SimExecutor};
use tandem_executor::{ExecError, Executor, KvSpec};

/// A device that stores, for every KV position, a hash of the token prefix that produced it, and
/// samples from the hash it reads at the last position: any wrong block table, misaligned
/// output or bad placeholder changes the text.
struct ContentExecutor {
    block_size: usize,
    kv: Vec<Vec<u64>>,
    host: Vec<Vec<u64>>,
    last: HashMap<RequestId, TokenId>,
    fail_step: Option<u64>,
    steps: u64,
    delay: Duration,
}

impl ContentExecutor {
    fn new(cfg: &SchedulerConfig) -> Self {
        Self {
            block_size: cfg.block_size,
            kv: vec![vec![0; cfg.block_size]; cfg.num_gpu_blocks],
            host: vec![vec![0; cfg.block_size]; cfg.num_host_blocks],
            last: HashMap::new(),
            fail_step: None,
            steps: 0,
            delay: Duration::ZERO,
        }
    }
}

fn mix(h: u64, t: TokenId) -> u64 {
    (h ^ t as u64).wrapping_mul(0x100_0000_01b3).rotate_left(23) ^ 0x9e37_79b9
}

impl Executor for ContentExecutor {
    fn kv_spec(&self) -> KvSpec {
        KvSpec { block_size: self.block_size, bytes_per_block: 1 }
    }

    fn execute(&mut self, out: &SchedulerOutput) -> Result<ModelOutput, ExecError> {
        self.steps += 1;
        if Some(self.steps) == self.fail_step {
            return Err(ExecError::Device("injected failure".into()));
        }
        std::thread::sleep(self.delay);
        for &(d, h) in &out.swap_out {
            self.host[h.index()] = self.kv[d.index()].clone();
        }
        for &(h, d) in &out.swap_in {
            self.kv[d.index()] = self.host[h.index()].clone();
        }
        let bs = self.block_size;
        let mut sampled = Vec::new();
        for s in &out.seqs {
            let table = out.block_table(s);
            let mut h = if s.start_pos == 0 {
                7
            } else {
                self.kv[table[(s.start_pos - 1) / bs].index()][(s.start_pos - 1) % bs]
            };
            for (i, &t) in out.tokens(s).iter().enumerate() {
                let t = if s.feeds_last_sample { self.last.get(&s.id).copied().unwrap_or(0) } else { t };
                h = mix(h, t);
                let pos = s.start_pos + i;
                self.kv[table[pos / bs].index()][pos % bs] = h;
            }
            let tok = s.sample.then(|| (h % 1000) as TokenId + 1);
            if let Some(t) = tok {
                self.last.insert(s.id, t);
            }
            sampled.push(tok);
        }
        Ok(ModelOutput {
            sampled,
            timing: StepTiming { device: self.delay, ..StepTiming::default() },
            ..ModelOutput::default()
        })
    }

    fn supports_async(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        "content-checking test device".into()
    }
}

/// Every remaining event, failing the test instead of hanging if the engine stalls.
fn collect(h: &mut tandem_engine::RequestHandle) -> Vec<RequestEvent> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut events = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match h.blocking_next_timeout(left) {
            Ok(Some(e)) => events.push(e),
            Ok(None) => return events,
            Err(e) => panic!("{} stalled after {events:?}: {e}", h.id()),
        }
    }
}

fn small_cfg() -> SchedulerConfig {
    SchedulerConfig {
        block_size: 4,
        num_gpu_blocks: 64,
        max_num_batched_tokens: 32,
        max_model_len: 256,
        ..SchedulerConfig::default()
    }
}

fn prompt(i: u64) -> Vec<TokenId> {
    (0..(3 + i % 11)).map(|j| (i * 31 + j * 7) as TokenId % 500 + 1).collect()
}

/// Runs 24 requests through an engine and returns each one's tokens.
fn run_all(cfg: SchedulerConfig, async_scheduling: bool) -> Vec<Vec<TokenId>> {
    let exec = ContentExecutor::new(&cfg);
    let engine = Engine::start(
        EngineConfig {
            scheduler: cfg,
            max_queued: 100,
            max_queued_tokens: 0,
            async_scheduling,
            gate: None,
            kv_events: None,
        },
        Box::new(exec),
    )
    .unwrap();
    let handles: Vec<_> = (0..24)
        .map(|i| engine.submit(NewRequest::new(i, prompt(i), 5 + (i as usize % 9), Duration::ZERO)).unwrap())
        .collect();
    handles
        .into_iter()
        .map(|mut h| {
            let events = collect(&mut h);
            assert!(matches!(events.last(), Some(RequestEvent::Finished(FinishReason::Length))), "{events:?}");
            events.iter().filter_map(|e| if let RequestEvent::Token(t) = e { Some(*t) } else { None }).collect()
        })
        .collect()
}

#[test]
fn streams_and_async_scheduling_never_change_the_tokens() {
    let reference = run_all(small_cfg(), false);
    assert!(reference.iter().all(|t| !t.is_empty()));
    for assignment in [StreamAssignment::RoundRobin, StreamAssignment::Smart, StreamAssignment::Balanced] {
        for async_scheduling in [false, true] {
            let cfg = SchedulerConfig { streams: StreamConfig::parallel(assignment), ..small_cfg() };
            assert_eq!(run_all(cfg, async_scheduling), reference, "{assignment:?}, async {async_scheduling}");
        }
    }
    // A tiny pool forces preemption (recompute and swap) without changing the text either.
    for preemption in [tandem_core::PreemptionModeKind::Recompute, tandem_core::PreemptionModeKind::Swap] {
        let cfg = SchedulerConfig { num_gpu_blocks: 12, num_host_blocks: 16, preemption, ..small_cfg() };
        assert_eq!(run_all(cfg, true), reference, "{preemption:?}");
    }
}

fn sim_engine(cfg: EngineConfig) -> Engine {
    let exec = SimExecutor::new(
        ModelShape::smollm2_135m(),
        DeviceProfile::h100(),
        cfg.scheduler.block_size,
        ClockMode::RealTime,
    );
    Engine::start(cfg, Box::new(exec)).unwrap()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn dropping_a_handle_aborts_and_frees_its_blocks() {
    let engine = sim_engine(EngineConfig::default());
    let mut h = engine.submit(NewRequest::new(1, vec![1; 100], 100_000, Duration::ZERO)).unwrap();
    for _ in 0..3 {
        assert!(matches!(h.blocking_next_timeout(Duration::from_secs(10)), Ok(Some(RequestEvent::Token(_)))));
    }
    assert!(engine.stats().scheduler.kv_blocks_used > 0);
    drop(h);
    wait_until("blocks freed", || {
        let s = engine.stats();
        s.scheduler.kv_blocks_used == 0 && s.running == 0
    });
    assert_eq!(engine.stats().scheduler.requests_aborted, 1);
}

#[test]
fn a_full_queue_refuses_with_a_retry_after() {
    // Fixed batches of 10 hold everything in the queue.
    let cfg = EngineConfig {
        scheduler: SchedulerConfig {
            batching: BatchingKind::Fixed { batch_size: 10, max_wait: None },
            ..SchedulerConfig::default()
        },
        max_queued: 2,
        ..EngineConfig::default()
    };
    let engine = sim_engine(cfg);
    let _a = engine.submit(NewRequest::new(1, vec![1, 2], 4, Duration::ZERO)).unwrap();
    let _b = engine.submit(NewRequest::new(2, vec![1, 2], 4, Duration::ZERO)).unwrap();
    match engine.submit(NewRequest::new(3, vec![1, 2], 4, Duration::ZERO)) {
        Err(EngineError::QueueFull { queued, retry_after }) => {
            assert_eq!(queued, 2);
            assert!(retry_after >= Duration::from_secs(1));
        }
        other => panic!("expected QueueFull, got {other:?}"),
    }
    // Switching the strategy at run time releases the queue.
    engine.set_batching(BatchingKind::Continuous).unwrap();
    let mut c = loop {
        match engine.submit(NewRequest::new(3, vec![1, 2], 4, Duration::ZERO)) {
            Ok(h) => break h,
            Err(EngineError::QueueFull { .. }) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("{e}"),
        }
    };
    assert!(matches!(collect(&mut c).last(), Some(RequestEvent::Finished(FinishReason::Length))));
    assert_eq!(engine.stats().batching, "continuous");
    assert!(engine.set_batching(BatchingKind::Fixed { batch_size: 0, max_wait: None }).is_err());
    assert!(engine.set_streams(StreamConfig { num_streams: 0, ..StreamConfig::default() }).is_err());
}

#[test]
fn scheduler_refusals_arrive_on_the_handle() {
    let engine = sim_engine(EngineConfig::default());
    let mut h = engine.submit(NewRequest::new(1, vec![], 4, Duration::ZERO)).unwrap();
    match h.blocking_next_timeout(Duration::from_secs(10)).unwrap() {
        Some(RequestEvent::Failed(EngineError::Scheduler(tandem_core::Error::EmptyPrompt(_)))) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(h.blocking_next_timeout(Duration::from_secs(10)), Ok(None));
    assert_eq!(engine.stats().queue_depth, 0, "a refused request leaves the queue count");
}

#[test]
fn an_executor_failure_fails_that_step_and_the_loop_goes_on() {
    let cfg = small_cfg();
    let mut exec = ContentExecutor::new(&cfg);
    exec.fail_step = Some(2);
    let engine = Engine::start(
        EngineConfig {
            scheduler: cfg,
            max_queued: 10,
            max_queued_tokens: 0,
            async_scheduling: false,
            gate: None,
            kv_events: None,
        },
        Box::new(exec),
    )
    .unwrap();
    let mut a = engine.submit(NewRequest::new(1, vec![1, 2, 3], 10, Duration::ZERO)).unwrap();
    let events = collect(&mut a);
    assert!(matches!(events.last(), Some(RequestEvent::Failed(EngineError::Executor(_)))), "{events:?}");
    let mut b = engine.submit(NewRequest::new(2, vec![1, 2, 3], 3, Duration::ZERO)).unwrap();
    assert!(matches!(collect(&mut b).last(), Some(RequestEvent::Finished(FinishReason::Length))));
    assert_eq!(engine.stats().scheduler.requests_aborted, 1);
    let _ = AbortCause::ExecutorError;
}

#[test]
fn async_scheduling_hides_cpu_time_and_stats_are_live() {
    let cfg = small_cfg();
    let mut exec = ContentExecutor::new(&cfg);
    exec.delay = Duration::from_millis(2);
    let engine = Engine::start(
        EngineConfig {
            scheduler: cfg,
            max_queued: 100,
            max_queued_tokens: 0,
            async_scheduling: true,
            gate: None,
            kv_events: None,
        },
        Box::new(exec),
    )
    .unwrap();
    let handles: Vec<_> =
        (0..8).map(|i| engine.submit(NewRequest::new(i, prompt(i), 20, Duration::ZERO)).unwrap()).collect();
    for mut h in handles {
        collect(&mut h);
    }
    let s = engine.stats();
    assert_eq!((s.total_requests, s.finished_requests), (8, 8));
    assert!(s.cpu_hidden > Duration::ZERO && s.cpu_hidden <= s.cpu_time, "{s:?}");
    assert!(s.scheduler.placeholder_tokens > 0, "decodes were scheduled ahead of their tokens");
    assert!(s.avg_latency >= s.avg_processing && s.avg_latency > Duration::ZERO);
    assert!(s.throughput_tps > 0.0 && s.steps > 0);
    assert_eq!(s.queue_depth, 0);
}

#[test]
fn requests_waiting_for_a_batch_to_fill_do_not_spin_the_loop() {
    // Fixed batches of 4: six requests run four, and two wait for partners that never come.
    // While they wait the loop must sleep, not spin: over 300 ms it may spend a little CPU on
    // 1 ms timer checks, nowhere near the 300 ms a busy loop burns.
    let cfg = SchedulerConfig { batching: BatchingKind::Fixed { batch_size: 4, max_wait: None }, ..small_cfg() };
    let exec = ContentExecutor::new(&cfg);
    let engine = Engine::start(
        EngineConfig {
            scheduler: cfg,
            max_queued: 100,
            max_queued_tokens: 0,
            async_scheduling: true,
            gate: None,
            kv_events: None,
        },
        Box::new(exec),
    )
    .unwrap();
    let mut handles: Vec<_> =
        (0..6).map(|i| engine.submit(NewRequest::new(i, prompt(i), 3, Duration::ZERO)).unwrap()).collect();
    for h in handles.iter_mut().take(4) {
        assert!(matches!(collect(h).last(), Some(RequestEvent::Finished(FinishReason::Length))));
    }
    wait_until("the first batch to end", || engine.stats().finished_requests == 4);
    let before = engine.stats().cpu_time;
    std::thread::sleep(Duration::from_millis(300));
    let spent = engine.stats().cpu_time - before;
    assert!(spent < Duration::from_millis(60), "the idle loop spent {spent:?} of CPU in 300 ms");
    assert_eq!(engine.stats().scheduler.waiting, 2);
}

#[test]
fn a_refused_request_keeps_its_place_ahead_of_later_arrivals_until_it_lapses() {
    let engine = sim_engine(EngineConfig::default());
    let deadline = |d: Duration| Some(d);
    // One request measures the steps admission predicts from.
    let mut warm = engine.submit(NewRequest::new(1, vec![3; 64], 4, Duration::ZERO)).unwrap();
    collect(&mut warm);
    let n = 1000;
    let before = engine.predict_ttft(n).expect("steps measured");
    // A (1,000 tokens) cannot start within 1 µs: refused, and its place is held.
    let a = || NewRequest::new(2, vec![7; n], 4, Duration::ZERO);
    let b = || NewRequest::new(3, vec![8; n], 4, Duration::ZERO);
    assert!(matches!(
        engine.submit_with(a(), None, deadline(Duration::from_micros(1))),
        Err(EngineError::WouldMissDeadline { .. })
    ));
    assert_eq!(engine.reservations_held(), 1);
    // A later arrival of the same size now has A's 1,000 tokens ahead of it.
    let behind = engine.predict_ttft(n).unwrap();
    assert!(behind > before, "{behind:?} vs {before:?}");
    // With a deadline between the two, B (arriving later) is refused and A's retry admitted.
    let between = (before + behind) / 2;
    assert!(matches!(engine.submit_with(b(), None, deadline(between)), Err(EngineError::WouldMissDeadline { .. })));
    assert_eq!(engine.reservations_held(), 2, "B holds a place behind A's");
    let mut retry = engine.submit_with(a(), None, deadline(between)).expect("A's retry keeps its place");
    assert_eq!(engine.reservations_held(), 1, "A's place was claimed");
    collect(&mut retry);
    // B never comes back: its place lapses (its wait plus at least a second's grace).
    wait_until("B's place lapsed", || engine.reservations_held() == 0);
}
