//! tandem's OpenAI-compatible HTTP server (axum + tokio) — the only crate that knows HTTP and
//! JSON (rust-analyzer's rule: parse at the boundary). `run(listener, state, shutdown)` serves
//! until `shutdown` resolves (mini-redis's shape), then drains: `/ready` and new requests 503,
//! requests in flight finish within a grace period (`listener.rs`: also the connection limit
//! and the header/body timeouts).
//!
//! Routes: `GET /health`, `GET /ready`, `GET /metrics` (Prometheus), `GET /v1/models`,
//! `GET /v1/contexts`, `POST /v1/completions`, `POST /v1/chat/completions`, `GET /v1/stats`,
//! `POST /v1/batching`, and vLLM's `POST /tokenize` and `POST /detokenize`. With an API key,
//! `/v1/*`, `/tokenize` and `/detokenize` need `Authorization: Bearer <key>` (401 otherwise);
//! `/health`, `/ready` and `/metrics` stay open (as in vLLM). Errors are OpenAI-shaped JSON
//! with the right status.

mod error;
mod generation;
mod listener;
mod metrics;
mod openai;
mod routes;
mod state;
mod structured;
mod tokenize;
mod tools;

use std::future::Future;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;

pub use error::ApiError;
pub use listener::ServeOptions;
pub use state::{AppState, Models};

/// Largest request body accepted (413 beyond).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The application's routes, with the default body timeout.
pub fn router(state: Arc<AppState>) -> Router {
    router_with(state, ServeOptions::default().header_timeout)
}

/// The routes, a body having to arrive whole within `body_timeout` (408 otherwise).
pub fn router_with(state: Arc<AppState>, body_timeout: std::time::Duration) -> Router {
    let v1 = Router::new()
        .route("/v1/models", get(routes::models))
        .route("/v1/contexts", get(routes::contexts))
        .route("/v1/completions", post(routes::completions))
        .route("/v1/chat/completions", post(routes::chat))
        .route("/v1/stats", get(routes::stats))
        .route("/v1/admission", get(routes::admission))
        .route("/model_info", get(routes::model_info))
        .route("/get_model_info", get(routes::model_info))
        .route("/server_info", get(routes::server_info))
        .route("/get_server_info", get(routes::server_info))
        .route("/v1/batching", post(routes::set_batching))
        .route("/v1/streams", post(routes::set_streams))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), routes::auth));
    Router::new()
        .route("/health", get(routes::health))
        .route("/ready", get(routes::ready))
        .route("/metrics", get(routes::metrics))
        .merge(v1)
        .fallback(routes::not_found)
        .layer(axum::middleware::from_fn_with_state((state.clone(), body_timeout), routes::gate))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Serves on `listener` with the default [`ServeOptions`] until `shutdown` resolves, then
/// drains: requests in flight finish (within the grace period), new ones get 503.
pub async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    run_with(listener, state, shutdown, ServeOptions::default()).await
}

/// [`run`] with explicit connection limit, timeouts and grace period.
pub async fn run_with(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    opts: ServeOptions,
) -> std::io::Result<()> {
    let app = router_with(state.clone(), opts.header_timeout);
    listener::serve(listener, state, app, shutdown, opts).await
}
