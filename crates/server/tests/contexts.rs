//! Multi-model contexts end to end on the CPU, through the real server on port 0: the default
//! model as a Guaranteed context and a small generated model as a BestEffort one share 600 MiB.
//! The BestEffort model first takes spare memory (including the Guaranteed model's unused
//! reservation); when the Guaranteed model is asked for, the BestEffort one is evicted — in the
//! middle of a streaming request, which is requeued on the reloaded model and still delivers
//! every token — and its next request reloads it with what is left.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tandem_core::contexts::{ContextSpec, QosTier, TierRule};
use tandem_core::SchedulerConfig;
use tandem_engine::{DeviceKind, DeviceLoader, ModelRegistry, ModelSource, Sizing};
use tandem_executor::model::{load_model_as, model_bytes, WeightFormat};
use tandem_executor::store::default_model;
use tandem_executor::synth::{write_hf_model, SynthShape};
use tandem_server::{AppState, Models};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::{http_to, json, usage_chunk};

const MIB: u64 = 1 << 20;

/// The engine side's own loader, at the scheduler's default limits.
fn loader(paths: HashMap<String, PathBuf>) -> DeviceLoader {
    let sources = paths
        .into_iter()
        .map(|(name, path)| {
            (name, ModelSource { path, device: DeviceKind::Cpu, weights: WeightFormat::Auto, sim: None })
        })
        .collect();
    let d = SchedulerConfig::default();
    let sizing =
        Sizing { max_num_seqs: d.max_num_seqs, max_num_batched_tokens: d.max_num_batched_tokens, ..Sizing::default() };
    DeviceLoader::new(sources, sizing)
}

fn spec(name: &str, tier: QosTier, max_mib: u64, path: &Path) -> ContextSpec {
    ContextSpec {
        name: name.into(),
        tier,
        max_bytes: max_mib * MIB,
        base_bytes: 0,
        weight_bytes: model_bytes(path, WeightFormat::Auto).unwrap().1,
        min_kv_bytes: MIB,
        share: 1.0,
        keep_alive: Duration::from_secs(600),
    }
}

async fn contexts(addr: &str) -> serde_json::Value {
    let (status, body) = http_to(addr, "GET", "/v1/contexts", "", "").await;
    assert_eq!(status, 200, "{body}");
    json(&body)
}

/// (loaded, memory used in MiB) of context `name`.
fn state_of(c: &serde_json::Value, name: &str) -> (bool, Option<f64>) {
    let m = c["data"].as_array().unwrap().iter().find(|m| m["id"] == name).unwrap();
    (m["loaded"].as_bool().unwrap(), m["memory_used_mib"].as_f64())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_best_effort_model_is_evicted_for_a_guaranteed_one_and_reloads() {
    let smol = default_model().unwrap();
    let tiny_dir = std::env::temp_dir().join(format!("tandem-contexts-tiny-{}", std::process::id()));
    let tokenizer = load_model_as(&smol, WeightFormat::F32).unwrap().tokenizer;
    write_hf_model(&tiny_dir, &SynthShape::tiny(), 7, Some(&tokenizer)).unwrap();
    let paths = HashMap::from([("smollm2".to_string(), smol.clone()), ("tiny".to_string(), tiny_dir.clone())]);
    // 600 MiB: smollm2 Guaranteed 400 (reserved), tiny BestEffort up to 300.
    let specs =
        vec![spec("smollm2", QosTier::Guaranteed, 400, &smol), spec("tiny", QosTier::BestEffort, 300, &tiny_dir)];
    let registry = ModelRegistry::new(600 * MIB, specs, Box::new(loader(paths)), Box::new(TierRule)).unwrap();
    let state = AppState::serving(Models::Many(registry.clone()), Vec::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(tandem_server::run(listener, state, std::future::pending()));

    let c = contexts(&addr).await;
    assert_eq!((state_of(&c, "smollm2"), state_of(&c, "tiny")), ((false, None), (false, None)));
    assert_eq!(c["memory"]["reserved_mib"], 400.0);
    let (_, body) = http_to(&addr, "GET", "/v1/models", "", "").await;
    assert_eq!(json(&body)["data"].as_array().unwrap().len(), 2, "{body}");

    // Stats and the batching switch name a model; one not loaded yet takes the switch when it
    // loads, and keeps it across reloads.
    let (status, body) = http_to(&addr, "GET", "/v1/stats?model=tiny", "", "").await;
    assert_eq!((status, json(&body)), (200, serde_json::json!({"model": "tiny", "loaded": false})), "{body}");
    let (status, body) =
        http_to(&addr, "POST", "/v1/batching", r#"{"strategy": "latency", "model": "tiny"}"#, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["applied"], "on_load", "{body}");
    assert_eq!(http_to(&addr, "GET", "/v1/stats?model=nope", "", "").await.0, 404);
    let (status, body) =
        http_to(&addr, "POST", "/v1/batching", r#"{"strategy": "latency", "model": "nope"}"#, "").await;
    assert_eq!(status, 404, "{body}");

    // tiny loads on its first request and takes all 300 MiB it may: 600 are free, smollm2's
    // reservation included (BestEffort may use spare memory).
    let (status, body) =
        http_to(&addr, "POST", "/v1/completions", r#"{"model": "tiny", "prompt": "hello", "max_tokens": 4}"#, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["model"], "tiny");
    assert_eq!(state_of(&contexts(&addr).await, "tiny"), (true, Some(300.0)));
    let stats = json(&http_to(&addr, "GET", "/v1/stats?model=tiny", "", "").await.1);
    assert_eq!((&stats["loaded"], &stats["batching"]), (&serde_json::json!(true), &serde_json::json!("latency")));
    // smollm2 is not loaded: the default for stats is the first loaded model.
    assert_eq!(json(&http_to(&addr, "GET", "/v1/stats", "", "").await.1)["model"], "tiny");

    // An event recorded while a tiny request runs completes when that request ends.
    let body = r#"{"model": "tiny", "prompt": "count", "max_tokens": 300, "ignore_eos": true, "stream": true}"#;
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let req = format!("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let n = s.read(&mut buf).await.unwrap();
    assert!(n > 0);
    let event = registry.record_event("tiny").unwrap();
    assert!(!registry.event_done(&event), "the request is still running");
    while s.read(&mut buf).await.unwrap() > 0 {}
    let r = registry.clone();
    assert!(tokio::task::spawn_blocking(move || r.wait_event(&event, Duration::from_secs(10))).await.unwrap());
    assert!(registry.record_event("nope").is_err());

    // A long streaming tiny request is running when smollm2 is asked for.
    const TOKENS: usize = 1500;
    let body = format!(
        r#"{{"model": "tiny", "prompt": "count", "max_tokens": {TOKENS}, "ignore_eos": true, "stream": true, "stream_options": {{"include_usage": true}}}}"#
    );
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let req = format!("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).await.unwrap();
    let mut seen = String::new();
    while seen.matches("data: ").count() < 3 {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "stream ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let addr2 = addr.clone();
    let smol_answer = tokio::spawn(async move {
        let q = r#"{"model": "smollm2", "messages": [{"role": "user", "content": "What is the capital of France? Answer briefly."}], "max_tokens": 16, "temperature": 0}"#;
        http_to(&addr2, "POST", "/v1/chat/completions", q, "").await
    });
    // smollm2 needs its 400: only 300 are free, so tiny is evicted under the running request,
    // which is requeued on tiny reloaded and still delivers every token.
    loop {
        let n = s.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("data: [DONE]"), "{seen}");
    let usage = usage_chunk(&seen);
    assert_eq!(usage["usage"]["completion_tokens"], TOKENS, "{usage}");
    assert!(seen.contains(r#""finish_reason":"length""#));

    let (status, body) = smol_answer.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(json(&body)["choices"][0]["message"]["content"].as_str().unwrap().contains("Paris"), "{body}");

    // After: smollm2 holds its 400, tiny was evicted once and reloaded with the 200 left.
    let c = contexts(&addr).await;
    assert_eq!(state_of(&c, "smollm2"), (true, Some(400.0)));
    assert_eq!(state_of(&c, "tiny"), (true, Some(200.0)));
    assert_eq!((c["memory"]["evictions"].as_u64(), c["memory"]["loads"].as_u64()), (Some(1), Some(3)), "{c}");
    assert_eq!(c["memory"]["allocated_mib"], 600.0);
    assert!(c["memory"]["requeued_requests"].as_u64().unwrap() >= 1, "the stream was not cut by the eviction: {c}");
    // The reloaded tiny still batches as switched; smollm2 as configured.
    assert_eq!(json(&http_to(&addr, "GET", "/v1/stats?model=tiny", "", "").await.1)["batching"], "latency");
    assert_eq!(json(&http_to(&addr, "GET", "/v1/stats?model=smollm2", "", "").await.1)["batching"], "continuous");

    // The same in Prometheus format, both engines labelled by model.
    let (status, scrape) = http_to(&addr, "GET", "/metrics", "", "").await;
    assert_eq!(status, 200);
    for line in [
        "tandem:context_evictions_total 1",
        "tandem:context_loads_total 3",
        "tandem:context_loaded{model_name=\"tiny\"} 1",
        "tandem:context_priority{model_name=\"smollm2\"} 2",
        // Both engines' families (values lag the responses by up to a step: not compared).
        "tandem:num_requests_running{model_name=\"smollm2\"} ",
        "tandem:num_requests_running{model_name=\"tiny\"} ",
    ] {
        assert!(scrape.contains(line), "missing `{line}` in\n{scrape}");
    }

    // Unknown models are 404.
    let (status, body) =
        http_to(&addr, "POST", "/v1/completions", r#"{"model": "nope", "prompt": "x", "max_tokens": 1}"#, "").await;
    assert_eq!(status, 404, "{body}");
    std::fs::remove_dir_all(&tiny_dir).ok();
}
