//! tandem's OpenAI-compatible HTTP server (axum + tokio) — the only crate that knows HTTP and
//! JSON (rust-analyzer's rule: parse at the boundary). `run(listener, state, shutdown)` serves
//! until `shutdown` resolves (mini-redis's shape), then stops accepting and lets in-flight
//! requests finish.
//!
//! Routes: `GET /health`, `GET /ready`, `GET /v1/models`, `POST /v1/completions`,
//! `POST /v1/chat/completions`. Errors are OpenAI-shaped JSON with the right status.

mod error;
mod generation;
mod openai;
mod routes;
mod state;

use std::future::Future;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;

pub use error::ApiError;
pub use state::AppState;

/// Largest request body accepted (413 beyond).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The application's routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(routes::health))
        .route("/ready", get(routes::ready))
        .route("/v1/models", get(routes::models))
        .route("/v1/completions", post(routes::completions))
        .route("/v1/chat/completions", post(routes::chat))
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
