//! [`AppState`]: what every handler shares.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tandem_engine::Engine;
use tandem_executor::text::TextTokenizer;

/// The server's shared state.
pub struct AppState {
    pub engine: Engine,
    pub tokenizer: TextTokenizer,
    /// The name clients use in `model`.
    pub model_name: String,
    /// Longest prompt + output accepted.
    pub max_model_len: usize,
    pub next_id: AtomicU64,
    /// When set, `/v1/*` requires `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
}

impl AppState {
    pub fn new(engine: Engine, tokenizer: TextTokenizer, model_name: String, max_model_len: usize) -> Arc<Self> {
        Arc::new(Self { engine, tokenizer, model_name, max_model_len, next_id: AtomicU64::new(1), api_key: None })
    }

    /// The same, requiring `api_key` on `/v1/*`.
    pub fn with_api_key(
        engine: Engine,
        tokenizer: TextTokenizer,
        model_name: String,
        max_model_len: usize,
        api_key: String,
    ) -> Arc<Self> {
        Arc::new(Self {
            engine,
            tokenizer,
            model_name,
            max_model_len,
            next_id: AtomicU64::new(1),
            api_key: Some(api_key),
        })
    }
}
