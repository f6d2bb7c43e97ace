//! [`BenchError`]: everything a benchmark can fail on before or after its requests (a request's
//! own failure is data in its result, not an error).

/// The bench crate's error.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("dataset: {0}")]
    Dataset(String),
    #[error("http: {0}")]
    Http(String),
    #[error("writing {path}: {problem}")]
    Output { path: String, problem: String },
    #[error("server: {0}")]
    Server(String),
}
