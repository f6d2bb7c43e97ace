//! The real server on port 0 with the real default model: chat and completions, streaming and
//! not, n > 1, stop strings, every error case, and a client disconnect mid-stream freeing its KV
//! blocks. The client is a few lines of raw HTTP/1.1, so what is tested is the bytes on the wire.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tandem_core::SchedulerConfig;
use tandem_engine::{Engine, EngineConfig};
use tandem_executor::cpu::CpuExecutor;
use tandem_executor::model::load_model;
use tandem_executor::store::default_model;
use tandem_server::AppState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::{http_to, json, usage_chunk};

/// One server for the whole file, on its own runtime thread.
fn server() -> &'static (String, Arc<AppState>) {
    static S: OnceLock<(String, Arc<AppState>)> = OnceLock::new();
    S.get_or_init(|| start_server(None))
}

/// A second server that requires an API key.
fn auth_server() -> &'static (String, Arc<AppState>) {
    static S: OnceLock<(String, Arc<AppState>)> = OnceLock::new();
    S.get_or_init(|| start_server(Some("sekrit,other-tenant")))
}

fn start_server(api_key: Option<&str>) -> (String, Arc<AppState>) {
    let loaded = load_model(&default_model().unwrap()).unwrap();
    let blocks = 256;
    let scheduler = SchedulerConfig {
        num_gpu_blocks: blocks,
        max_model_len: 2048,
        max_num_batched_tokens: 512,
        eos_token_ids: loaded.tokenizer.eos_token_ids.clone(),
        ..SchedulerConfig::default()
    };
    let exec = CpuExecutor::new(loaded.model, 16, blocks, 0);
    let engine = Engine::start(
        EngineConfig {
            scheduler,
            max_queued: 64,
            max_queued_tokens: 0,
            async_scheduling: true,
            gate: None,
            kv_events: None,
        },
        Box::new(exec),
    )
    .unwrap();
    let state = match api_key {
        Some(k) => AppState::with_api_key(
            engine,
            loaded.tokenizer,
            "smollm2".into(),
            2048,
            k.split(',').map(str::to_string).collect(),
        ),
        None => AppState::new(engine, loaded.tokenizer, "smollm2".into(), 2048),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let st = state.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap().to_string()).unwrap();
            tandem_server::run(listener, st, std::future::pending()).await.unwrap();
        });
    });
    (rx.recv().unwrap(), state)
}

/// Sends one request; returns (status, body).
async fn http(method: &str, path: &str, body: &str) -> (u16, String) {
    http_to(&server().0, method, path, body, "").await
}

#[tokio::test(flavor = "multi_thread")]
async fn sglang_model_and_server_info_describe_the_served_model() {
    for path in ["/model_info", "/get_model_info"] {
        let (code, body) = http("GET", path, "").await;
        let v = json(&body);
        assert_eq!(
            (code, v["served_model_name"].as_str(), v["is_generation"].as_bool()),
            (200, Some("smollm2"), Some(true))
        );
        assert_eq!(v["model_path"], v["tokenizer_path"], "{body}");
    }
    let (code, body) = http("GET", "/server_info", "").await;
    let v = json(&body);
    // 256 blocks of 16 tokens; the test server's limits.
    assert_eq!(
        (code, v["max_total_num_tokens"].as_u64(), v["context_length"].as_u64()),
        (200, Some(4096), Some(2048)),
        "{body}"
    );
    assert_eq!(
        (v["tp_size"].as_u64(), v["dp_size"].as_u64(), v["served_model_name"].as_str()),
        (Some(1), Some(1), Some("smollm2"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn health_ready_and_models() {
    assert_eq!(http("GET", "/health", "").await.0, 200);
    assert_eq!(http("GET", "/ready", "").await.0, 200);
    let (code, body) = http("GET", "/v1/models", "").await;
    assert_eq!(code, 200);
    let m = &json(&body)["data"][0];
    assert_eq!(m["id"], "smollm2");
    // vLLM's fields, which `vllm bench serve` reads.
    assert_eq!((&m["root"], &m["parent"]), (&serde_json::json!("smollm2"), &serde_json::Value::Null), "{m}");
    assert!(m["max_model_len"].as_u64().unwrap() > 0, "{m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_reports_the_prompt_tokens_served_from_the_prefix_cache() {
    let cached = |body: &str| json(body)["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64();
    // A prompt of token ids no other test sends: nothing cached the first time; sent again,
    // its full 16-token blocks are (48 of 50 tokens: the last, partial block is recomputed).
    let ids: Vec<u32> = (0..50).map(|i| 20_000 + i * 7).collect();
    let body = serde_json::json!({"prompt": ids, "max_tokens": 1}).to_string();
    let (code, first) = http("POST", "/v1/completions", &body).await;
    assert_eq!(code, 200, "{first}");
    assert_eq!(cached(&first), Some(0), "{first}");
    let (_, again) = http("POST", "/v1/completions", &body).await;
    assert_eq!(cached(&again), Some(48), "{again}");
    // The streamed usage chunk says the same.
    let stream =
        serde_json::json!({"prompt": ids, "max_tokens": 1, "stream": true, "stream_options": {"include_usage": true}});
    let (_, sse) = http("POST", "/v1/completions", &stream.to_string()).await;
    let usage = usage_chunk(&sse);
    assert_eq!(usage["usage"]["prompt_tokens_details"]["cached_tokens"], 48, "{usage}");
    // Under a cache salt, the same prompt starts cold, and is shared only within the salt.
    let salted = |salt: &str| serde_json::json!({"prompt": ids, "max_tokens": 1, "cache_salt": salt}).to_string();
    let (_, first) = http("POST", "/v1/completions", &salted("tenant-a")).await;
    assert_eq!(cached(&first), Some(0), "{first}");
    let (_, again) = http("POST", "/v1/completions", &salted("tenant-a")).await;
    assert_eq!(cached(&again), Some(48), "{again}");
    let (_, other) = http("POST", "/v1/completions", &salted("tenant-b")).await;
    assert_eq!(cached(&other), Some(0), "{other}");
}

#[tokio::test(flavor = "multi_thread")]
async fn min_tokens_and_stop_token_ids_take_effect() {
    let ask = |extra: &str| {
        format!(
            r#"{{"messages": [{{"role": "user", "content": "What is 2+2? Answer with just the number."}}], "max_tokens": 40, "temperature": 0{extra}}}"#
        )
    };
    let usage = |body: &str| {
        let v = json(body);
        (
            v["usage"]["completion_tokens"].as_u64().unwrap(),
            v["choices"][0]["finish_reason"].as_str().unwrap().to_string(),
        )
    };
    // Greedy, the model answers briefly and ends its turn.
    let (code, body) = http("POST", "/v1/chat/completions", &ask("")).await;
    assert_eq!(code, 200, "{body}");
    let (short, finish) = usage(&body);
    assert_eq!(finish, "stop", "{body}");
    assert!(short < 12, "{body}");
    // min_tokens 12: the end of turn is banned until then, so the answer is at least 12 long.
    let (_, body) = http("POST", "/v1/chat/completions", &ask(r#", "min_tokens": 12"#)).await;
    assert!(usage(&body).0 >= 12, "{body}");
    // Past EOS (ignore_eos) the model runs to max_tokens, unless a stop token id ends it: the
    // end-of-turn token as a stop token gives back the short answer.
    let (_, body) = http("POST", "/tokenize", r#"{"prompt": "<|im_end|>", "add_special_tokens": false}"#).await;
    let im_end = json(&body)["tokens"][0].as_u64().unwrap();
    let (_, body) = http("POST", "/v1/chat/completions", &ask(r#", "ignore_eos": true"#)).await;
    assert_eq!(usage(&body), (40, "length".to_string()), "{body}");
    let stop = format!(r#", "ignore_eos": true, "stop_token_ids": [{im_end}]"#);
    let (_, body) = http("POST", "/v1/chat/completions", &ask(&stop)).await;
    assert_eq!(usage(&body), (short, "stop".to_string()), "{body}");
    // Out of range: 400s naming the parameter.
    for (extra, param) in [
        (r#", "min_tokens": 41"#, "min_tokens"),
        (r#", "min_p": 1.5"#, "min_p"),
        (r#", "stop_token_ids": [-1]"#, "stop_token_ids"),
    ] {
        let (code, body) = http("POST", "/v1/chat/completions", &ask(extra)).await;
        assert_eq!((code, json(&body)["error"]["param"].as_str()), (400, Some(param)), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tokenize_round_trips_through_detokenize_and_counts_chat_prompts() {
    let (code, body) =
        http("POST", "/tokenize", r#"{"prompt": "The capital of France is Paris.", "return_token_strs": true}"#).await;
    assert_eq!(code, 200, "{body}");
    let t = json(&body);
    let tokens = t["tokens"].as_array().unwrap();
    assert_eq!(t["count"].as_u64().unwrap() as usize, tokens.len());
    assert_eq!(t["token_strs"].as_array().unwrap().len(), tokens.len());
    assert!(t["max_model_len"].as_u64().unwrap() > 0);
    let (code, body) = http("POST", "/detokenize", &serde_json::json!({"tokens": tokens}).to_string()).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["prompt"], "The capital of France is Paris.");
    // Chat messages count as the chat endpoint counts them: through the model's template.
    let msgs = r#"[{"role": "user", "content": "Hi there"}]"#;
    let (_, body) = http("POST", "/tokenize", &format!(r#"{{"messages": {msgs}}}"#)).await;
    let count = json(&body)["count"].as_u64().unwrap();
    let (_, body) = http("POST", "/v1/chat/completions", &format!(r#"{{"messages": {msgs}, "max_tokens": 1}}"#)).await;
    assert_eq!(json(&body)["usage"]["prompt_tokens"].as_u64(), Some(count), "{body}");
    // Bad input is a 400 naming the problem.
    for (path, body, needle) in [
        ("/detokenize", r#"{"tokens": [99999999]}"#, "outside the vocabulary"),
        ("/tokenize", r#"{"prompt": "a", "messages": []}"#, "exactly one"),
        ("/tokenize", r#"{"prompt": "a", "bogus": 1}"#, "bogus"),
    ] {
        let (code, text) = http("POST", path, body).await;
        assert_eq!(code, 400, "{path} {body}: {text}");
        assert!(text.contains(needle), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_answers_and_reports_usage() {
    let (code, body) = http(
        "POST",
        "/v1/chat/completions",
        r#"{"model": "smollm2", "messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 20, "temperature": 0}"#,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert!(v["choices"][0]["message"]["content"].as_str().unwrap().contains("Paris"), "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        v["usage"]["total_tokens"],
        v["usage"]["prompt_tokens"].as_u64().unwrap() + v["usage"]["completion_tokens"].as_u64().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn content_parts_are_the_same_message_as_a_string() {
    let ask = |content: &str| {
        format!(
            r#"{{"messages": [{{"role": "system", "content": null}}, {{"role": "user", "content": {content}}}], "max_tokens": 12, "temperature": 0}}"#
        )
    };
    let (code, plain) = http("POST", "/v1/chat/completions", &ask(r#""What is the capital of France?""#)).await;
    assert_eq!(code, 200, "{plain}");
    let parts = ask(r#"[{"type": "text", "text": "What is the capital"}, {"type": "text", "text": "of France?"}]"#);
    let (code, from_parts) = http("POST", "/v1/chat/completions", &parts).await;
    assert_eq!(code, 200, "{from_parts}");
    let answer = |b: &str| json(b)["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert!(!answer(&from_parts).is_empty(), "{from_parts}");
    // One text part is exactly the string (greedy: the same answer).
    let one = ask(r#"[{"type": "text", "text": "What is the capital of France?"}]"#);
    let (_, one_part) = http("POST", "/v1/chat/completions", &one).await;
    assert_eq!(answer(&one_part), answer(&plain));
    // The same token counts (the second may find the first's prompt in the prefix cache).
    let counts = |b: &str| {
        let u = &json(b)["usage"];
        (u["prompt_tokens"].clone(), u["completion_tokens"].clone(), u["total_tokens"].clone())
    };
    assert_eq!(counts(&one_part), counts(&plain));
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_logprobs_cover_every_token_with_the_asked_alternatives() {
    let body = r#"{"messages": [{"role": "user", "content": "What is the capital of France? Answer briefly."}], "max_tokens": 8, "temperature": 0, "logprobs": true, "top_logprobs": 2}"#;
    let (code, body) = http("POST", "/v1/chat/completions", body).await;
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len() as u64, v["usage"]["completion_tokens"].as_u64().unwrap(), "{v}");
    let mut text = String::new();
    for e in content {
        let (token, logprob) = (e["token"].as_str().unwrap(), e["logprob"].as_f64().unwrap());
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 2, "{e}");
        // Greedy: the sampled token is the most likely one, then a less likely alternative.
        assert_eq!((top[0]["token"].as_str().unwrap(), top[0]["logprob"].as_f64().unwrap()), (token, logprob));
        assert!(logprob <= 0.0 && top[1]["logprob"].as_f64().unwrap() <= logprob, "{e}");
        assert_eq!(e["bytes"].as_array().unwrap().len(), token.len());
        text.push_str(token);
    }
    // The reply ends with the end-of-turn token, shown in the report but not in the text.
    let reply = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.starts_with(reply), "{text:?} vs {reply:?}");
    // Not asked: null.
    let (_, plain) =
        http("POST", "/v1/chat/completions", r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}"#)
            .await;
    assert!(json(&plain)["choices"][0]["logprobs"].is_null(), "{plain}");
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_completion_logprobs_line_up_with_the_text() {
    let body = r#"{"prompt": "The capital of France is", "max_tokens": 6, "temperature": 0, "ignore_eos": true, "logprobs": 1, "stream": true}"#;
    let (code, raw) = http("POST", "/v1/completions", body).await;
    assert_eq!(code, 200, "{raw}");
    let (mut text, mut tokens, mut offsets) = (String::new(), String::new(), Vec::new());
    let mut count = 0;
    for data in raw.lines().filter_map(|l| l.strip_prefix("data: ")).filter(|d| *d != "[DONE]") {
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        let c = &v["choices"][0];
        let lp = &c["logprobs"];
        for (i, t) in lp["tokens"].as_array().unwrap().iter().enumerate() {
            let t = t.as_str().unwrap();
            offsets.push((lp["text_offset"][i].as_u64().unwrap() as usize, tokens.len()));
            tokens.push_str(t);
            assert_eq!(lp["top_logprobs"][i].as_object().unwrap().len(), 1);
            assert!(lp["token_logprobs"][i].as_f64().unwrap() <= 0.0);
            count += 1;
        }
        text.push_str(c["text"].as_str().unwrap());
    }
    assert_eq!(count, 6);
    assert_eq!(tokens, text, "the tokens spell the text");
    assert!(offsets.iter().all(|(got, want)| got == want), "{offsets:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn penalties_change_a_greedy_completion() {
    let ask = |extra: &str| {
        format!(
            r#"{{"prompt": "la la la la la la la la", "max_tokens": 12, "temperature": 0, "ignore_eos": true{extra}}}"#
        )
    };
    let text = |body: &str| json(body)["choices"][0]["text"].as_str().unwrap().to_string();
    let (code, plain) = http("POST", "/v1/completions", &ask("")).await;
    assert_eq!(code, 200, "{plain}");
    let (code, penalized) = http(
        "POST",
        "/v1/completions",
        &ask(r#", "frequency_penalty": 2, "presence_penalty": 1, "repetition_penalty": 1.5"#),
    )
    .await;
    assert_eq!(code, 200, "{penalized}");
    // The arithmetic is unit-tested (step_io) and the history engine-tested (cpu_model); here:
    // the parameters reach the sampler and change the greedy text.
    assert_ne!(text(&penalized), text(&plain));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_of_prompts_answers_each_as_if_sent_alone() {
    let one = |prompt: &str| {
        format!(r#"{{"prompt": {prompt}, "max_tokens": 4, "temperature": 0, "ignore_eos": true, "n": 2}}"#)
    };
    let texts = |body: &str| -> Vec<(u64, String)> {
        json(body)["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["index"].as_u64().unwrap(), c["text"].as_str().unwrap().to_string()))
            .collect()
    };
    let (_, a) = http("POST", "/v1/completions", &one(r#""The capital of France is""#)).await;
    let (_, b) = http("POST", "/v1/completions", &one(r#""Once upon a time""#)).await;
    let (code, both) =
        http("POST", "/v1/completions", &one(r#"["The capital of France is", "Once upon a time"]"#)).await;
    assert_eq!(code, 200, "{both}");
    // Choice i is prompt i / 2, its choice i % 2; greedy: each the text of that prompt alone.
    let (a, b) = (texts(&a), texts(&b));
    let want: Vec<(u64, String)> =
        vec![(0, a[0].1.clone()), (1, a[1].1.clone()), (2, b[0].1.clone()), (3, b[1].1.clone())];
    assert_eq!(texts(&both), want);
    let usage = |body: &str| json(body)["usage"]["prompt_tokens"].as_u64().unwrap();
    let (_, a_again) = http("POST", "/v1/completions", &one(r#""The capital of France is""#)).await;
    let (_, b_again) = http("POST", "/v1/completions", &one(r#""Once upon a time""#)).await;
    assert_eq!(usage(&both), usage(&a_again) + usage(&b_again));
    // Token lists too.
    let (code, lists) = http("POST", "/v1/completions", &one("[[504, 3575], [1, 2, 3]]")).await;
    assert_eq!((code, texts(&lists).len()), (200, 4), "{lists}");
}

#[tokio::test(flavor = "multi_thread")]
async fn completions_with_n_stop_and_length() {
    let (code, body) = http(
        "POST",
        "/v1/completions",
        r#"{"prompt": "Once upon a time", "max_tokens": 6, "n": 3, "temperature": 1.0, "seed": 5, "ignore_eos": true}"#,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    assert!(choices.iter().all(|c| c["finish_reason"] == "length"));
    assert_eq!(v["usage"]["completion_tokens"], 18);
    let (_, body) = http(
        "POST",
        "/v1/completions",
        r#"{"prompt": "The capital of France is", "max_tokens": 10, "temperature": 0, "stop": ["Paris"]}"#,
    )
    .await;
    let v = json(&body);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(!v["choices"][0]["text"].as_str().unwrap().contains("Paris"), "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_puts_the_prompt_before_the_completion_streamed_or_not() {
    let ask = |stream: bool, echo: bool| {
        format!(
            r#"{{"prompt": "The capital of France is", "max_tokens": 5, "temperature": 0, "echo": {echo}, "stream": {stream}}}"#
        )
    };
    let text = |body: &str| json(body)["choices"][0]["text"].as_str().unwrap().to_string();
    let (_, plain) = http("POST", "/v1/completions", &ask(false, false)).await;
    let (code, echoed) = http("POST", "/v1/completions", &ask(false, true)).await;
    assert_eq!(code, 200, "{echoed}");
    assert_eq!(text(&echoed), format!("The capital of France is{}", text(&plain)));
    // Streamed: the prompt comes with the first chunk; the chunks join to the same text.
    let (_, body) = http("POST", "/v1/completions", &ask(true, true)).await;
    let joined: String = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|e| *e != "[DONE]")
        .map(|e| json(e)["choices"][0]["text"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(joined, text(&echoed));
    // Token prompts echo their decoded text; chat has no echo; echo with logprobs is refused.
    let (_, ids) = http("POST", "/tokenize", r#"{"prompt": "Hello there", "add_special_tokens": false}"#).await;
    let tokens = json(&ids)["tokens"].to_string();
    let (_, body) = http(
        "POST",
        "/v1/completions",
        &format!(r#"{{"prompt": {tokens}, "max_tokens": 2, "temperature": 0, "echo": true}}"#),
    )
    .await;
    assert!(text(&body).starts_with("Hello there"), "{body}");
    for (path, req) in [
        ("/v1/chat/completions", r#"{"messages": [{"role": "user", "content": "hi"}], "echo": true}"#),
        ("/v1/completions", r#"{"prompt": "hi", "echo": true, "logprobs": 1}"#),
    ] {
        let (code, body) = http("POST", path, req).await;
        assert_eq!((code, json(&body)["error"]["param"].as_str()), (400, Some("echo")), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_fields_are_a_400_naming_them_and_inert_defaults_pass() {
    let (code, body) = http("POST", "/v1/completions", r#"{"prompt": "hi", "max_tokens": 1, "temprature": 0}"#).await;
    let v = json(&body);
    assert_eq!((code, v["error"]["param"].as_str()), (400, Some("temprature")), "{body}");
    assert!(v["error"]["message"].as_str().unwrap().contains("Unrecognized request argument"), "{body}");
    let (code, body) = http(
        "POST",
        "/v1/chat/completions",
        r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "best_of": 2}"#,
    )
    .await;
    assert_eq!((code, json(&body)["error"]["param"].as_str()), (400, Some("best_of")), "{body}");
    let (code, body) = http(
        "POST",
        "/v1/chat/completions",
        r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "user": "alice", "store": false,
            "service_tier": "auto", "parallel_tool_calls": true, "skip_special_tokens": true}"#,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    // What SGLang's router (sglang-router 0.3.2) adds to every request it forwards.
    for (path, req) in [
        (
            "/v1/chat/completions",
            r#"{"messages":[{"role":"user","content":"hi"}],"model":"smollm2","logprobs":false,"max_completion_tokens":2,
                "stream":false,"no_stop_trim":false,"ignore_eos":false,"continue_final_message":false,
                "skip_special_tokens":true,"separate_reasoning":true,"stream_reasoning":true,"return_hidden_states":false}"#,
        ),
        (
            "/v1/completions",
            r#"{"model":"smollm2","prompt":"hi","max_tokens":2,"stream":false,"echo":false,"no_stop_trim":false,
                "ignore_eos":false,"skip_special_tokens":true,"return_hidden_states":false}"#,
        ),
    ] {
        let (code, body) = http("POST", path, req).await;
        assert_eq!(code, 200, "{path}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_tool_calls_false_keeps_the_first_call() {
    // A regex forces an answer with two Hermes calls; `auto` parses both, unless told not to.
    let call = |city: &str| {
        format!(
            r#"<tool_call>\\n\\{{\"name\": \"get_weather\", \"arguments\": \\{{\"city\": \"{city}\"\\}}\\}}\\n</tool_call>"#
        )
    };
    let regex = format!("{}\\n{}", call("Paris"), call("Rome"));
    let ask = |parallel: bool, stream: bool| {
        format!(
            r#"{{"messages": [{{"role": "user", "content": "Weather in Paris and Rome?"}}], "max_tokens": 80,
                "temperature": 0, "stream": {stream}, "parallel_tool_calls": {parallel},
                "tools": [{{"type": "function", "function": {{"name": "get_weather",
                    "parameters": {{"type": "object", "properties": {{"city": {{"type": "string"}}}}}}}}}}],
                "structured_outputs": {{"regex": "{regex}"}}}}"#
        )
    };
    let cities = |calls: &serde_json::Value| -> Vec<String> {
        calls
            .as_array()
            .unwrap()
            .iter()
            .map(|c| json(c["function"]["arguments"].as_str().unwrap())["city"].to_string())
            .collect()
    };
    let (code, body) = http("POST", "/v1/chat/completions", &ask(true, false)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(cities(&json(&body)["choices"][0]["message"]["tool_calls"]), ["\"Paris\"", "\"Rome\""], "{body}");
    let (_, body) = http("POST", "/v1/chat/completions", &ask(false, false)).await;
    assert_eq!(cities(&json(&body)["choices"][0]["message"]["tool_calls"]), ["\"Paris\""], "{body}");
    let (_, body) = http("POST", "/v1/chat/completions", &ask(false, true)).await;
    let streamed: Vec<serde_json::Value> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|e| *e != "[DONE]")
        .flat_map(|e| json(e)["choices"][0]["delta"]["tool_calls"].as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(cities(&serde_json::Value::Array(streamed)), ["\"Paris\""], "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn streaming_sends_chunks_usage_and_done() {
    let (code, body) = http(
        "POST",
        "/v1/chat/completions",
        r#"{"messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 8, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}}"#,
    )
    .await;
    assert_eq!(code, 200);
    let events: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(*events.last().unwrap(), "[DONE]");
    let first: serde_json::Value = serde_json::from_str(events[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let usage: serde_json::Value = serde_json::from_str(events[events.len() - 2]).unwrap();
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
    assert!(events
        .iter()
        .any(|e| e.contains("\"finish_reason\":\"stop\"") || e.contains("\"finish_reason\":\"length\"")));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_error_is_openai_shaped_with_the_right_status() {
    let cases: Vec<(&str, &str, String, u16)> = vec![
        ("POST", "/v1/completions", "{not json".into(), 400),
        ("POST", "/v1/completions", r#"{"prompt": 5}"#.into(), 400),
        ("POST", "/v1/completions", r#"{"prompt": "hi", "max_tokens": -1}"#.into(), 400),
        ("POST", "/v1/completions", r#"{"prompt": "hi", "max_tokens": 99999999}"#.into(), 400),
        ("POST", "/v1/completions", r#"{"prompt": "hi", "temperature": 9}"#.into(), 400),
        ("POST", "/v1/completions", r#"{"prompt": ""}"#.into(), 400),
        ("POST", "/v1/completions", r#"{"prompt": []}"#.into(), 400),
        ("POST", "/v1/completions", r#"{"prompt": ["a", ""]}"#.into(), 400),
        ("POST", "/v1/completions", r#"{"prompt": [999999999]}"#.into(), 400),
        ("POST", "/v1/completions", format!(r#"{{"prompt": "{}"}}"#, "word ".repeat(3000)), 400),
        ("POST", "/v1/chat/completions", r#"{"messages": []}"#.into(), 400),
        (
            "POST",
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}"#.into(),
            400,
        ),
        (
            "POST",
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": "hi"}], "logprobs": true, "top_logprobs": 50}"#.into(),
            400,
        ),
        ("POST", "/v1/completions", r#"{"prompt": "hi", "frequency_penalty": 2.5}"#.into(), 400),
        ("POST", "/v1/completions", r#"{"prompt": "hi", "model": "gpt-9"}"#.into(), 404),
        ("GET", "/v1/nothing", String::new(), 404),
        ("POST", "/v1/completions", format!(r#"{{"prompt": "{}"}}"#, "x".repeat(2 << 20)), 413),
    ];
    for (method, path, body, want) in cases {
        let (code, resp) = http(method, path, &body).await;
        assert_eq!(code, want, "{path} {}: {resp}", &body[..body.len().min(60)]);
        let v = json(&resp);
        assert!(v["error"]["message"].is_string() && v["error"]["type"].is_string(), "{resp}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_disconnect_mid_stream_frees_the_kv_blocks() {
    let state = &server().1;
    let addr = &server().0;
    let body = r#"{"prompt": "Count to a thousand:", "max_tokens": 1000, "ignore_eos": true, "stream": true}"#;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut seen = String::new();
    while seen.matches("data: ").count() < 3 {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "stream ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(
        state.models.primary().unwrap().engine.stats().scheduler.kv_blocks_used > 0,
        "the request holds blocks while streaming"
    );
    drop(s); // the client goes away
    let start = Instant::now();
    while state.models.primary().unwrap().engine.stats().scheduler.kv_blocks_used > 0
        || state.models.primary().unwrap().engine.stats().running > 0
    {
        assert!(start.elapsed() < Duration::from_secs(10), "blocks not freed after disconnect");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_and_the_run_time_batching_switch() {
    let (code, body) = http("GET", "/v1/stats", "").await;
    assert_eq!(code, 200);
    let v = json(&body);
    assert!(v["scheduler"]["kv_blocks_total"].as_u64().unwrap() > 0 && v["batching"].is_string(), "{v}");
    let (code, body) = http("POST", "/v1/batching", r#"{"strategy": "size_or_timeout:4:5ms"}"#).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&http("GET", "/v1/stats", "").await.1)["batching"], "size_or_timeout:4:5ms");
    let (code, body) = http("POST", "/v1/batching", r#"{"strategy": "sometimes"}"#).await;
    assert_eq!(code, 400);
    assert_eq!(json(&body)["error"]["param"], "strategy");
    assert_eq!(http("POST", "/v1/batching", r#"{"strategy": "continuous"}"#).await.0, 200);
    // Naming a model this server does not serve is a 404, for stats and the switch alike.
    let (code, body) = http("GET", "/v1/stats?model=nope", "").await;
    assert_eq!((code, json(&body)["error"]["type"].as_str()), (404, Some("not_found_error")), "{body}");
    assert_eq!(http("POST", "/v1/batching", r#"{"strategy": "continuous", "model": "nope"}"#).await.0, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_switch_at_run_time_and_requests_still_complete() {
    let (code, body) = http("POST", "/v1/streams", r#"{"streams": 2, "sync": false, "stream_priority": -2}"#).await;
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert_eq!(
        (v["streams"].as_u64(), v["sync"].as_bool(), v["stream_priority"].as_i64()),
        (Some(2), Some(false), Some(-2))
    );
    let stats = json(&http("GET", "/v1/stats", "").await.1);
    assert_eq!(stats["streams"]["sync"], false, "{stats}");
    // Requests run on the unsynchronised streams.
    let (code, body) = http("POST", "/v1/completions", r#"{"prompt": "Once upon a time", "max_tokens": 6}"#).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["usage"]["completion_tokens"], 6, "{body}");
    // A bad value or an unknown field is a 400 naming it; the settings stay.
    let (code, body) = http("POST", "/v1/streams", r#"{"assignment": "sideways"}"#).await;
    assert_eq!((code, json(&body)["error"]["param"].as_str()), (400, Some("assignment")), "{body}");
    let (code, body) = http("POST", "/v1/streams", r#"{"streams": 0}"#).await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = http("POST", "/v1/streams", r#"{"synchronise": true}"#).await;
    assert!(code == 400 && body.contains("synchronise"), "{body}");
    // And back (other tests share this server).
    let (code, body) = http("POST", "/v1/streams", r#"{"streams": 1, "sync": true, "stream_priority": 0}"#).await;
    assert_eq!(code, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_key_guards_v1_but_not_health() {
    let addr = auth_server().0.clone();
    let (code, body) = http_to(&addr, "GET", "/v1/models", "", "").await;
    assert_eq!(code, 401);
    assert_eq!(json(&body)["error"]["type"], "authentication_error");
    assert_eq!(http_to(&addr, "GET", "/v1/models", "", "Authorization: Bearer wrong\r\n").await.0, 401);
    assert_eq!(http_to(&addr, "GET", "/v1/models", "", "Authorization: Bearer sekrit\r\n").await.0, 200);
    // The tokenizer endpoints reveal the vocabulary: guarded too.
    let tokenize = r#"{"prompt": "hi"}"#;
    assert_eq!(http_to(&addr, "POST", "/tokenize", tokenize, "").await.0, 401);
    assert_eq!(http_to(&addr, "POST", "/tokenize", tokenize, "Authorization: Bearer sekrit\r\n").await.0, 200);
    assert_eq!(http_to(&addr, "GET", "/health", "", "").await.0, 200);
    assert_eq!(http_to(&addr, "GET", "/metrics", "", "").await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn each_api_key_is_a_tenant_with_its_own_prefix_cache() {
    let addr = auth_server().0.clone();
    let cached = |body: &str| json(body)["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64();
    let ids: Vec<u32> = (0..50).map(|i| 30_000 + i * 3).collect();
    let plain = serde_json::json!({"prompt": ids, "max_tokens": 1}).to_string();
    let shared = serde_json::json!({"prompt": ids, "max_tokens": 1, "cache_salt": "team"}).to_string();
    let send = |key: &'static str, body: String| {
        let addr = addr.clone();
        async move {
            let (code, resp) =
                http_to(&addr, "POST", "/v1/completions", &body, &format!("Authorization: Bearer {key}\r\n")).await;
            assert_eq!(code, 200, "{resp}");
            cached(&resp)
        }
    };
    // The first key's tenant: cold, then warm (48 of 50 tokens: three full 16-token blocks).
    assert_eq!(send("sekrit", plain.clone()).await, Some(0));
    assert_eq!(send("sekrit", plain.clone()).await, Some(48));
    // The second key sends the same tokens: its own blocks, cold.
    assert_eq!(send("other-tenant", plain.clone()).await, Some(0));
    // Both choose to share by sending the same cache_salt.
    assert_eq!(send("sekrit", shared.clone()).await, Some(0));
    assert_eq!(send("other-tenant", shared).await, Some(48));
}

/// The value of the sample line starting with `prefix` (labels included) in a scrape.
fn sample(scrape: &str, prefix: &str) -> f64 {
    let line = scrape.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} in {scrape}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_a_finished_request_in_prometheus_format() {
    // The shared server serves other tests at the same time: counters only grow, so compare
    // against a scrape taken before this test's request.
    let (code, before) = http("GET", "/metrics", "").await;
    assert_eq!(code, 200);
    let tokens_before = sample(&before, "tandem:generation_tokens_total{model_name=\"smollm2\"}");
    let length_before =
        sample(&before, "tandem:request_success_total{model_name=\"smollm2\",finished_reason=\"length\"}");
    let (code, body) = http(
        "POST",
        "/v1/completions",
        r#"{"prompt": "Once upon a time", "max_tokens": 6, "ignore_eos": true, "temperature": 0}"#,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    // The engine's counters are updated by its loop after the step that delivered the last
    // token, so they may lag the response by a step: poll briefly.
    let counted = |m: &str| {
        sample(m, "tandem:generation_tokens_total{model_name=\"smollm2\"}") >= tokens_before + 6.0
            && sample(m, "tandem:request_success_total{model_name=\"smollm2\",finished_reason=\"length\"}")
                > length_before
    };
    let mut after = http("GET", "/metrics", "").await.1;
    for _ in 0..100 {
        if counted(&after) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        after = http("GET", "/metrics", "").await.1;
    }
    assert!(sample(&after, "tandem:generation_tokens_total{model_name=\"smollm2\"}") >= tokens_before + 6.0);
    assert!(
        sample(&after, "tandem:request_success_total{model_name=\"smollm2\",finished_reason=\"length\"}")
            > length_before
    );
    assert!(sample(&after, "tandem:time_to_first_token_seconds_count{model_name=\"smollm2\"}") >= 1.0);
    assert!(sample(&after, "tandem:request_time_per_output_token_seconds_count{model_name=\"smollm2\"}") >= 1.0);
    assert!(sample(&after, "tandem:e2e_request_latency_seconds_sum{model_name=\"smollm2\"}") > 0.0);
    assert!(sample(&after, "tandem:stream_utilization{model_name=\"smollm2\",stream=\"0\"}") > 0.0);
    assert!(sample(&after, "process_resident_memory_bytes") > 1e6);
    // The default is Prometheus' text format 0.0.4 (no OpenMetrics `# EOF`), vLLM's families
    // alongside tandem's with the same values.
    assert!(!after.contains("# EOF"), "{after}");
    assert!(sample(&after, "vllm:generation_tokens_total{model_name=\"smollm2\"}") >= tokens_before + 6.0, "{after}");
    assert!(after.contains("vllm:cache_config_info{model_name=\"smollm2\",block_size=\"16\""), "{after}");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_served_as_prometheus_text_or_openmetrics_when_asked() {
    let addr = &server().0;
    let scrape = |accept: &'static str| async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.unwrap();
        raw
    };
    let plain = scrape("").await;
    assert!(plain.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{plain}");
    let om = scrape("Accept: application/openmetrics-text; version=1.0.0\r\n").await;
    assert!(om.to_ascii_lowercase().contains("content-type: application/openmetrics-text"), "{om}");
    assert!(om.trim_end().ends_with("# EOF"), "{om}");
}
