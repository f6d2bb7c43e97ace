//! The accept loop: how connections are taken, bounded, timed out and drained — what a server
//! in front of paying users needs beyond the routes (nginx's `limit_conn`, hyper's header read
//! timeout, Kubernetes' termination grace period).
//!
//! - **Connection limit**: at most [`ServeOptions::max_connections`] open at once; one more is
//!   answered with an OpenAI-shaped 503 and closed, instead of queueing unseen in the kernel.
//! - **Slow and idle clients**: a request head must arrive whole within
//!   [`ServeOptions::header_timeout`] of the connection opening or of its last response (hyper's
//!   header read timeout, which also closes idle keep-alive connections); a body within the
//!   same time (`body_timeout`, a 408).
//! - **Drain** (SIGTERM): `/ready` answers 503 at once and so does every new `/v1` request,
//!   while requests in flight (streams included) run to their end; when none is left, or after
//!   [`ServeOptions::shutdown_grace`], the server stops. Requests still running then are dropped,
//!   which aborts them and frees their KV blocks.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::state::AppState;

/// How the server takes connections.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeOptions {
    /// Open connections at most; one more gets a 503.
    pub max_connections: usize,
    /// A request head (and a body) must arrive within this long; also the idle keep-alive limit.
    pub header_timeout: Duration,
    /// After the shutdown signal, how long requests in flight may run before they are dropped.
    pub shutdown_grace: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self { max_connections: 1024, header_timeout: Duration::from_secs(30), shutdown_grace: Duration::from_secs(30) }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains (module doc).
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    opts: ServeOptions,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let grace_over = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let idle_check = async {
            match deadline {
                Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    tokio::spawn(refuse(stream));
                    continue;
                };
                let service = TowerToHyperService::new(router.clone());
                let mut drain = drain_rx.clone();
                let header_timeout = opts.header_timeout;
                conns.spawn(async move {
                    let _permit = permit;
                    // A connection opened during the drain serves one request (a 503, or
                    // /ready's) and closes; the others are told to close once idle.
                    let draining = *drain.borrow();
                    let mut http = hyper::server::conn::http1::Builder::new();
                    http.timer(TokioTimer::new()).header_read_timeout(header_timeout).keep_alive(!draining);
                    let conn = http.serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => return,
                        _ = drain.wait_for(|d| *d), if !draining => conn.as_mut().graceful_shutdown(),
                    }
                    let _ = conn.await;
                });
            }
            _ = &mut shutdown, if deadline.is_none() => {
                state.begin_drain();
                tracing::info!(grace_s = opts.shutdown_grace.as_secs_f64(), "draining: /ready is 503, new requests 503");
                deadline = Some(tokio::time::Instant::now() + opts.shutdown_grace);
                let _ = drain_tx.send(true);
            }
            _ = idle_check => {
                if state.in_flight() == 0 {
                    break;
                }
            }
            _ = grace_over => {
                tracing::warn!(in_flight = state.in_flight(), "shutdown grace over: dropping the requests still running");
                break;
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    // Finished requests' connections close on their own (told to shut down gracefully); give
    // them a moment to flush, then drop what is left (aborting its requests).
    let _ = tokio::time::timeout(Duration::from_secs(1), async { while conns.join_next().await.is_some() {} }).await;
    conns.shutdown().await;
    Ok(())
}

/// Answers a connection over the limit with a 503 and closes it.
async fn refuse(mut stream: tokio::net::TcpStream) {
    let body = crate::ApiError::Overloaded.body().to_string();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}
