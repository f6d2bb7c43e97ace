//! `tandem serve`: load the model, start the engine, serve the OpenAI API until SIGINT/SIGTERM.
//! With `--models FILE.toml`, several models share the device in contexts
//! ([`crate::contexts`]), loaded on first request.

use clap::Args;
use tandem_engine::ServedModel;
use tandem_server::{AppState, Models};

use tandem_engine::BLOCK_SIZE;
use tandem_kv_events::KvEventsConfig;

use crate::model::{start_publishing, ModelArgs};

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Require `Authorization: Bearer <key>` on /v1 with one of these keys (comma-separated or
    /// repeated; also read from TANDEM_API_KEY). Each key is a tenant: requests without a
    /// `cache_salt` share prefix-cache blocks only with requests of the same key.
    #[arg(long, env = "TANDEM_API_KEY", hide_env_values = true, value_delimiter = ',')]
    api_key: Vec<String>,
    /// Serve several models from a TOML file of contexts (tiers, memory budgets, shares,
    /// keep-alive) instead of one `--model`; see docs/contexts.md.
    #[arg(long, conflicts_with = "model")]
    models: Option<std::path::PathBuf>,
    /// Open connections at most; one more is answered 503 and closed.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Seconds a client has to send a whole request head (from connecting, or after its last
    /// response: idle keep-alive connections close then) and a whole body (else 408).
    #[arg(long, default_value_t = 30.0)]
    header_timeout_secs: f64,
    /// Admission by predicted wait: a request whose predicted time to first token exceeds this
    /// many ms (or its own `ttft_deadline_ms`) is refused at once with 429 and Retry-After = the
    /// predicted wait. Default: none (only requests that set a deadline are checked).
    #[arg(long)]
    ttft_deadline_ms: Option<f64>,
    /// On SIGTERM or SIGINT: `/ready` and new requests answer 503 at once, requests in flight
    /// get this many seconds to finish, then the server exits 0.
    #[arg(long, default_value_t = 30.0)]
    shutdown_grace_secs: f64,
    /// Publish the prefix cache's block events for KV-aware routers, as vLLM does: its
    /// `KVEventsConfig` JSON, e.g. `{"enable_kv_cache_events": true, "publisher": "zmq",
    /// "endpoint": "tcp://*:5557", "replay_endpoint": "tcp://*:5558", "topic": "kv-events"}`
    /// (msgpack `BlockStored` / `BlockRemoved` / `AllBlocksCleared` batches on a ZeroMQ PUB
    /// socket; docs/scale-out.md).
    #[arg(long, value_name = "JSON")]
    kv_events_config: Option<String>,
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    eprintln!("tandem serve: shutting down");
}

/// A non-negative, finite number of seconds.
fn seconds(flag: &str, v: f64) -> Result<std::time::Duration, String> {
    std::time::Duration::try_from_secs_f64(v)
        .map_err(|_| format!("{flag} must be a non-negative number of seconds, got {v}"))
}

pub fn run(a: ServeArgs) -> Result<(), String> {
    // One line per request (see tandem_server::generation); RUST_LOG overrides the level.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
    let keys: Vec<String> = a.api_key.iter().filter(|k| !k.is_empty()).cloned().collect();
    let deadline = a
        .ttft_deadline_ms
        .map(|ms| {
            seconds("--ttft-deadline-ms", ms / 1000.0).and_then(|d| match d.is_zero() {
                true => Err("--ttft-deadline-ms must be above 0".to_string()),
                false => Ok(d),
            })
        })
        .transpose()?;
    let kv_events = match &a.kv_events_config {
        Some(json) => Some(KvEventsConfig::parse(json).map_err(|e| e.to_string())?).filter(|c| c.publishes()),
        None => None,
    };
    if kv_events.is_some() && a.models.is_some() {
        return Err("--kv-events-config publishes one model's cache: it cannot be used with --models".into());
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
    let (state, what) = match &a.models {
        Some(file) => {
            let registry = crate::contexts::registry_from_file(file, a.model.device)?;
            let names = registry.names().join(", ");
            let reaper = registry.clone();
            // Unload models idle past their keep-alive.
            rt.spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    let r = reaper.clone();
                    let _ = tokio::task::spawn_blocking(move || r.unload_idle()).await;
                }
            });
            (
                AppState::serving_with(Models::Many(registry), keys, deadline),
                format!("models {names} (loaded on first request)"),
            )
        }
        None => {
            let running = start_publishing(&a.model, kv_events.is_some().then_some(events_tx))?;
            eprintln!("tandem serve: {}", running.describe);
            let what = format!("model `{}`", running.name);
            let model = ServedModel::new(
                running.name,
                running.engine,
                running.tokenizer,
                running.max_model_len,
                running.describe,
            )
            .with_root(running.root);
            (AppState::serving_with(Models::One(std::sync::Arc::new(model)), keys, deadline), what)
        }
    };
    rt.block_on(async {
        if let Some(cfg) = &kv_events {
            let p = tandem_kv_events::publish(cfg, BLOCK_SIZE, events_rx).await.map_err(|e| e.to_string())?;
            let replay = p.replay_endpoint.as_deref().map(|r| format!(", replay on {r}")).unwrap_or_default();
            println!("tandem serve: KV events on {} (topic {:?}){replay}", p.endpoint, cfg.topic);
        }
        let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
            .await
            .map_err(|e| format!("cannot listen on {}:{}: {e}", a.host, a.port))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        println!("tandem serve: {what} on http://{addr}/v1 (OpenAI-compatible)");
        let opts = tandem_server::ServeOptions {
            max_connections: a.max_connections,
            header_timeout: seconds("--header-timeout-secs", a.header_timeout_secs)?,
            shutdown_grace: seconds("--shutdown-grace-secs", a.shutdown_grace_secs)?,
        };
        tandem_server::run_with(listener, state, shutdown_signal(), opts).await.map_err(|e| e.to_string())
    })
}
