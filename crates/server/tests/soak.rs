//! Soak: many requests through the real server (loopback), a share of the clients hanging up at
//! random — mid-stream, or while waiting for a non-streamed answer — while the executor fails a
//! share of its steps (`FaultyExecutor`) and a KV pool too small for the clients forces
//! preemptions (swap and recompute). Every request that neither hung up nor was in a failed
//! step must complete with exactly its tokens; a failed one must end with an error (500, or an
//! error event in its stream); afterwards no request is left in the engine, no KV block is
//! held, every request the scheduler took ended exactly once, and RSS grew at most 5% over the
//! last four fifths (the first brings the process to its working size).
//!
//! The model is a generated tiny Llama (2 layers, hidden 64, SmolLM2's tokenizer) so that the
//! server, engine and scheduler — what a soak is about — are the bottleneck, not the 2-core
//! CPU's matmuls; `TANDEM_SOAK_MODEL=default` uses the real default model instead (or give a
//! path). `TANDEM_SOAK_REQUESTS` (default 10000), `TANDEM_SOAK_SEED` (default 1),
//! `TANDEM_SOAK_DISCONNECT` (share of clients that hang up, default 0.3),
//! `TANDEM_SOAK_FAULTS` (share of steps that fail, default 0.05) and `TANDEM_SOAK_LIMIT_S`
//! (default 900) tune it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tandem_core::SchedulerConfig;
use tandem_engine::{Engine, EngineConfig, ProcessUsage};
use tandem_executor::cpu::CpuExecutor;
use tandem_executor::model::load_model;
use tandem_executor::store::default_model;
use tandem_executor::synth::{write_hf_model, SynthShape};
use tandem_server::AppState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// What one client does.
#[derive(Debug, Clone)]
struct Plan {
    prompt: Vec<u32>,
    max_tokens: usize,
    stream: bool,
    /// `Some(n)`: hang up after `n` streamed events (streaming) or after `n` ms (not streaming).
    hang_up: Option<u64>,
}

fn plans(n: usize, seed: u64, disconnect: f64) -> Vec<Plan> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let len = rng.random_range(3..24);
            let stream = rng.random_bool(0.5);
            Plan {
                prompt: (0..len).map(|_| rng.random_range(100..40_000)).collect(),
                max_tokens: rng.random_range(1..10),
                stream,
                hang_up: rng.random_bool(disconnect).then(|| rng.random_range(0..if stream { 4 } else { 80 })),
            }
        })
        .collect()
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Completed,
    HungUp,
    /// Ended by an injected step failure: a 500, or an error event in the stream.
    Failed,
}

async fn run_client(addr: &str, p: &Plan) -> Result<Outcome, String> {
    let body = serde_json::json!({
        "prompt": p.prompt, "max_tokens": p.max_tokens, "ignore_eos": true, "temperature": 0,
        "stream": p.stream, "stream_options": {"include_usage": true},
    })
    .to_string();
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
    match (p.stream, p.hang_up) {
        (false, Some(ms)) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            return Ok(Outcome::HungUp); // drops the socket
        }
        (true, Some(events)) => {
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while count_events(&seen) < events as usize {
                let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
            }
            return Ok(Outcome::HungUp);
        }
        _ => {}
    }
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    if text.starts_with("HTTP/1.1 500") && text.contains("injected fault") {
        return Ok(Outcome::Failed);
    }
    if !text.starts_with("HTTP/1.1 200") {
        return Err(format!("not 200: {text}"));
    }
    if p.stream && text.contains("injected fault") {
        return Ok(Outcome::Failed);
    }
    let usage = if p.stream {
        if !text.contains("data: [DONE]") {
            return Err(format!("no [DONE]: {text}"));
        }
        let line = text.lines().find(|l| l.contains("\"usage\"")).ok_or_else(|| format!("no usage: {text}"))?;
        serde_json::from_str::<serde_json::Value>(line.trim_start_matches("data: ")).map_err(|e| e.to_string())?
            ["usage"]
            .clone()
    } else {
        let (a, b) = (text.find('{').unwrap_or(0), text.rfind('}').unwrap_or(0));
        serde_json::from_str::<serde_json::Value>(&text[a..=b]).map_err(|e| e.to_string())?["usage"].clone()
    };
    if usage["completion_tokens"] != p.max_tokens {
        return Err(format!("wanted {} tokens, usage {usage}", p.max_tokens));
    }
    Ok(Outcome::Completed)
}

fn count_events(raw: &[u8]) -> usize {
    String::from_utf8_lossy(raw).matches("data: ").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_with_random_disconnects_leaks_nothing() {
    let requests: usize = env("TANDEM_SOAK_REQUESTS", 10_000);
    let seed: u64 = env("TANDEM_SOAK_SEED", 1);
    let disconnect: f64 = env("TANDEM_SOAK_DISCONNECT", 0.3);
    let faults: f64 = env("TANDEM_SOAK_FAULTS", 0.05);
    let concurrency = 48;

    let model = match std::env::var("TANDEM_SOAK_MODEL").ok().as_deref() {
        Some("default") => default_model().unwrap(),
        Some(path) => path.into(),
        None => {
            let dir = std::env::temp_dir().join(format!("tandem-soak-tiny-{}", std::process::id()));
            let tokenizer = load_model(&default_model().unwrap()).unwrap().tokenizer;
            write_hf_model(&dir, &SynthShape::tiny(), 1, Some(&tokenizer)).unwrap();
            dir
        }
    };
    let loaded = load_model(&model).unwrap();
    // 12 blocks of 16 tokens (192) for 48 clients of up to 34 tokens (3 blocks) each: KV
    // pressure preempts, by swap into 64 host blocks or by recompute (auto picks per victim).
    let (blocks, host) = (12, 64);
    let scheduler = SchedulerConfig {
        num_gpu_blocks: blocks,
        num_host_blocks: host,
        max_num_seqs: 64,
        max_model_len: 512,
        max_num_batched_tokens: 512,
        preemption: tandem_core::PreemptionModeKind::Auto,
        eos_token_ids: loaded.tokenizer.eos_token_ids.clone(),
        ..SchedulerConfig::default()
    };
    let cpu = CpuExecutor::new(loaded.model, 16, blocks, host);
    let exec = tandem_executor::fault::FaultyExecutor::new(Box::new(cpu), faults, seed);
    let config = EngineConfig {
        scheduler,
        max_queued: 4096,
        max_queued_tokens: 0,
        async_scheduling: true,
        gate: None,
        kv_events: None,
    };
    let engine = Engine::start(config, Box::new(exec)).unwrap();
    let state = AppState::new(engine, loaded.tokenizer, "smollm2".into(), 512);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(tandem_server::run(listener, state.clone(), std::future::pending()));

    // Warm up (allocator, first steps) until one request gets through the faults.
    let warm = Plan { prompt: vec![1000, 2000, 3000], max_tokens: 2, stream: false, hang_up: None };
    let mut warmups = 0;
    loop {
        warmups += 1;
        match run_client(&addr, &warm).await {
            Ok(Outcome::Completed) => break,
            Ok(Outcome::Failed) if warmups < 20 => continue,
            other => panic!("warm-up: {other:?}"),
        }
    }
    let rss_start = ProcessUsage::read().rss_bytes;
    let plans = Arc::new(plans(requests, seed, disconnect));
    let started = Instant::now();
    let limit = Duration::from_secs(env("TANDEM_SOAK_LIMIT_S", 900));
    // The first fifth brings the process to its working size (buffers and maps grown to the
    // load's peak); RSS is compared from there, so that growth means a leak.
    let warm = requests / 5;
    let (mut done, mut hung, mut failed, mut errors) = (0, 0, 0, Vec::new());
    let mut rss_before = None;
    for (from, to) in [(0, warm), (warm, requests)] {
        let next = Arc::new(AtomicU64::new(from as u64));
        let workers = (0..concurrency).map(|_| {
            let (plans, next, addr) = (plans.clone(), next.clone(), addr.clone());
            tokio::spawn(async move {
                let (mut done, mut hung, mut failed, mut errors) = (0usize, 0usize, 0usize, Vec::new());
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(p) = plans.get(i).filter(|_| i < to) else { break };
                    match run_client(&addr, p).await {
                        Ok(Outcome::Completed) => done += 1,
                        Ok(Outcome::HungUp) => hung += 1,
                        Ok(Outcome::Failed) => failed += 1,
                        Err(e) => errors.push(format!("request {i} ({p:?}): {e}")),
                    }
                }
                (done, hung, failed, errors)
            })
        });
        let results =
            tokio::time::timeout(limit, futures_util::future::join_all(workers)).await.expect("soak timed out");
        for r in results {
            let (d, h, f, e) = r.unwrap();
            done += d;
            hung += h;
            failed += f;
            errors.extend(e);
        }
        rss_before = rss_before.or(Some(ProcessUsage::read().rss_bytes));
    }
    let rss_before = rss_before.flatten();
    let elapsed = started.elapsed();
    assert!(errors.is_empty(), "{} failed, first: {:?}", errors.len(), &errors[..errors.len().min(3)]);
    let expected_hangups = plans.iter().filter(|p| p.hang_up.is_some()).count();
    assert_eq!((done + hung + failed, hung), (requests, expected_hangups));
    assert!(faults == 0.0 || failed > 0, "injected faults ended some requests");

    // Aborts reach the engine within a step; wait for it to drain.
    let drain = Instant::now();
    let stats = loop {
        let st = state.models.primary().unwrap().engine.stats();
        if st.scheduler.running == 0 && st.scheduler.waiting == 0 || drain.elapsed() > Duration::from_secs(60) {
            break st;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let sc = &stats.scheduler;
    assert_eq!((sc.running, sc.waiting, sc.swapped, stats.queue_depth), (0, 0, 0, 0), "requests left behind");
    assert_eq!(sc.kv_blocks_used, 0, "KV blocks leaked");
    // Every request the scheduler took ended exactly once (+ the warm-ups). A client that hung
    // up before its body was read never reached the engine, so it may be missing here.
    let reached = sc.requests_added;
    assert!(reached <= (requests + warmups) as u64 && reached > done as u64, "{reached}");
    assert_eq!(sc.requests_finished + sc.requests_aborted + sc.requests_rejected, reached);
    assert!(sc.requests_finished > done as u64, "the warm-up and every completed request finished");
    let preemptions = sc.preemptions_recompute + sc.preemptions_swap;
    assert!(preemptions > 0, "the small pool forced preemptions");
    let rss_after = ProcessUsage::read().rss_bytes;
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        assert!(
            after as f64 <= before as f64 * 1.05 || requests < 5000,
            "RSS grew from {before} to {after} bytes over the last {} requests",
            requests - warm
        );
    }
    let mib = |b: Option<u64>| b.map_or("n/a".into(), |b| format!("{:.1} MiB", b as f64 / (1 << 20) as f64));
    println!(
        "soak: {requests} requests in {:.1} s ({done} completed, {hung} hung up, {failed} ended by injected step faults; {reached} reached the engine, {} aborted there; {} preemptions: {} swap, {} recompute), KV blocks in use after: {}, RSS at start {}, after the first fifth {}, at the end {}",
        elapsed.as_secs_f64(),
        sc.requests_aborted,
        preemptions,
        sc.preemptions_swap,
        sc.preemptions_recompute,
        sc.kv_blocks_used,
        mib(rss_start),
        mib(rss_before),
        mib(rss_after),
    );
}
