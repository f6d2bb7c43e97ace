//! HTTP fuzz over real sockets: random bytes and random JSON shapes at every POST route (and
//! garbage request heads), from a seeded generator. The server must never panic, never answer
//! 5xx, answer every well-formed request with 200 or an OpenAI-shaped JSON 4xx, and still be
//! healthy afterwards. `TANDEM_FUZZ_CASES` (default 5000) and `TANDEM_FUZZ_SEED` tune it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value};
use tandem_core::SchedulerConfig;
use tandem_engine::{Engine, EngineConfig};
use tandem_executor::cpu::CpuExecutor;
use tandem_executor::model::load_model;
use tandem_executor::store::default_model;
use tandem_executor::synth::{write_hf_model, SynthShape};
use tandem_server::AppState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ROUTES: [&str; 7] =
    ["/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize", "/v1/batching", "/v1/streams", "/v1/stats"];
const KEYS: [&str; 24] = [
    "prompt",
    "messages",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "n",
    "stop",
    "stream",
    "seed",
    "logprobs",
    "top_logprobs",
    "response_format",
    "tools",
    "tool_choice",
    "logit_bias",
    "min_tokens",
    "echo",
    "tokens",
    "strategy",
    "streams",
    "cache_salt",
    "ttft_deadline_ms",
    "role",
];

fn value(rng: &mut ChaCha8Rng, depth: u32) -> Value {
    match rng.random_range(0..if depth > 2 { 6 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.random_bool(0.5)),
        2 => json!(rng.random_range(-5i64..300)),
        3 => json!(rng.random_range(-1e6f64..1e6)),
        4 => json!((0..rng.random_range(0..12)).map(|_| rng.random_range(b' '..b'~') as char).collect::<String>()),
        5 => json!(
            ["user", "assistant", "system", "tool", "text", "json_object", "auto", "none"][rng.random_range(0..8)]
        ),
        6 => Value::Array((0..rng.random_range(0..4)).map(|_| value(rng, depth + 1)).collect()),
        _ => object(rng, depth + 1),
    }
}

fn object(rng: &mut ChaCha8Rng, depth: u32) -> Value {
    let mut m = Map::new();
    for _ in 0..rng.random_range(0..6) {
        let key = if rng.random_bool(0.8) {
            KEYS[rng.random_range(0..KEYS.len())].to_string()
        } else {
            format!("k{}", rng.random_range(0..99))
        };
        m.insert(key, value(rng, depth));
    }
    // Keep generation short when a body happens to be valid.
    if rng.random_bool(0.7) {
        m.insert("max_tokens".into(), json!(rng.random_range(1..4)));
    }
    Value::Object(m)
}

/// Sends `raw` and reads the whole answer (the server closes: `Connection: close`); with
/// `half_close`, the write side is closed after it (a garbage head then ends).
async fn exchange(addr: &str, raw: &[u8], half_close: bool) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(raw).await;
    if half_close {
        let _ = s.shutdown().await;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_and_json_never_panic_and_always_get_a_json_answer() {
    let cases: usize = std::env::var("TANDEM_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(5000);
    let seed: u64 = std::env::var("TANDEM_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(7);
    let panics = Arc::new(AtomicUsize::new(0));
    let seen = panics.clone();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        seen.fetch_add(1, Ordering::SeqCst);
        hook(info);
    }));
    let dir = std::env::temp_dir().join(format!("tandem-fuzz-tiny-{}", std::process::id()));
    let tokenizer = load_model(&default_model().unwrap()).unwrap().tokenizer;
    write_hf_model(&dir, &SynthShape::tiny(), 1, Some(&tokenizer)).unwrap();
    let loaded = load_model(&dir).unwrap();
    let scheduler = SchedulerConfig {
        num_gpu_blocks: 256,
        max_model_len: 512,
        eos_token_ids: loaded.tokenizer.eos_token_ids.clone(),
        ..SchedulerConfig::default()
    };
    let exec = CpuExecutor::new(loaded.model, 16, 256, 0);
    let config = EngineConfig {
        scheduler,
        max_queued: 256,
        max_queued_tokens: 0,
        async_scheduling: true,
        gate: None,
        kv_events: None,
    };
    let state = AppState::new(Engine::start(config, Box::new(exec)).unwrap(), loaded.tokenizer, "tiny".into(), 512);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(tandem_server::run(listener, state, std::future::pending()));

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut ok, mut client_errors, mut garbage) = (0, 0, 0);
    for i in 0..cases {
        if rng.random_bool(0.1) {
            // A garbage head: any answer or a closed connection, but the server lives on.
            let raw: Vec<u8> = (0..rng.random_range(1..200)).map(|_| rng.random()).collect();
            let answer = exchange(&addr, &raw, true).await;
            assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 4"), "case {i}: {answer}");
            garbage += 1;
            continue;
        }
        let route = ROUTES[rng.random_range(0..ROUTES.len())];
        let body: Vec<u8> = if rng.random_bool(0.3) {
            (0..rng.random_range(0..300)).map(|_| rng.random()).collect()
        } else {
            object(&mut rng, 0).to_string().into_bytes()
        };
        let method = if route == "/v1/stats" { "GET" } else { "POST" };
        let mut raw = format!(
            "{method} {route} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(&body);
        let answer = exchange(&addr, &raw, false).await;
        let status: u16 =
            answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("case {i}: no status: {answer:?}"));
        match status {
            200 => ok += 1,
            400..=499 => {
                let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
                let start = body.find('{').unwrap_or_else(|| panic!("case {i}: no JSON: {answer}"));
                let v: Value = serde_json::from_str(body[start..].trim_end_matches(|c: char| c != '}'))
                    .unwrap_or_else(|e| panic!("case {i}: {e}: {answer}"));
                assert!(v["error"]["message"].is_string() && v["error"]["type"].is_string(), "case {i}: {answer}");
                client_errors += 1;
            }
            other => panic!("case {i}: {route} answered {other}: {answer}"),
        }
    }
    let health = exchange(&addr, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", false).await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert_eq!(panics.load(Ordering::SeqCst), 0, "no panic anywhere in the server");
    println!("fuzz: {cases} cases: {ok} answered 200, {client_errors} a JSON 4xx, {garbage} garbage heads; 0 panics");
    let _ = std::fs::remove_dir_all(dir);
}
