//! The serving edge on real sockets: slow and idle clients are cut off (header and body
//! timeouts), the connection limit answers 503, and a drain (the shutdown signal) answers
//! `/ready` and new requests with 503 while a stream in flight runs to its end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_core::SchedulerConfig;
use tandem_engine::{Engine, EngineConfig};
use tandem_executor::cpu::CpuExecutor;
use tandem_executor::model::load_model;
use tandem_executor::store::default_model;
use tandem_server::{AppState, ServeOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::{http_to, json};

/// A server on port 0 with `opts`, shut down when `stop` fires; its address and state.
async fn start(opts: ServeOptions, stop: tokio::sync::oneshot::Receiver<()>) -> (String, Arc<AppState>) {
    start_sized(opts, stop, 64, 64).await
}

/// [`start`] with at most `max_num_seqs` running and `max_queued` waiting.
async fn start_sized(
    opts: ServeOptions,
    stop: tokio::sync::oneshot::Receiver<()>,
    max_num_seqs: usize,
    max_queued: usize,
) -> (String, Arc<AppState>) {
    let loaded = load_model(&default_model().unwrap()).unwrap();
    let scheduler = SchedulerConfig {
        num_gpu_blocks: 128,
        max_model_len: 1024,
        max_num_seqs,
        eos_token_ids: loaded.tokenizer.eos_token_ids.clone(),
        ..SchedulerConfig::default()
    };
    let exec = CpuExecutor::new(loaded.model, 16, 128, 0);
    let config = EngineConfig {
        scheduler,
        max_queued,
        max_queued_tokens: 0,
        async_scheduling: true,
        gate: None,
        kv_events: None,
    };
    let engine = Engine::start(config, Box::new(exec)).unwrap();
    let state = AppState::new(engine, loaded.tokenizer, "smollm2".into(), 1024);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let st = state.clone();
    tokio::spawn(async move {
        tandem_server::run_with(
            listener,
            st,
            async move {
                let _ = stop.await;
            },
            opts,
        )
        .await
        .unwrap();
    });
    (addr, state)
}

/// Reads until the server closes the connection (or `limit` passes): what it sent, and
/// whether it closed.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline.into(), s.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&raw).into_owned(), false),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&raw).into_owned(), true),
            Ok(Ok(n)) => raw.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_and_idle_clients_are_cut_off_and_the_connection_limit_answers_503() {
    let opts =
        ServeOptions { max_connections: 3, header_timeout: Duration::from_millis(400), ..ServeOptions::default() };
    let (_keep, stop) = tokio::sync::oneshot::channel();
    let (addr, _state) = start(opts, stop).await;
    // A head that never ends: closed after the 400 ms header timeout, not held open.
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let t = Instant::now();
    let (_, closed) = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(closed && t.elapsed() < Duration::from_secs(3), "slow head cut off after {:?}", t.elapsed());
    // A keep-alive connection left idle after its response: closed too.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let (answer, closed) = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200") && closed, "idle keep-alive closed: {answer:?}");
    // A body that never arrives whole: 408, OpenAI-shaped.
    let mut partial = TcpStream::connect(&addr).await.unwrap();
    partial
        .write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"prompt\":")
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut partial, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(json(&answer)["error"]["code"], 408, "{answer}");
    // Three connections hold every slot; a fourth gets a 503 with Retry-After and is closed.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut over = TcpStream::connect(&addr).await.unwrap();
    let (answer, closed) = read_until_closed(&mut over, Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 503") && closed, "{answer}");
    assert!(answer.to_ascii_lowercase().contains("retry-after: 1"), "{answer}");
    assert_eq!(json(&answer)["error"]["type"], "server_error", "{answer}");
    // The held ones time out (they never sent a head), freeing the slots.
    drop(held);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(http_to(&addr, "GET", "/health", "", "").await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_answers_503_to_new_requests_while_a_stream_in_flight_finishes() {
    let opts = ServeOptions { shutdown_grace: Duration::from_secs(60), ..ServeOptions::default() };
    let (signal, stop) = tokio::sync::oneshot::channel();
    let (addr, state) = start(opts, stop).await;
    // A stream of 40 tokens, read chunk by chunk.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let body =
        r#"{"prompt": "Once upon a time", "max_tokens": 40, "temperature": 0, "ignore_eos": true, "stream": true}"#;
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut first = [0u8; 512];
    let n = s.read(&mut first).await.unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    assert_eq!(state.in_flight(), 1);
    // The signal: /ready and new requests answer 503 at once, /health stays 200.
    signal.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (code, ready) = http_to(&addr, "GET", "/ready", "", "").await;
    assert_eq!((code, json(&ready)["status"].as_str()), (503, Some("draining")), "{ready}");
    let (code, refused) = http_to(&addr, "POST", "/v1/completions", r#"{"prompt": "hi"}"#, "").await;
    assert_eq!(code, 503, "{refused}");
    assert!(json(&refused)["error"]["message"].as_str().unwrap().contains("shutting down"), "{refused}");
    assert_eq!(http_to(&addr, "GET", "/health", "", "").await.0, 200);
    // The stream in flight runs to its end: 40 tokens, a finish reason, [DONE].
    let (rest, closed) = read_until_closed(&mut s, Duration::from_secs(120)).await;
    assert!(rest.contains("\"finish_reason\":\"length\"") && rest.contains("data: [DONE]"), "{rest}");
    assert!(closed, "the connection closes after the last response");
    // Nothing is in flight any more, so the server stops: new connections are refused.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(state.in_flight(), 0);
    assert!(TcpStream::connect(&addr).await.is_err(), "the listener is closed after the drain");
}

/// The value of response header `name` (lower case) in a raw response.
fn header(raw: &str, name: &str) -> Option<String> {
    raw.lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.to_ascii_lowercase().strip_prefix(&format!("{name}: ")).map(|v| v.trim().to_string()))
}

/// One request over its own connection: the raw response.
async fn raw(addr: &str, body: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    read_until_closed(&mut s, Duration::from_secs(120)).await.0
}

#[tokio::test(flavor = "multi_thread")]
async fn admission_refuses_with_the_predicted_wait_for_a_deadline_and_for_a_full_queue() {
    // One request runs at a time; two may wait.
    let (_keep, stop) = tokio::sync::oneshot::channel();
    let (addr, state) = start_sized(ServeOptions::default(), stop, 1, 2).await;
    // Before any step there is nothing to predict from: admitted whatever the deadline.
    let first = raw(&addr, r#"{"prompt": "Hello", "max_tokens": 4, "ttft_deadline_ms": 0.01}"#).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let model = match &state.models {
        tandem_server::Models::One(m) => m.clone(),
        _ => unreachable!(),
    };
    let predicted = model.engine.predict_ttft(3).expect("steps measured");
    // Now every prediction is at least 1.5 steps: a 10 µs deadline is refused at once with a
    // 429, Retry-After (whole seconds, rounded up) and retry-after-ms = predicted − deadline.
    let refused = raw(&addr, r#"{"prompt": "Hello", "max_tokens": 4, "ttft_deadline_ms": 0.01}"#).await;
    assert!(refused.starts_with("HTTP/1.1 429"), "{refused}");
    assert!(
        json(&refused)["error"]["message"].as_str().unwrap().contains("predicted time to first token"),
        "{refused}"
    );
    let ms: u64 = header(&refused, "retry-after-ms").expect("retry-after-ms").parse().unwrap();
    let secs: u64 = header(&refused, "retry-after").expect("retry-after").parse().unwrap();
    assert_eq!(secs, ms.div_ceil(1000).max(1));
    assert!(ms >= 1 && (ms as f64) < 10.0 * predicted.as_secs_f64() * 1000.0 + 1.0, "{ms} ms vs {predicted:?}");
    // Its place is held for its retry, as `GET /v1/admission` shows (until it lapses, at least
    // a second after the wait it was told).
    let (status, outlook) = http_to(&addr, "GET", "/v1/admission?prompt_tokens=3", "", "").await;
    assert_eq!(status, 200, "{outlook}");
    assert_eq!(json(&outlook)["places_held"], 1, "{outlook}");
    // A generous deadline is admitted.
    let ok = raw(&addr, r#"{"prompt": "Hello", "max_tokens": 2, "ttft_deadline_ms": 60000}"#).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    // A full queue: one running, two waiting, the fourth refused — with the backlog's
    // predicted drain time, not a constant.
    let long = r#"{"prompt": "Once upon a time there was", "max_tokens": 40, "ignore_eos": true}"#;
    // One running, then two waiting (each step of the way awaited), then a fourth.
    let until = |what: &'static str, done: &dyn Fn() -> bool| {
        let started = Instant::now();
        while !done() {
            assert!(started.elapsed() < Duration::from_secs(60), "{what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let send = |addr: &String| {
        let addr = addr.clone();
        tokio::spawn(async move { raw(&addr, long).await })
    };
    let mut running = vec![send(&addr)];
    until("the first long request never ran", &|| model.engine.stats().running == 1);
    running.push(send(&addr));
    running.push(send(&addr));
    until("the queue never filled", &|| model.engine.stats().queue_depth == 2);
    let full = raw(&addr, long).await;
    assert!(full.starts_with("HTTP/1.1 429"), "{full}");
    assert!(json(&full)["error"]["message"].as_str().unwrap().contains("requests queued"), "{full}");
    let ms: u64 = header(&full, "retry-after-ms").expect("retry-after-ms").parse().unwrap();
    assert!(ms >= 1, "{full}");
    for r in running {
        assert!(r.await.unwrap().starts_with("HTTP/1.1 200"));
    }
    // The refusals and the predictions' accuracy are in /metrics.
    let (_, scrape) = http_to(&addr, "GET", "/metrics", "", "").await;
    let value = |prefix: &str| -> f64 {
        let line = scrape.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("{prefix}: {scrape}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value("tandem:admission_refusals_total{model_name=\"smollm2\",reason=\"deadline\"}"), 1.0);
    assert_eq!(value("tandem:admission_refusals_total{model_name=\"smollm2\",reason=\"queue_full\"}"), 1.0);
    assert!(
        value("tandem:ttft_prediction_ratio_count") >= 4.0,
        "every admitted request after the first had a prediction"
    );
}
