//! What a benchmark sends to: an OpenAI-compatible HTTP endpoint (tandem serve, llama.cpp's
//! llama-server, vLLM, TGI — streaming `/v1/completions` with `ignore_eos` and
//! `stream_options.include_usage`, timed chunk by chunk as `vllm bench serve` does), or a tandem
//! [`Engine`] in process (no HTTP: for scheduler studies).
//!
//! HTTP is plain `http://` (reqwest without TLS): benchmarks run on loopback or a lab network.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tandem_core::{FinishReason, NewRequest};
use tandem_engine::{Engine, EngineError, RequestEvent};
use tandem_executor::text::TextTokenizer;

use crate::dataset::{BenchRequest, Prompt};
use crate::metrics::{ChunkClock, RequestRecord};
use crate::BenchError;

/// An OpenAI-compatible server.
#[derive(Debug, Clone)]
pub struct HttpTarget {
    /// Up to and including `/v1`, e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    /// The `model` field; asked from `/v1/models` when `None`.
    pub model: Option<String>,
    pub api_key: Option<String>,
    client: reqwest::Client,
}

impl HttpTarget {
    pub fn new(base_url: &str, model: Option<String>, api_key: Option<String>) -> Result<Self, BenchError> {
        let base = base_url.trim_end_matches('/');
        let base = if base.ends_with("/v1") { base.to_string() } else { format!("{base}/v1") };
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .build()
            .map_err(|e| BenchError::Http(e.to_string()))?;
        Ok(Self { base_url: base, model, api_key, client })
    }

    /// The server's root (without `/v1`), for `/metrics`.
    pub fn root(&self) -> &str {
        self.base_url.trim_end_matches("/v1")
    }

    fn auth(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    /// Fills `model` from `/v1/models` if unset.
    pub async fn resolve_model(&mut self) -> Result<String, BenchError> {
        if let Some(m) = &self.model {
            return Ok(m.clone());
        }
        let url = format!("{}/models", self.base_url);
        let resp =
            self.auth(self.client.get(&url)).send().await.map_err(|e| BenchError::Http(format!("{url}: {e}")))?;
        let body = resp.text().await.map_err(|e| BenchError::Http(e.to_string()))?;
        let json: serde_json::Value =
            serde_json::from_str(&body).map_err(|_| BenchError::Http(format!("{url}: not JSON: {body}")))?;
        let id = json["data"][0]["id"]
            .as_str()
            .ok_or_else(|| BenchError::Http(format!("{url}: no model listed: {body}")))?
            .to_string();
        self.model = Some(id.clone());
        Ok(id)
    }

    /// Text of `GET /metrics`, if the server has it.
    pub async fn scrape_metrics(&self) -> Option<String> {
        let resp = self.client.get(format!("{}/metrics", self.root())).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.text().await.ok()
    }

    async fn send(&self, seq: usize, req: &BenchRequest, sent_at: f64) -> RequestRecord {
        let mut result = RequestRecord { seq, prompt_len: req.prompt_len, sent_at, ..RequestRecord::default() };
        let prompt = match &req.prompt {
            Prompt::Tokens(t) => serde_json::json!(t),
            Prompt::Text(s) => serde_json::json!(s),
        };
        let mut body = serde_json::json!({
            "model": self.model, "prompt": prompt, "max_tokens": req.output_len, "temperature": 0.0,
            "stream": true, "stream_options": {"include_usage": true}, "ignore_eos": true,
        });
        if req.priority != 0 {
            body["priority"] = req.priority.into();
        }
        let sent = Instant::now();
        let mut clock = ChunkClock::start(sent);
        let url = format!("{}/completions", self.base_url);
        let resp = match self
            .auth(self.client.post(&url))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                result.error = e.to_string();
                result.latency = clock.elapsed(Instant::now());
                return result;
            }
        };
        if !resp.status().is_success() {
            let status = resp.status();
            result.error = format!("{status}: {}", resp.text().await.unwrap_or_default());
            result.latency = clock.elapsed(Instant::now());
            return result;
        }
        let mut usage_tokens = None;
        let mut done = false;
        let mut buf = String::new();
        let mut stream = resp.bytes_stream();
        'read: while let Some(piece) = stream.next().await {
            let piece = match piece {
                Ok(p) => p,
                Err(e) => {
                    result.error = e.to_string();
                    break;
                }
            };
            let now = Instant::now();
            buf.push_str(&String::from_utf8_lossy(&piece));
            while let Some(end) = buf.find('\n') {
                let line: String = buf.drain(..=end).collect();
                let Some(data) = line.trim().strip_prefix("data:") else { continue };
                let data = data.trim();
                if data == "[DONE]" {
                    done = true;
                    break 'read;
                }
                let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else { continue };
                if let Some(err) = v.get("error") {
                    result.error = err.to_string();
                    break 'read;
                }
                if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                    usage_tokens = Some(n as usize);
                }
                let text = v["choices"][0]["text"].as_str().unwrap_or("");
                clock.chunk(now, !text.is_empty());
            }
        }
        let end = Instant::now();
        result.latency = clock.elapsed(end);
        result.ttft = clock.ttft();
        result.output_tokens = usage_tokens.unwrap_or(clock.chunks);
        result.itl = std::mem::take(&mut clock.itl);
        result.success = done && result.error.is_empty();
        if !done && result.error.is_empty() {
            result.error = "the stream ended without [DONE]".into();
        }
        result
    }
}

/// A tandem engine in this process.
pub struct EngineTarget {
    pub engine: Arc<Engine>,
    /// For text prompts.
    pub tokenizer: Option<TextTokenizer>,
    next_id: AtomicU64,
}

impl EngineTarget {
    pub fn new(engine: Arc<Engine>, tokenizer: Option<TextTokenizer>) -> Self {
        Self { engine, tokenizer, next_id: AtomicU64::new(1) }
    }

    async fn send(&self, seq: usize, req: &BenchRequest, sent_at: f64) -> RequestRecord {
        let mut result = RequestRecord { seq, prompt_len: req.prompt_len, sent_at, ..RequestRecord::default() };
        let prompt = match &req.prompt {
            Prompt::Tokens(t) => t.clone(),
            Prompt::Text(s) => match self.tokenizer.as_ref().map(|t| t.encode(s)) {
                Some(Ok(ids)) => ids,
                Some(Err(e)) => {
                    result.error = e.to_string();
                    return result;
                }
                None => {
                    result.error = "a text prompt needs a tokenizer".into();
                    return result;
                }
            },
        };
        let sent = Instant::now();
        let mut clock = ChunkClock::start(sent);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut handle = loop {
            let mut r = NewRequest::new(id, prompt.clone(), req.output_len, Duration::ZERO);
            r.params.ignore_eos = true;
            r.priority = req.priority;
            match self.engine.submit(r) {
                Ok(h) => break h,
                Err(EngineError::QueueFull { retry_after, .. }) => {
                    tokio::time::sleep(retry_after.min(Duration::from_millis(20))).await;
                }
                Err(e) => {
                    result.error = e.to_string();
                    result.latency = clock.elapsed(Instant::now());
                    return result;
                }
            }
        };
        while let Some(ev) = handle.next().await {
            match ev {
                RequestEvent::Token(_) => {
                    clock.chunk(Instant::now(), true);
                    result.output_tokens += 1;
                }
                RequestEvent::Finished(reason) => {
                    result.success = matches!(reason, FinishReason::Stopped(_) | FinishReason::Length);
                    if !result.success {
                        result.error = format!("{reason:?}");
                    }
                }
                RequestEvent::Failed(e) => result.error = e.to_string(),
                RequestEvent::Logprobs(_) => {}
            }
        }
        result.latency = clock.elapsed(Instant::now());
        result.ttft = clock.ttft();
        result.itl = clock.itl;
        result
    }
}

/// Either kind of target.
pub enum Target {
    Http(HttpTarget),
    Engine(Box<EngineTarget>),
}

impl Target {
    /// Sends request `seq` and times it; `sent_at` is seconds since the benchmark's start.
    pub async fn send(&self, seq: usize, req: &BenchRequest, sent_at: f64) -> RequestRecord {
        match self {
            Target::Http(h) => h.send(seq, req, sent_at).await,
            Target::Engine(e) => e.send(seq, req, sent_at).await,
        }
    }
}
