//! The HTTP handlers of every route `crate::router` serves: `/health`, `/ready`, `/metrics`,
//! `/v1/models`, `/v1/contexts`, `/v1/completions` and `/v1/chat/completions` (JSON, or SSE
//! streaming ending with `data: [DONE]`), `/v1/stats`, `/v1/batching` and `/v1/streams`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::json;

use crate::error::ApiError;
use crate::generation::{Choice, TokenLogprob};
use crate::openai::{
    chat_messages, parse, ChatBody, Common, CompletionBody, GenRequest, PromptInput, MAX_CHOICES, MAX_PROMPTS,
};
use crate::state::{AppState, Models, Tenant};
use tandem_engine::ModelLease;

pub(crate) type Shared = State<Arc<AppState>>;

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: 200 while serving, 503 from the shutdown signal on (so a load balancer or
/// Kubernetes stops sending traffic while requests in flight finish).
pub async fn ready(State(s): Shared) -> Response {
    let names: Vec<String> = s.models.list().into_iter().map(|(n, _, _)| n).collect();
    if s.is_draining() {
        let body = json!({"status": "draining", "model": names.first(), "models": names});
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    Json(json!({"status": "ready", "model": names.first(), "models": names})).into_response()
}

/// Prometheus scrape (see [`crate::metrics`]): every loaded model's engine, the contexts, and
/// the process.
/// `GET /metrics`: the Prometheus text format 0.0.4, or OpenMetrics when `Accept` asks for it.
pub async fn metrics(State(s): Shared, headers: axum::http::HeaderMap) -> Result<Response, ApiError> {
    let (models, contexts) = match &s.models {
        Models::One(m) => (vec![(m.name.clone(), m.engine.stats())], None),
        Models::Many(r) => (
            r.loaded_models().iter().map(|m| (m.name.clone(), m.engine.stats())).collect(),
            Some(crate::metrics::ContextMetrics { contexts: r.contexts(), memory: r.stats(), requeued: r.requeued() }),
        ),
    };
    let text =
        crate::metrics::render(models, contexts).map_err(|_| ApiError::Internal("cannot encode the metrics".into()))?;
    let accept = headers.get(axum::http::header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    if accept.contains("application/openmetrics-text") {
        return Ok(([(axum::http::header::CONTENT_TYPE, crate::metrics::OPENMETRICS)], text).into_response());
    }
    let text = crate::metrics::to_prometheus_text(&text);
    Ok(([(axum::http::header::CONTENT_TYPE, crate::metrics::PROMETHEUS_TEXT)], text).into_response())
}

pub async fn models(State(s): Shared) -> Json<serde_json::Value> {
    let data: Vec<_> = s
        .models
        .list()
        .into_iter()
        // vLLM's fields: `root` (where the model was served from: a directory its tokenizer
        // loads from), `parent` (the base of a LoRA adapter: none), `max_model_len` (null while
        // a context is unloaded).
        .map(|(id, root, len)| {
            json!({"id": id, "object": "model", "created": 0, "owned_by": "tandem", "root": root, "parent": null,
                   "max_model_len": len, "permission": []})
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}

/// Loaded state of every model context, like `ollama ps`: tier, memory used / max, running
/// requests, idle time, compute share and device time.
pub async fn contexts(State(s): Shared) -> Json<serde_json::Value> {
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    match &s.models {
        Models::One(m) => Json(json!({"object": "list", "data": [{
            "id": m.name, "loaded": true, "tier": "guaranteed", "running": m.engine.stats().running,
        }]})),
        Models::Many(r) => {
            let data: Vec<_> = r
                .contexts()
                .into_iter()
                .map(|c| {
                    let v = &c.view;
                    json!({
                        "id": v.spec.name, "loaded": v.loaded_bytes.is_some(), "tier": v.spec.tier.to_string(),
                        "priority": v.priority, "memory_used_mib": v.loaded_bytes.map(mib),
                        "memory_max_mib": mib(v.spec.max_bytes), "memory_reserved_mib": mib(v.spec.reserved_bytes()),
                        "running": v.running, "idle_s": c.idle.as_secs_f64(), "keep_alive_s": v.spec.keep_alive.as_secs_f64(),
                        "share": v.spec.share, "device_time_s": c.device_time.as_secs_f64(),
                    })
                })
                .collect();
            let st = r.stats();
            Json(json!({"object": "list", "data": data, "memory": {
                "total_mib": mib(st.total_bytes), "allocated_mib": mib(st.allocated_bytes),
                "reserved_mib": mib(st.reserved_bytes), "free_mib": mib(st.free_bytes),
                "loads": st.loads, "evictions": st.evictions, "keep_alive_unloads": st.keep_alive_unloads,
                "pressure_events": st.pressure_events, "denied_loads": st.denied_loads,
                "requeued_requests": r.requeued(),
            }}))
        }
    }
}

#[derive(serde::Deserialize)]
pub struct ModelQuery {
    model: Option<String>,
}

/// The model's `config.json` beside its root (an HF directory's own, or the one exported with
/// a GGUF's tokenizer): `model_type` and `architectures`, when there.
fn model_shape(root: &str) -> (Option<String>, Option<serde_json::Value>) {
    let config = std::fs::read(std::path::Path::new(root).join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    let model_type = config.as_ref().and_then(|c| c["model_type"].as_str()).map(str::to_string);
    (model_type, config.and_then(|c| c.get("architectures").cloned()))
}

/// SGLang's `GET /model_info` (and its old name `/get_model_info`), which SGLang's router reads
/// when a worker registers: the served model's path and tokenizer path (its root: a directory
/// the tokenizer loads from), that it generates text, and its architecture.
pub async fn model_info(State(s): Shared) -> Result<Json<serde_json::Value>, ApiError> {
    let (name, loaded) = s.models.for_control(None)?;
    let root = loaded.as_ref().map_or(name.clone(), |m| m.root.clone());
    let (model_type, architectures) = model_shape(&root);
    Ok(Json(json!({
        "model_path": root, "tokenizer_path": root, "served_model_name": name, "is_generation": true,
        "model_type": model_type, "architectures": architectures,
        "has_image_understanding": false, "has_audio_understanding": false,
    })))
}

/// SGLang's `GET /server_info` (and `/get_server_info`): the served model and this replica's
/// limits, from the running engine (one replica: tp and dp 1).
pub async fn server_info(State(s): Shared) -> Result<Json<serde_json::Value>, ApiError> {
    let (name, loaded) = s.models.for_control(None)?;
    let Some(m) = loaded else {
        return Ok(Json(json!({"model_path": name, "served_model_name": name, "tp_size": 1, "dp_size": 1})));
    };
    let sc = m.engine.stats().scheduler;
    Ok(Json(json!({
        "model_path": m.root, "tokenizer_path": m.root, "served_model_name": name,
        "tp_size": 1, "dp_size": 1, "context_length": m.max_model_len,
        "max_total_num_tokens": sc.kv_blocks_total * sc.block_size,
        "max_running_requests": sc.max_num_seqs, "max_prefill_tokens": sc.max_num_batched_tokens,
        "page_size": sc.block_size, "version": env!("CARGO_PKG_VERSION"), "engine": "tandem",
    })))
}

#[derive(serde::Deserialize)]
pub struct AdmissionQuery {
    model: Option<String>,
    prompt_tokens: Option<usize>,
}

/// `GET /v1/admission?prompt_tokens=N[&model=NAME]`: what admission would predict now for an
/// N-token prompt (calibrated, as it decides), and the backlog behind it — for a router picking
/// the replica with the shortest wait, or a client deciding when to come back. Changes nothing.
pub async fn admission(
    State(s): Shared,
    q: Result<Query<AdmissionQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let q = q.map_err(|e| ApiError::invalid("prompt_tokens", e.body_text()))?;
    let (name, loaded) = s.models.for_control(q.model.as_deref())?;
    let Some(m) = loaded else { return Ok(Json(json!({"model": name, "loaded": false}))) };
    let prompt = q.prompt_tokens.unwrap_or(1).max(1);
    let predicted = m.engine.predict_ttft(prompt);
    let st = m.engine.stats();
    let sc = st.scheduler;
    Ok(Json(json!({
        "model": name,
        "loaded": true,
        "prompt_tokens": prompt,
        "predicted_ttft_ms": predicted.map(|d| d.as_secs_f64() * 1e3),
        "ttft_deadline_ms": s.ttft_deadline.map(|d| d.as_secs_f64() * 1e3),
        "prefill_backlog_tokens": sc.prefill_backlog_tokens,
        "prefill_tokens_fed_total": sc.prefill_tokens_fed,
        "decoding": sc.decoding,
        "waiting": sc.waiting,
        "places_held": st.reservations_held,
    })))
}

/// Live statistics (seed 002's list plus the scheduler's counters) of one model:
/// `?model=NAME`, by default the only or first loaded one. A configured model that is not
/// loaded answers `{"model": NAME, "loaded": false}`.
pub async fn stats(
    State(s): Shared,
    q: Result<Query<ModelQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let q = q.map_err(|e| ApiError::invalid("model", e.body_text()))?;
    let (name, loaded) = s.models.for_control(q.model.as_deref())?;
    let Some(m) = loaded else { return Ok(Json(json!({"model": name, "loaded": false}))) };
    let st = m.engine.stats();
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let sc = &st.scheduler;
    Ok(Json(json!({
        "model": name,
        "loaded": true,
        "total_requests": st.total_requests,
        "finished_requests": st.finished_requests,
        "queue_depth": st.queue_depth,
        "running": st.running,
        "current_batch_size": st.current_batch_size,
        "mean_batch_size": st.mean_batch_size,
        "avg_wait_ms": ms(st.avg_wait),
        "avg_processing_ms": ms(st.avg_processing),
        "avg_latency_ms": ms(st.avg_latency),
        "throughput_rps": st.throughput_rps,
        "throughput_tokens_per_s": st.throughput_tps,
        "steps": st.steps,
        "stream_utilisation": st.stream_utilisation,
        "cpu_time_ms": ms(st.cpu_time),
        "cpu_hidden_ms": ms(st.cpu_hidden),
        "grammar_masks": st.grammar_masks, "grammar_mask_ms": ms(st.grammar_mask_time),
        "device_time_ms": ms(st.device_time),
        "peak_kv_usage": st.peak_kv_usage,
        "batching": st.batching,
        "streams": streams_json(&st.streams),
        "uptime_s": st.uptime.as_secs_f64(),
        "scheduler": {
            "waiting": sc.waiting, "running": sc.running, "swapped": sc.swapped,
            "kv_usage": sc.kv_usage(), "kv_blocks_used": sc.kv_blocks_used, "kv_blocks_total": sc.kv_blocks_total,
            "prefix_cache_hit_rate": sc.prefix_cache_hit_rate(),
            "preemptions_recompute": sc.preemptions_recompute, "preemptions_swap": sc.preemptions_swap,
            "preemption_cost": sc.preemption_cost.map(|c| json!({"kv_bytes_per_block": c.kv_bytes_per_block,
                "swap_bytes_per_sec": c.swap_bytes_per_sec, "recompute_tokens_per_sec": c.recompute_tokens_per_sec})),
            "prefix_cache_rejections": sc.prefix_cache_rejections,
            "max_num_seqs": sc.max_num_seqs, "max_num_batched_tokens": sc.max_num_batched_tokens,
            "tokens_generated": sc.tokens_generated,
        },
    })))
}

#[derive(serde::Deserialize)]
struct BatchingBody {
    strategy: String,
    model: Option<String>,
}

/// Switches the batching strategy at run time: `{"strategy": "latency", "model": NAME}` (any
/// name `tandem_core::BatchingKind` parses; `model` by default the only or first loaded one).
/// Under `--models` the choice also holds for the model's later loads, and a model that is
/// not loaded takes it when it loads (`"applied": "on_load"`).
pub async fn set_batching(
    State(s): Shared,
    b: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let req: BatchingBody = parse(&body(b)?)?;
    let kind: tandem_core::BatchingKind =
        req.strategy.parse().map_err(|e: tandem_core::Error| ApiError::invalid("strategy", e.to_string()))?;
    let (name, loaded) = s.models.for_control(req.model.as_deref())?;
    let applied_now = match &s.models {
        Models::One(_) => loaded.ok_or(ApiError::Unavailable)?.engine.set_batching(kind).map(|()| true)?,
        Models::Many(r) => {
            let r = Arc::clone(r);
            let n = name.clone();
            tokio::task::spawn_blocking(move || r.set_batching(&n, kind))
                .await
                .map_err(|e| ApiError::Internal(format!("batching switch panicked: {e}")))??
        }
    };
    Ok(Json(
        json!({"model": name, "batching": kind.to_string(), "applied": if applied_now { "now" } else { "on_load" }}),
    ))
}

/// `POST /v1/streams`: the parallel-stream settings to change, the rest kept.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamsBody {
    model: Option<String>,
    streams: Option<usize>,
    assignment: Option<String>,
    sync: Option<bool>,
    stream_priority: Option<i32>,
    min_parallel: Option<usize>,
    fusion: Option<bool>,
}

fn streams_json(c: &tandem_core::StreamConfig) -> serde_json::Value {
    json!({
        "streams": c.num_streams, "assignment": c.assignment.to_string(), "sync": c.synchronize,
        "stream_priority": c.stream_priority, "min_parallel": c.min_requests_for_parallel,
        "fusion": c.context_generation_fusion,
    })
}

/// Switches a loaded model's parallel streams at run time, `/v1/batching`'s sibling:
/// `{"streams": 2, "assignment": "smart", "sync": false, "stream_priority": -1, "min_parallel": 2,
/// "fusion": false, "model": NAME}`, every field optional (the others keep their value). Sound in
/// both directions: the engine finishes the steps in flight in their old mode first. Answers
/// with the settings now in force; an unknown field or a bad value is a 400 naming it.
pub async fn set_streams(
    State(s): Shared,
    b: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let req: StreamsBody = parse(&body(b)?)?;
    let (name, loaded) = s.models.for_control(req.model.as_deref())?;
    let model = loaded.ok_or(ApiError::Unavailable)?;
    let mut cfg = model.engine.stats().streams;
    if let Some(n) = req.streams {
        cfg.num_streams = n;
    }
    if let Some(a) = &req.assignment {
        cfg.assignment = a.parse().map_err(|e: tandem_core::Error| ApiError::invalid("assignment", e.to_string()))?;
    }
    cfg.synchronize = req.sync.unwrap_or(cfg.synchronize);
    cfg.stream_priority = req.stream_priority.unwrap_or(cfg.stream_priority);
    cfg.min_requests_for_parallel = req.min_parallel.unwrap_or(cfg.min_requests_for_parallel);
    cfg.context_generation_fusion = req.fusion.unwrap_or(cfg.context_generation_fusion);
    cfg.validate().map_err(|e| ApiError::invalid("streams", e.to_string()))?;
    model.engine.set_streams(cfg)?;
    let mut out = streams_json(&cfg);
    out["model"] = json!(name);
    Ok(Json(out))
}

/// Rejects `/v1` requests without one of the configured Bearer keys (each compared in
/// constant time, all of them every time), and marks the request with its [`Tenant`].
pub async fn auth(
    State(s): Shared,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<Response, ApiError> {
    if !s.api_keys.is_empty() {
        let given = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let matched = s.api_keys.iter().enumerate().fold(None, |found, (i, key)| {
            if constant_time_eq(given.as_bytes(), key.as_bytes()) {
                Some(i)
            } else {
                found
            }
        });
        let Some(i) = matched else { return Err(ApiError::Unauthorized) };
        req.extensions_mut().insert(Tenant(i));
    }
    Ok(next.run(req).await)
}

/// Before any route: while draining, 503 for everything but `/health` and `/metrics` (and
/// `/ready`, which says so itself); a body must arrive whole within the timeout (408).
pub async fn gate(
    State((s, body_timeout)): State<(Arc<AppState>, std::time::Duration)>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<Response, ApiError> {
    let path = req.uri().path();
    if s.is_draining() && !matches!(path, "/health" | "/metrics" | "/ready") {
        return Err(ApiError::Draining);
    }
    let (parts, body) = req.into_parts();
    let bytes = match tokio::time::timeout(body_timeout, axum::body::to_bytes(body, crate::MAX_BODY_BYTES)).await {
        Err(_) => return Err(ApiError::SlowRequest(body_timeout)),
        Ok(Err(e)) if e.to_string().contains("length limit") => return Err(ApiError::TooLarge(crate::MAX_BODY_BYTES)),
        Ok(Err(e)) => {
            return Err(ApiError::Invalid { message: format!("cannot read the request body: {e}"), param: None })
        }
        Ok(Ok(b)) => b,
    };
    Ok(next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes))).await)
}

/// Equality that takes the same time wherever the inputs differ (length aside).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

/// The body, or a 413/400 as OpenAI-shaped JSON.
pub(crate) fn body(b: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    b.map_err(|e| match e {
        BytesRejection::FailedToBufferBody(_) => ApiError::TooLarge(crate::MAX_BODY_BYTES),
        other => ApiError::Invalid { message: other.body_text(), param: None },
    })
}

async fn model_for(s: &AppState, c: &Common) -> Result<Arc<ModelLease>, ApiError> {
    Ok(Arc::new(s.models.acquire(c.model.as_deref()).await?))
}

fn encode(m: &ModelLease, text: &str) -> Result<Vec<u32>, ApiError> {
    m.tokenizer.encode(text).map_err(|e| ApiError::invalid("prompt", e.to_string()))
}

pub async fn completions(
    State(s): Shared,
    tenant: Option<Extension<Tenant>>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let mut req: CompletionBody = parse(&body(b)?)?;
    req.common.tenant = tenant.map(|t| t.0);
    req.common.refuse_unsupported()?;
    if crate::tools::parse(req.common.tools.as_ref(), req.common.tool_choice.as_ref())?.is_some() {
        return Err(ApiError::invalid("tools", "tools are for /v1/chat/completions"));
    }
    let m = model_for(&s, &req.common).await?;
    // One prompt, or a batch (strings or token lists) as OpenAI and vLLM accept: choice i of
    // the response is prompt i / n, its choice i % n.
    let (prompts, texts): (Vec<Vec<u32>>, Option<Vec<String>>) = match req.prompt {
        PromptInput::Text(t) => (vec![encode(&m, &t)?], Some(vec![t])),
        PromptInput::Texts(v) => (v.iter().map(|t| encode(&m, t)).collect::<Result<_, _>>()?, Some(v)),
        PromptInput::Tokens(ids) => (vec![ids], None),
        PromptInput::TokenLists(lists) => (lists, None),
    };
    if prompts.is_empty() || prompts.len() > MAX_PROMPTS {
        return Err(ApiError::invalid("prompt", format!("send 1 to {MAX_PROMPTS} prompts, not {}", prompts.len())));
    }
    let vocab = m.tokenizer.vocab_size();
    if let Some(&bad) = prompts.iter().flatten().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::invalid("prompt", format!("token id {bad} is outside the vocabulary")));
    }
    let mut gens =
        prompts.into_iter().map(|p| req.common.validate(p, m.max_model_len)).collect::<Result<Vec<_>, _>>()?;
    if req.common.echo == Some(true) {
        // The prompt as sent; token prompts decoded (as vLLM echoes them).
        for (i, g) in gens.iter_mut().enumerate() {
            g.echo = Some(match texts.as_ref().and_then(|t| t.get(i)) {
                Some(t) => t.clone(),
                None => m.tokenizer.decode(&g.prompt).map_err(|e| ApiError::invalid("prompt", e.to_string()))?,
            });
        }
    }
    if gens.len() * gens[0].n > MAX_CHOICES {
        return Err(ApiError::invalid("n", format!("prompts × n must be at most {MAX_CHOICES}")));
    }
    respond(s, m, gens, false).await
}

pub async fn chat(
    State(s): Shared,
    tenant: Option<Extension<Tenant>>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let mut req: ChatBody = parse(&body(b)?)?;
    req.common.tenant = tenant.map(|t| t.0);
    req.common.refuse_unsupported()?;
    if req.common.echo == Some(true) {
        return Err(ApiError::invalid("echo", "`echo` is for /v1/completions"));
    }
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    let mut messages = chat_messages(&req.messages)?;
    let tools = crate::tools::parse(req.common.tools.as_ref(), req.common.tool_choice.as_ref())?.filter(|t| t.active());
    if let Some(t) = &tools {
        // The functions go in the system turn, as Qwen2.5's template puts them.
        match messages.first_mut() {
            Some(first) if first.role == "system" => {
                first.content = format!("{}\n\n{}", first.content, t.system_text())
            }
            _ => messages.insert(0, tandem_executor::text::ChatMessage::new("system", &t.system_text())),
        }
    }
    let m = model_for(&s, &req.common).await?;
    let text = m.tokenizer.apply_chat_template(&messages).map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    let mut g = req.common.validate(encode(&m, &text)?, m.max_model_len)?;
    if let Some(grammar) = tools.as_ref().and_then(|t| t.grammar()) {
        if g.grammar.is_some() {
            return Err(ApiError::invalid(
                "tool_choice",
                "a required or named tool call cannot also have a response_format",
            ));
        }
        g.grammar = Some(grammar);
    }
    g.tools = tools.is_some();
    respond(s, m, vec![g], true).await
}

/// A chat message for a finished choice: its calls (if tools were offered and it made any) as
/// OpenAI's `tool_calls`, with finish reason `tool_calls`.
fn chat_message(text: &str, finish: &str, g: &GenRequest, response: &str, index: usize) -> (serde_json::Value, String) {
    let (content, calls) =
        if g.tools { crate::tools::split_calls(text, g.parallel_tool_calls) } else { (text.to_string(), Vec::new()) };
    if calls.is_empty() {
        return (json!({"role": "assistant", "content": text}), finish.to_string());
    }
    let content = if content.is_empty() { serde_json::Value::Null } else { json!(content) };
    let calls: Vec<_> = calls.iter().enumerate().map(|(i, c)| call_json(c, response, index, i, true)).collect();
    (json!({"role": "assistant", "content": content, "tool_calls": calls}), "tool_calls".to_string())
}

/// One call in OpenAI's shape (`index` only in stream deltas), its id unique by the response's.
fn call_json(c: &crate::tools::ToolCall, response: &str, choice: usize, i: usize, whole: bool) -> serde_json::Value {
    let id = format!("call-{}-{choice}-{i}", response.rsplit('-').next().unwrap_or(response));
    let mut v = json!({"id": id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}});
    if !whole {
        v["index"] = json!(i);
    }
    v
}

/// Runs every choice of `gens` (one request per prompt, all with the same options).
async fn respond(
    s: Arc<AppState>,
    m: Arc<ModelLease>,
    gens: Vec<GenRequest>,
    chat: bool,
) -> Result<Response, ApiError> {
    let model = m.name.clone();
    let mut choices = Vec::new();
    for (p, g) in gens.iter().enumerate() {
        for j in 0..g.n {
            choices.push(Choice::start(&s, &m, g, p * g.n + j)?);
        }
    }
    let prompt_tokens: usize = gens.iter().map(|g| g.prompt.len()).sum();
    let gens_echo: Vec<Option<String>> = gens.iter().map(|g| g.echo.clone()).collect();
    let Some(g) = gens.into_iter().next() else { return Err(ApiError::invalid("prompt", "no prompt")) };
    let id = s.response_id(if chat { "chatcmpl" } else { "cmpl" });
    if g.stream {
        return Ok(stream_response(g, gens_echo, prompt_tokens, choices, chat, id, model).into_response());
    }
    let results = futures_util::future::join_all(choices.into_iter().map(|c| c.collect())).await;
    let mut out = Vec::new();
    let (mut completion_tokens, mut cached) = (0, 0);
    for r in results {
        let c = r?;
        completion_tokens += c.tokens;
        // Each prompt once (its first choice), as `prompt_tokens` counts it.
        if c.index % g.n == 0 {
            cached += c.cached;
        }
        let logprobs = g.logprobs.map(|_| logprobs_json(&c.logprobs, chat, 0));
        out.push(if chat {
            let (message, finish) = chat_message(&c.text, c.finish, &g, &id, c.index);
            json!({"index": c.index, "message": message, "logprobs": logprobs, "finish_reason": finish})
        } else {
            let text = match &gens_echo[c.index / g.n] {
                Some(prompt) => format!("{prompt}{}", c.text),
                None => c.text,
            };
            json!({"index": c.index, "text": text, "logprobs": logprobs, "finish_reason": c.finish})
        });
    }
    Ok(Json(json!({
        "id": id,
        "object": if chat { "chat.completion" } else { "text_completion" },
        "created": now_secs(),
        "model": model,
        "choices": out,
        "usage": usage(prompt_tokens, completion_tokens, cached),
    }))
    .into_response())
}

/// OpenAI's `usage`, with the prompt tokens the prefix cache served.
fn usage(prompt: usize, completion: usize, cached: usize) -> serde_json::Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
           "prompt_tokens_details": {"cached_tokens": cached}})
}

/// Log-probabilities in OpenAI's shape: chat's `{"content": [{token, logprob, bytes,
/// top_logprobs}]}`, or completions' `{tokens, token_logprobs, top_logprobs, text_offset}`
/// (offsets count from `offset`, the bytes of text before these tokens).
fn logprobs_json(lps: &[TokenLogprob], chat: bool, offset: usize) -> serde_json::Value {
    let entry = |token: &str, logprob: f32| json!({"token": token, "logprob": logprob, "bytes": token.as_bytes()});
    if chat {
        let content: Vec<_> = lps
            .iter()
            .map(|lp| {
                let mut e = entry(&lp.token, lp.logprob);
                e["top_logprobs"] = lp.top.iter().map(|(t, l)| entry(t, *l)).collect();
                e
            })
            .collect();
        return json!({"content": content});
    }
    let mut at = offset;
    let text_offset: Vec<usize> = lps
        .iter()
        .map(|lp| {
            let here = at;
            at += lp.token.len();
            here
        })
        .collect();
    let top: Vec<serde_json::Map<String, serde_json::Value>> =
        lps.iter().map(|lp| lp.top.iter().map(|(t, l)| (t.clone(), json!(l))).collect()).collect();
    json!({
        "tokens": lps.iter().map(|lp| lp.token.as_str()).collect::<Vec<_>>(),
        "token_logprobs": lps.iter().map(|lp| lp.logprob).collect::<Vec<_>>(),
        "top_logprobs": top,
        "text_offset": text_offset,
    })
}

/// SSE: one chunk per text delta of any choice, the usage chunk if asked, then `[DONE]`.
/// Dropping the stream (client gone) drops every choice's handle, aborting its request.
fn stream_response(
    g: GenRequest,
    echoes: Vec<Option<String>>,
    prompt_tokens: usize,
    choices: Vec<Choice>,
    chat: bool,
    id: String,
    model: String,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let generated = Arc::new(AtomicUsize::new(0));
    let cached = Arc::new(AtomicUsize::new(0));
    let n = g.n.max(1);
    let tools = chat && g.tools;
    let parallel_calls = g.parallel_tool_calls;
    let created = now_secs();
    let object = if chat { "chat.completion.chunk" } else { "text_completion" };
    let per_choice = choices.into_iter().map(|c| {
        // Completions' echo: the prompt text, sent with the first chunk.
        let echo = echoes.get(c.index / n).cloned().flatten();
        // Token and cached-prompt counters shared by every choice, for the usage chunk.
        let counters = (generated.clone(), cached.clone());
        // With tools: text that may be a call is held back and parsed at the end.
        let calls = tools.then(|| crate::tools::ToolStream::new(parallel_calls));
        // (choice, (state, counters), first chunk, text length so far for completions'
        // text_offset, the tool-call parser, the echo not yet sent)
        stream::unfold(
            (c, counters, true, 0usize, calls, echo),
            move |(mut c, counters, first, offset, mut calls, mut echo)| async move {
                let (generated, cached) = &counters;
                let before = c.tokens();
                let d = c.next().await?;
                generated.fetch_add(c.tokens() - before, Ordering::Relaxed);
                if c.index % n == 0 && d.as_ref().is_ok_and(|d| d.finish.is_some()) {
                    cached.fetch_add(c.prompt_cached_tokens(), Ordering::Relaxed);
                }
                let d = d.map(|mut d| {
                    if let Some(prompt) = echo.take() {
                        d.text.insert_str(0, &prompt);
                    }
                    let mut found = Vec::new();
                    if let Some(ts) = calls.as_mut() {
                        d.text = ts.push(&d.text);
                        if d.finish.is_some() {
                            let (rest, parsed) = ts.finish();
                            d.text.push_str(&rest);
                            found = parsed;
                        }
                    }
                    (d, found)
                });
                let next_offset = offset + d.as_ref().map_or(0, |d| d.0.text.len());
                let item = d.map(|(d, found)| (c.index, d, first, offset, found));
                Some((item, (c, counters, false, next_offset, calls, echo)))
            },
        )
        .boxed()
    });
    let want_logprobs = g.logprobs.is_some();
    let (id2, model2) = (id.clone(), model.clone());
    let chunks = stream::select_all(per_choice).map(move |item| {
        let data = match item {
            Ok((index, d, first, offset, calls)) => {
                let logprobs = want_logprobs.then(|| logprobs_json(&d.logprobs, chat, offset));
                let choice = if chat {
                    let mut delta = if first {
                        json!({"role": "assistant", "content": d.text})
                    } else {
                        json!({"content": d.text})
                    };
                    let mut finish = d.finish.map(str::to_string);
                    if !calls.is_empty() {
                        delta["tool_calls"] =
                            calls.iter().enumerate().map(|(i, c)| call_json(c, &id, index, i, false)).collect();
                        finish = Some("tool_calls".into());
                    }
                    json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
                } else {
                    json!({"index": index, "text": d.text, "logprobs": logprobs, "finish_reason": d.finish})
                };
                json!({"id": id, "object": object, "created": created, "model": model, "choices": [choice]})
            }
            Err(e) => e.body(),
        };
        Ok(Event::default().data(data.to_string()))
    });
    let tail = stream::once(async move {
        let done = Ok::<_, Infallible>(Event::default().data("[DONE]"));
        if !g.include_usage {
            return vec![done];
        }
        let completion = generated.load(Ordering::Relaxed);
        let usage = json!({"id": id2, "object": object, "created": created, "model": model2, "choices": [],
            "usage": usage(prompt_tokens, completion, cached.load(Ordering::Relaxed))});
        vec![Ok(Event::default().data(usage.to_string())), done]
    })
    .flat_map(stream::iter);
    Sse::new(chunks.chain(tail))
}
