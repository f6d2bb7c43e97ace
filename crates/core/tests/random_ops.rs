//! Seeded randomized harness: random adds, aborts, stop strings, limit changes and steps
//! (sometimes two in flight; with streams unsynchronised, one per stream, completed in any
//! order) against tiny KV pools that force preemption, under every capacity
//! policy, queue policy and preemption mode. After every operation the scheduler's invariants
//! are checked; every step is also executed by a fake device that *stores KV contents* (each
//! position holds a hash of the token prefix that produced it), so a wrong block table, a bad
//! prefix-cache hit or a mixed-up swap is caught as a content mismatch, not only as a leak.
//!
//! CI runs `TANDEM_FUZZ_OPS` operations in total (default 150,000); the `--ignored` test runs
//! 1,200,000 (`cargo test --release -p tandem-core --test random_ops -- --ignored`).
//! `TANDEM_FUZZ_SEED` changes the seeds (a failure message names the case; rerun with its seed).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tandem_core::kv::{BlockHash, KvEvent};
use tandem_core::{
    BatchingKind, CapacityPolicyKind, FinishReason, Limits, ModelOutput, NewRequest, PreemptionCost,
    PreemptionModeKind, QueuePolicyKind, RequestId, Scheduler, SchedulerConfig, SchedulerOutput, StopCause,
    StreamAssignment, StreamConfig, TokenId, PLACEHOLDER_TOKEN,
};

const EOS: TokenId = 0;

/// Hash of a token prefix: what a KV slot computed from that prefix "contains".
fn extend(h: u64, t: TokenId) -> u64 {
    (h ^ t as u64).wrapping_mul(0x100_0000_01b3).rotate_left(17) ^ 0x9e37_79b9_7f4a_7c15
}

/// A device that remembers what each KV position holds and checks every read.
struct FakeDevice {
    block_size: usize,
    /// What this device sampled last for each request (placeholders are fed from it).
    last_sampled: HashMap<RequestId, TokenId>,
    device: Vec<Vec<Option<u64>>>,
    host: Vec<Vec<Option<u64>>>,
}

/// The harness's own record of a request: its tokens and prefix hashes.
#[derive(Debug)]
struct Model {
    tokens: Vec<TokenId>,
    prefix: Vec<u64>,
    finished: bool,
    max_tokens: usize,
    prompt_len: usize,
    arrival_step: u64,
    deadline_ms: Option<u64>,
}

impl Model {
    fn new(tokens: Vec<TokenId>, max_tokens: usize, arrival_step: u64) -> Self {
        let mut m = Model {
            tokens: Vec::new(),
            prefix: Vec::new(),
            finished: false,
            max_tokens,
            prompt_len: 0,
            arrival_step,
            deadline_ms: None,
        };
        m.prompt_len = tokens.len();
        for t in tokens {
            m.push(t);
        }
        m
    }
    fn push(&mut self, t: TokenId) {
        let h = extend(self.prefix.last().copied().unwrap_or(7), t);
        self.tokens.push(t);
        self.prefix.push(h);
    }
}

impl FakeDevice {
    fn new(cfg: &SchedulerConfig) -> Self {
        Self {
            block_size: cfg.block_size,
            last_sampled: HashMap::new(),
            device: vec![vec![None; cfg.block_size]; cfg.num_gpu_blocks],
            host: vec![vec![None; cfg.block_size]; cfg.num_host_blocks],
        }
    }

    /// Executes `out` in the contract's order, checking reads against `models`.
    fn execute(
        &mut self,
        out: &SchedulerOutput,
        models: &HashMap<RequestId, Model>,
        rng: &mut ChaCha8Rng,
    ) -> ModelOutput {
        for &(d, h) in &out.swap_out {
            self.host[h.index()] = self.device[d.index()].clone();
        }
        for &(h, d) in &out.swap_in {
            self.device[d.index()] = self.host[h.index()].clone();
        }
        let bs = self.block_size;
        let mut sampled = Vec::with_capacity(out.seqs.len());
        for seq in &out.seqs {
            let m = &models[&seq.id];
            if m.finished {
                // Aborted or failed after this step was scheduled: the scheduler ignores the
                // result, and a placeholder may have no sample behind it.
                sampled.push(seq.sample.then_some(1));
                continue;
            }
            let table = out.block_table(seq);
            let fed = out.tokens(seq);
            let end = seq.start_pos + fed.len();
            assert!(table.len() * bs >= end, "{}: table of {} blocks for {end} tokens", seq.id, table.len());
            if seq.feeds_last_sample {
                assert_eq!(fed, &[PLACEHOLDER_TOKEN]);
                assert_eq!(
                    Some(&m.tokens[seq.start_pos]),
                    self.last_sampled.get(&seq.id),
                    "{}: placeholder is not the last sample",
                    seq.id
                );
            } else {
                assert_eq!(fed, &m.tokens[seq.start_pos..end], "{}: fed tokens differ from the request's", seq.id);
            }
            for pos in 0..seq.start_pos {
                let got = self.device[table[pos / bs].index()][pos % bs];
                assert_eq!(got, Some(m.prefix[pos]), "{}: KV at position {pos} is not its prefix's", seq.id);
            }
            for pos in seq.start_pos..end {
                self.device[table[pos / bs].index()][pos % bs] = Some(m.prefix[pos]);
            }
            let token = seq.sample.then(|| if rng.random_bool(0.04) { EOS } else { rng.random_range(1..50) });
            if let Some(t) = token {
                self.last_sampled.insert(seq.id, t);
            }
            sampled.push(token);
        }
        ModelOutput::sampled(sampled)
    }
}

#[derive(Debug, Clone)]
struct Case {
    cfg: SchedulerConfig,
    name: String,
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for capacity in
        [CapacityPolicyKind::MaxUtilization, CapacityPolicyKind::GuaranteedNoEvict, CapacityPolicyKind::StaticBatch]
    {
        for preemption in [PreemptionModeKind::Recompute, PreemptionModeKind::Swap, PreemptionModeKind::Auto] {
            for queue in [QueuePolicyKind::Fcfs, QueuePolicyKind::Priority { aging_per_sec: 2.0 }] {
                let reserving = capacity != CapacityPolicyKind::MaxUtilization;
                if reserving && preemption != PreemptionModeKind::Recompute {
                    continue; // reserving policies never preempt: one mode is enough
                }
                let cfg = SchedulerConfig {
                    block_size: 4,
                    num_gpu_blocks: 12,
                    num_host_blocks: 10,
                    max_num_seqs: 5,
                    max_num_batched_tokens: 12,
                    max_model_len: 40,
                    long_prefill_token_threshold: 0,
                    max_num_partial_prefills: 2,
                    enable_prefix_caching: true,
                    eos_token_ids: vec![EOS],
                    capacity,
                    queue,
                    preemption,
                    preemption_cost: PreemptionCost {
                        kv_bytes_per_block: 1000,
                        swap_bytes_per_sec: 1e6,
                        recompute_tokens_per_sec: 5e3,
                    },
                    ..SchedulerConfig::default()
                };
                v.push(Case { name: format!("{capacity:?}/{preemption:?}/{queue:?}"), cfg });
            }
        }
    }
    // Chunking variants on the busiest combination (MaxUtilization, Auto, Priority).
    let base = v.iter().find(|c| c.name.starts_with("MaxUtilization/Auto/Priority")).expect("base case").cfg.clone();
    let variants = [
        ("threshold 3", SchedulerConfig { long_prefill_token_threshold: 3, ..base.clone() }),
        ("no chunking", SchedulerConfig { enable_chunked_prefill: false, max_num_batched_tokens: 40, ..base.clone() }),
        ("no prefix cache", SchedulerConfig { enable_prefix_caching: false, ..base }),
    ];
    v.extend(variants.into_iter().map(|(name, cfg)| Case { name: name.into(), cfg }));
    v
}

struct Harness {
    s: Scheduler,
    dev: FakeDevice,
    models: HashMap<RequestId, Model>,
    rng: ChaCha8Rng,
    next_id: u64,
    now_ms: u64,
    steps: u64,
    inflight: Vec<SchedulerOutput>,
    max_wait_steps: u64,
    /// Non-empty sync-off steps scheduled, and how many completed ahead of an older one.
    stream_steps: u64,
    out_of_order: u64,
    /// The prefix cache's keys as a subscriber to its events sees them.
    mirror: HashSet<BlockHash>,
    /// Keys stored and removed by the events so far.
    kv_events: [u64; 2],
}

impl Harness {
    fn new(case: &Case, seed: u64) -> Self {
        let mut s = Scheduler::new(case.cfg.clone()).unwrap();
        s.record_kv_events(true);
        Self {
            s,
            dev: FakeDevice::new(&case.cfg),
            models: HashMap::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            next_id: 0,
            now_ms: 0,
            steps: 0,
            inflight: Vec::new(),
            max_wait_steps: 0,
            stream_steps: 0,
            out_of_order: 0,
            mirror: HashSet::new(),
            kv_events: [0; 2],
        }
    }

    /// Applies the prefix cache's events as a subscriber would: a key is stored only while not
    /// cached, removed only while cached, and the result is exactly the pool's cached keys.
    fn follow_kv_events(&mut self) {
        for e in self.s.take_kv_events() {
            match e {
                KvEvent::Stored { hashes, tokens, .. } => {
                    assert_eq!(tokens.len(), hashes.len() * self.s.config().block_size, "a block's tokens each");
                    self.kv_events[0] += hashes.len() as u64;
                    for h in hashes {
                        assert!(self.mirror.insert(h), "after {} steps: {h:?} stored twice", self.steps);
                    }
                }
                KvEvent::Removed { hashes } => {
                    self.kv_events[1] += hashes.len() as u64;
                    for h in hashes {
                        assert!(self.mirror.remove(&h), "after {} steps: {h:?} removed, never stored", self.steps);
                    }
                }
                KvEvent::Cleared => self.mirror.clear(),
            }
        }
        let cached: HashSet<BlockHash> = self.s.kv().pool().cached_keys().collect();
        assert_eq!(cached, self.mirror, "after {} steps: events and cache disagree", self.steps);
    }

    fn add(&mut self) {
        let cfg = self.s.config().clone();
        let shared_prefix = self.rng.random_bool(0.3);
        let len = self.rng.random_range(1..24usize);
        let prompt: Vec<TokenId> = (0..len)
            .map(|i| if shared_prefix && i < 12 { 100 + i as TokenId } else { self.rng.random_range(1..50) })
            .collect();
        let max_tokens = self.rng.random_range(1..16usize);
        let id = RequestId(self.next_id);
        self.next_id += 1;
        let mut r = NewRequest::new(id.0, prompt.clone(), max_tokens, Duration::from_millis(self.now_ms));
        r.priority = self.rng.random_range(0..4);
        let deadline_ms = self.rng.random_bool(0.02).then(|| self.now_ms + self.rng.random_range(0..200));
        r.deadline = deadline_ms.map(Duration::from_millis);
        let bad = self.rng.random_bool(0.02);
        if bad {
            r.prompt.clear(); // must be refused, not panic
        }
        match self.s.add_request(r) {
            Ok(()) => {
                assert!(!bad);
                let mut m = Model::new(prompt, max_tokens, self.steps);
                m.deadline_ms = deadline_ms;
                self.models.insert(id, m);
            }
            Err(e) => {
                let reserving = cfg.capacity != CapacityPolicyKind::MaxUtilization;
                let never_fits =
                    (len + max_tokens).min(cfg.max_model_len).div_ceil(cfg.block_size) > cfg.num_gpu_blocks;
                assert!(bad || (reserving && never_fits), "unexpected refusal: {e}");
            }
        }
    }

    fn live_ids(&self) -> Vec<RequestId> {
        let mut ids: Vec<_> = self.models.iter().filter(|(_, m)| !m.finished).map(|(id, _)| *id).collect();
        ids.sort();
        ids
    }

    fn end(&mut self, id: RequestId, reason: FinishReason) {
        let m = self.models.get_mut(&id).expect("known request");
        assert!(!m.finished, "{id} finished twice");
        m.finished = true;
        let wait = self.steps - m.arrival_step;
        if !matches!(reason, FinishReason::Aborted(_) | FinishReason::Rejected(_)) {
            self.max_wait_steps = self.max_wait_steps.max(wait);
        }
    }

    fn abort_or_stop(&mut self, stop_string: bool) {
        let ids = self.live_ids();
        if ids.is_empty() {
            return;
        }
        let id = ids[self.rng.random_range(0..ids.len())];
        let reason = if stop_string {
            FinishReason::Stopped(StopCause::StopString)
        } else {
            FinishReason::Aborted(tandem_core::AbortCause::Client)
        };
        if self.s.state(id).is_none() {
            // Ended by its deadline in a `schedule` whose update (carrying the delta) is pending.
            let deadline = self.models[&id].deadline_ms.expect("only a deadline ends a request silently");
            assert!(deadline <= self.now_ms && !self.inflight.is_empty());
            return;
        }
        let d = self.s.finish_request(id, reason).unwrap();
        assert_eq!(d.finish, Some(reason));
        self.end(id, reason);
        assert!(self.s.abort(id).is_err(), "a finished request is unknown");
    }

    fn schedule(&mut self) {
        self.now_ms += 1;
        let now = Duration::from_millis(self.now_ms);
        let streams = self.s.streams();
        let out = if streams.synchronize {
            self.s.schedule(now)
        } else {
            // Sync off: a free stream (picked at random) is given its next step.
            let free: Vec<usize> = (0..streams.num_streams).filter(|&s| self.s.stream_is_free(s)).collect();
            if free.is_empty() {
                return;
            }
            let stream = free[self.rng.random_range(0..free.len())];
            let out = self.s.schedule_stream(now, stream);
            assert_eq!(out.stream, Some(stream));
            if !out.seqs.is_empty() {
                assert_eq!(out.micro_batches.len(), stream + 1, "one micro-batch, at its stream's index");
            }
            out
        };
        let lim = self.s.limits();
        let (max_seqs, budget) = (lim.max_num_seqs, lim.max_num_batched_tokens);
        assert!(out.num_batched_tokens <= budget, "budget exceeded");
        let (older_tokens, older_seqs) = self
            .inflight
            .iter()
            .filter(|f| f.stream.is_some())
            .fold((0, 0), |a, f| (a.0 + f.num_batched_tokens, a.1 + f.seqs.len()));
        if !out.seqs.is_empty() {
            assert!(older_tokens + out.num_batched_tokens <= budget, "more than one budget in flight on the streams");
            assert!(older_seqs + out.seqs.len() <= max_seqs, "more than max_num_seqs in flight on the streams");
        }
        self.check_apart_from_inflight(&out);
        self.stream_steps += u64::from(out.stream.is_some() && !out.seqs.is_empty());
        assert_eq!(out.num_batched_tokens, out.seqs.iter().map(|q| q.tokens.len()).sum::<usize>());
        assert!(out.seqs.len() <= max_seqs, "batch limit exceeded");
        let covered: usize = out.micro_batches.iter().map(|r| r.len()).sum();
        assert_eq!(covered, out.seqs.len(), "micro-batches must partition the step");
        for w in out.micro_batches.windows(2) {
            assert_eq!(w[0].end, w[1].start, "micro-batches are contiguous");
        }
        let mut seen = std::collections::HashSet::new();
        for q in &out.seqs {
            assert!(!q.tokens.is_empty());
            assert!(seen.insert(q.id), "{} twice in one step", q.id);
            // A block written this step must belong to this sequence alone.
            let bs = self.s.config().block_size;
            let table = out.block_table(q);
            for pos in q.start_pos..q.start_pos + q.tokens.len() {
                let b = table[pos / bs];
                assert_eq!(self.s.kv().pool().ref_count(b), 1, "{} writes shared block {}", q.id, b.0);
            }
        }
        self.steps += 1;
        self.inflight.push(out);
    }

    /// No sequence of `out` is in another step in flight, and no block `out` writes is in
    /// another one's tables, nor does `out` read a block another writes (steps in flight may run
    /// at the same time under sync off). Synchronised steps pipeline on one device in order, so
    /// only sync-off steps are checked against each other.
    fn check_apart_from_inflight(&self, out: &SchedulerOutput) {
        if out.stream.is_none() {
            return;
        }
        let bs = self.s.config().block_size;
        let written = |o: &SchedulerOutput| -> HashSet<u32> {
            o.seqs
                .iter()
                .flat_map(|q| {
                    let t = o.block_table(q);
                    (q.start_pos / bs..(q.start_pos + q.tokens.len()).div_ceil(bs)).map(move |i| t[i].0)
                })
                .collect()
        };
        let all = |o: &SchedulerOutput| -> HashSet<u32> { o.block_ids.iter().map(|b| b.0).collect() };
        let (mine_w, mine_all) = (written(out), all(out));
        for other in self.inflight.iter().filter(|f| f.stream.is_some()) {
            for q in &out.seqs {
                assert!(!other.seqs.iter().any(|o| o.id == q.id), "{} in two steps in flight", q.id);
            }
            assert!(mine_w.is_disjoint(&all(other)), "step {} writes a block step {} holds", out.step, other.step);
            assert!(
                written(other).is_disjoint(&mine_all),
                "step {} reads a block step {} writes",
                out.step,
                other.step
            );
        }
    }

    /// Completes the oldest step in flight, or under sync off any stream step that has only
    /// stream steps before it (they finish in any order).
    fn complete_oldest(&mut self) {
        if self.inflight.is_empty() {
            return;
        }
        let unordered = self.inflight.iter().take_while(|f| f.stream.is_some()).count();
        let at = if unordered > 1 { self.rng.random_range(0..unordered) } else { 0 };
        let out = self.inflight.remove(at);
        self.out_of_order += u64::from(at > 0 && !out.seqs.is_empty());
        let deltas = if self.rng.random_bool(0.005) {
            // The device failed this step: its requests end, nothing else changes.
            let deltas = self.s.fail_step(&out, Duration::from_millis(self.now_ms)).unwrap();
            for d in &deltas {
                if d.finish == Some(FinishReason::Aborted(tandem_core::AbortCause::ExecutorError)) {
                    let in_step = out.seqs.iter().any(|q| q.id == d.id) || out.preempted.contains(&d.id);
                    assert!(in_step, "{} failed but was not in the step", d.id);
                }
            }
            deltas
        } else {
            let model = self.dev.execute(&out, &self.models, &mut self.rng);
            self.s.update(&out, &model, Duration::from_millis(self.now_ms)).unwrap()
        };
        for d in deltas {
            let m = self.models.get_mut(&d.id).expect("delta for a known request");
            assert!(!m.finished, "delta after finish for {}", d.id);
            if let Some(t) = d.token {
                m.push(t);
            }
            if let Some(reason) = d.finish {
                if reason == FinishReason::Length {
                    let m = &self.models[&d.id];
                    let cfg = self.s.config();
                    let generated = m.tokens.len() - m.prompt_len;
                    assert!(
                        generated == m.max_tokens || m.tokens.len() == cfg.effective_max_len(),
                        "{}: early Length",
                        d.id
                    );
                }
                self.end(d.id, reason);
            }
        }
    }

    fn op(&mut self, max_live: usize) {
        let roll = self.rng.random_range(0..100);
        match roll {
            0..=24 if self.live_ids().len() < max_live => self.add(),
            25..=27 => self.abort_or_stop(false),
            28..=29 => self.abort_or_stop(true),
            30 => {
                let seqs = self.rng.random_range(1..8);
                let budget = self.rng.random_range(4..20);
                let _ = self.s.set_limits(Limits {
                    max_num_seqs: seqs,
                    max_num_batched_tokens: budget,
                    long_prefill_token_threshold: 0,
                });
            }
            41 => {
                let kinds = [
                    BatchingKind::Continuous,
                    BatchingKind::Fixed { batch_size: self.rng.random_range(1..5), max_wait: None },
                    BatchingKind::Fixed { batch_size: 3, max_wait: Some(Duration::from_millis(20)) },
                    BatchingKind::SizeOrTimeout { batch_size: 3, timeout: Duration::from_millis(10) },
                    BatchingKind::Adaptive { target_step_time: Duration::from_millis(5) },
                    BatchingKind::Coalescing { tolerance: 0.3 },
                    BatchingKind::LatencyOptimized,
                    BatchingKind::ThroughputOptimized,
                ];
                let k = kinds[self.rng.random_range(0..kinds.len())];
                self.s.set_batching(k).unwrap();
            }
            42 => {
                let assignment = [StreamAssignment::RoundRobin, StreamAssignment::Smart, StreamAssignment::Balanced]
                    [self.rng.random_range(0..3)];
                let streams = StreamConfig {
                    num_streams: self.rng.random_range(1..4),
                    assignment,
                    min_requests_for_parallel: self.rng.random_range(1..4),
                    context_generation_fusion: self.rng.random_bool(0.5),
                    synchronize: self.rng.random_bool(0.4),
                    ..StreamConfig::default()
                };
                self.s.set_streams(streams).unwrap();
            }
            43 => self.s.set_draining(self.rng.random_bool(0.5)),
            // A second step in flight; under sync off, one per stream.
            31..=40 if self.inflight.len() < 2.max(self.s.streams().num_streams) => self.schedule(),
            _ => {
                // Under sync off the streams are usually all busy: keep a free one fed.
                let sync = self.s.streams().synchronize;
                if self.inflight.is_empty() || (!sync && self.rng.random_bool(0.5)) {
                    self.schedule();
                }
                self.complete_oldest();
            }
        }
        if let Err(e) = self.s.check_invariants() {
            panic!("after {} steps: {e}", self.steps);
        }
        self.follow_kv_events();
    }

    /// Stops adding and steps until every request has ended.
    fn drain(&mut self, case: &Case) {
        self.s.set_draining(true);
        let mut guard = 0;
        while !self.s.is_idle() || !self.inflight.is_empty() {
            if self.inflight.is_empty() {
                self.schedule();
            }
            self.complete_oldest();
            self.s.check_invariants().unwrap();
            guard += 1;
            assert!(guard < 100_000, "{}: requests stuck: {:?}", case.name, self.live_ids());
        }
        assert!(self.live_ids().is_empty(), "{}: never finished: {:?}", case.name, self.live_ids());
        let st = self.s.stats();
        assert_eq!(st.kv_blocks_used, 0, "{}: leaked device blocks", case.name);
        assert_eq!(st.host_blocks_used, 0, "{}: leaked host blocks", case.name);
    }
}

fn run(total_ops: usize) {
    let base_seed: u64 = std::env::var("TANDEM_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0xC0FFEE);
    let cases = cases();
    let per_case = total_ops / cases.len();
    let mut preemptions = [0u64; 2];
    let (mut stream_steps, mut out_of_order) = (0, 0);
    for (i, case) in cases.iter().enumerate() {
        let mut h = Harness::new(case, base_seed + i as u64);
        for _ in 0..per_case {
            h.op(8);
        }
        h.drain(case);
        stream_steps += h.stream_steps;
        out_of_order += h.out_of_order;
        let st = h.s.stats();
        preemptions[0] += st.preemptions_recompute;
        preemptions[1] += st.preemptions_swap;
        if case.cfg.capacity == CapacityPolicyKind::MaxUtilization {
            assert!(st.preemptions() > 0, "{}: tiny pool never forced a preemption", case.name);
            if case.cfg.preemption == PreemptionModeKind::Swap {
                assert!(st.preemptions_swap > 0, "{}: never swapped", case.name);
            }
        } else {
            assert_eq!(st.preemptions(), 0, "{}: a reserving policy preempted", case.name);
        }
        if case.cfg.enable_prefix_caching {
            assert!(st.prefix_cache_hits > 0, "{}: shared prefixes never hit", case.name);
            assert!(h.kv_events[0] > 0 && h.kv_events[1] > 0, "{}: KV events {:?}", case.name, h.kv_events);
        } else {
            assert_eq!(st.prefix_cache_hits, 0, "{}: hit with caching off", case.name);
        }
    }
    assert!(preemptions[0] > 0 && preemptions[1] > 0, "both recompute and swap exercised: {preemptions:?}");
    eprintln!("{stream_steps} sync-off steps, {out_of_order} completed out of order");
    assert!(stream_steps > 1000 && out_of_order > 100, "sync off exercised: {stream_steps} / {out_of_order}");
}

#[test]
fn random_operations_keep_every_invariant() {
    let ops = std::env::var("TANDEM_FUZZ_OPS").ok().and_then(|v| v.parse().ok()).unwrap_or(150_000);
    run(ops);
}

#[test]
#[ignore = "the full 1.2M-operation run; use --release"]
fn random_operations_full_run() {
    run(1_200_000);
}
