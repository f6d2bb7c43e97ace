//! [`AppState`]: what every handler shares — the models served (one engine, or a
//! [`ModelRegistry`] of several contexts routed by the request's `model`), request ids, the API
//! key.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tandem_engine::{Engine, ModelLease, ModelRegistry, ServedModel};
use tandem_executor::text::TextTokenizer;

use crate::error::ApiError;

/// The models behind the server.
pub enum Models {
    /// One model, always loaded.
    One(Arc<ServedModel>),
    /// Several models sharing the device, loaded on demand (multi-model contexts).
    Many(Arc<ModelRegistry>),
}

impl Models {
    /// A lease on the model a request names (`None`: the first one), loading it if needed.
    pub async fn acquire(&self, name: Option<&str>) -> Result<ModelLease, ApiError> {
        match self {
            Models::One(m) => served_as(m, name).map(|()| ModelLease::unmanaged(Arc::clone(m))),
            Models::Many(r) => {
                let name = match name {
                    // A loaded model's root names it too (vLLM clients send it to /tokenize).
                    Some(n) => r
                        .loaded_models()
                        .into_iter()
                        .find(|m| m.answers_to(n))
                        .map_or(n.to_string(), |m| m.name.clone()),
                    None => r.names().into_iter().next().ok_or(ApiError::Unavailable)?,
                };
                let r = Arc::clone(r);
                // Loading takes seconds and blocks: off the async workers.
                tokio::task::spawn_blocking(move || r.acquire(&name))
                    .await
                    .map_err(|e| ApiError::Internal(format!("model loader panicked: {e}")))?
                    .map_err(ApiError::from)
            }
        }
    }

    /// Counts a request resubmitted after its model was evicted under it.
    pub fn note_requeue(&self) {
        if let Models::Many(r) = self {
            r.note_requeue();
        }
    }

    /// Every model's name, root (its name while unloaded) and, when loaded, longest context.
    pub fn list(&self) -> Vec<(String, String, Option<usize>)> {
        match self {
            Models::One(m) => vec![(m.name.clone(), m.root.clone(), Some(m.max_model_len))],
            Models::Many(r) => r
                .names()
                .into_iter()
                .map(|n| match r.loaded(&n) {
                    Some(m) => (n, m.root.clone(), Some(m.max_model_len)),
                    None => (n.clone(), n, None),
                })
                .collect(),
        }
    }

    /// The default model's loaded instance (see [`Models::for_control`]).
    pub fn primary(&self) -> Option<Arc<ServedModel>> {
        self.for_control(None).ok().and_then(|(_, m)| m)
    }

    /// The model `/v1/stats` and `/v1/batching` act on: the one `name` names (404 when no such
    /// model is configured), by default the only one or the first loaded one (else the first
    /// configured one); with its loaded instance, if any. Loads nothing.
    pub fn for_control(&self, name: Option<&str>) -> Result<(String, Option<Arc<ServedModel>>), ApiError> {
        match self {
            Models::One(m) => served_as(m, name).map(|()| (m.name.clone(), Some(Arc::clone(m)))),
            Models::Many(r) => {
                let names = r.names();
                let name = match name {
                    Some(n) if names.iter().any(|c| c == n) => n.to_string(),
                    Some(n) => {
                        return Err(ApiError::NotFound(format!(
                            "model `{n}` does not exist; configured: {}",
                            names.join(", ")
                        )))
                    }
                    None => match r.loaded_models().into_iter().next() {
                        Some(m) => m.name.clone(),
                        None => names.into_iter().next().ok_or(ApiError::Unavailable)?,
                    },
                };
                let loaded = r.loaded(&name);
                Ok((name, loaded))
            }
        }
    }
}

/// A 404 unless `name` is absent or the one model's name.
fn served_as(m: &ServedModel, name: Option<&str>) -> Result<(), ApiError> {
    match name {
        Some(n) if !m.answers_to(n) => {
            Err(ApiError::NotFound(format!("model `{n}` does not exist; this server serves `{}`", m.name)))
        }
        _ => Ok(()),
    }
}

/// The tenant a request authenticated as (the index of its API key), put in the request's
/// extensions by [`crate::routes::auth`]. Its requests' default `cache_salt` is the key's own,
/// so tenants never share prefix-cache blocks unless they send the same `cache_salt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tenant(pub usize);

impl Tenant {
    /// The salt for this tenant's requests that send none (never equal to a sent one: sent
    /// salts are namespaced apart in [`crate::openai::salt`]).
    pub fn default_salt(self) -> String {
        format!("key:{}", self.0)
    }
}

/// The server's shared state.
pub struct AppState {
    pub models: Models,
    /// Engine request ids, one per choice.
    next_id: AtomicU64,
    /// Response ids: this server's start time, then a count (unique across concurrent
    /// requests and restarts).
    boot: u64,
    responses: AtomicU64,
    /// When not empty, `/v1/*` requires `Authorization: Bearer <key>` with one of these keys;
    /// each key is a tenant whose requests' prefix-cache blocks are their own by default.
    pub api_keys: Vec<String>,
    /// The time-to-first-token deadline of requests that set none (`None`: no admission by
    /// predicted wait unless a request asks).
    pub ttft_deadline: Option<std::time::Duration>,
    /// Set by the shutdown signal: `/ready` and new `/v1` requests answer 503.
    draining: AtomicBool,
    /// Choices running (a streamed one until its stream ends or is dropped).
    in_flight: Arc<AtomicUsize>,
}

/// Counts one running choice while it lives.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AppState {
    /// One model on one engine.
    pub fn new(engine: Engine, tokenizer: TextTokenizer, model_name: String, max_model_len: usize) -> Arc<Self> {
        Self::serving(
            Models::One(Arc::new(ServedModel::new(model_name, engine, tokenizer, max_model_len, String::new()))),
            Vec::new(),
        )
    }

    /// The same, requiring one of `api_keys` on `/v1/*`.
    pub fn with_api_key(
        engine: Engine,
        tokenizer: TextTokenizer,
        model_name: String,
        max_model_len: usize,
        api_keys: Vec<String>,
    ) -> Arc<Self> {
        let model = ServedModel::new(model_name, engine, tokenizer, max_model_len, String::new());
        Self::serving(Models::One(Arc::new(model)), api_keys)
    }

    /// Any set of models.
    pub fn serving(models: Models, api_keys: Vec<String>) -> Arc<Self> {
        Self::serving_with(models, api_keys, None)
    }

    /// [`Self::serving`], with a default time-to-first-token deadline for requests that set
    /// none (admission by predicted wait).
    pub fn serving_with(
        models: Models,
        api_keys: Vec<String>,
        ttft_deadline: Option<std::time::Duration>,
    ) -> Arc<Self> {
        let boot =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
        Arc::new(Self {
            models,
            next_id: AtomicU64::new(1),
            boot,
            responses: AtomicU64::new(1),
            api_keys,
            ttft_deadline,
            draining: AtomicBool::new(false),
            in_flight: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Starts the drain: from now `/ready` and new `/v1` requests answer 503.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Choices running now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a choice as running until the guard drops.
    pub fn track(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(&self.in_flight))
    }

    /// A fresh engine request id.
    pub fn next_request_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A fresh response id, `PREFIX-…` (`cmpl`, `chatcmpl`), never given twice.
    pub fn response_id(&self, prefix: &str) -> String {
        format!("{prefix}-{:x}{:08x}", self.boot, self.responses.fetch_add(1, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_ids_are_unique_under_concurrency() {
        let registry = tandem_engine::ModelRegistry::new(
            1 << 20,
            Vec::new(),
            Box::new(NoModels),
            Box::new(tandem_core::contexts::TierRule),
        )
        .unwrap();
        let s = AppState::serving(Models::Many(registry), Vec::new());
        let ids: Vec<String> = std::thread::scope(|scope| {
            let workers: Vec<_> =
                (0..8).map(|_| scope.spawn(|| (0..500).map(|_| s.response_id("cmpl")).collect::<Vec<_>>())).collect();
            workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
        });
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        // 8 threads × 500 ids, all different.
        assert_eq!(unique.len(), 4000);
        assert!(ids.iter().all(|i| i.starts_with("cmpl-")));
    }

    struct NoModels;

    impl tandem_engine::ModelLoader for NoModels {
        fn load(
            &self,
            spec: &tandem_core::contexts::ContextSpec,
            _: u64,
            _: tandem_engine::GateHandle,
        ) -> Result<ServedModel, tandem_engine::BuildError> {
            Err(tandem_engine::BuildError::NoSource(spec.name.clone()))
        }
    }
}
