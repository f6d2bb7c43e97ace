//! tandem's OpenAI-compatible HTTP server (axum + tokio) — the only crate that knows HTTP and
//! JSON (rust-analyzer's rule: parse at the boundary). `run(listener, state, shutdown)` serves
//! until `shutdown` resolves (mini-redis's shape), then stops accepting and lets in-flight
//! requests finish.
//!
//! Routes: `GET /health`, `GET /ready`, `GET /metrics` (Prometheus), `GET /v1/models`,
//! `GET /v1/contexts`, `POST /v1/completions`, `POST /v1/chat/completions`, `GET /v1/stats`,
//! `POST /v1/batching`, and vLLM's `POST /tokenize` and `POST /detokenize`. With an API key,
//! `/v1/*`, `/tokenize` and `/detokenize` need `Authorization: Bearer <key>` (401 otherwise);
//! `/health`, `/ready` and `/metrics` stay open (as in vLLM). Errors are OpenAI-shaped JSON
//! with the right status.

mod error;
mod generation;
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
pub use state::{AppState, Models};

/// Largest request body accepted (413 beyond).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The application's routes.
pub fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/v1/models", get(routes::models))
        .route("/v1/contexts", get(routes::contexts))
        .route("/v1/completions", post(routes::completions))
        .route("/v1/chat/completions", post(routes::chat))
        .route("/v1/stats", get(routes::stats))
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
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Serves on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}
