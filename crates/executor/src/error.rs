//! [`ExecError`], this crate's error, and [`ErrorSource`]: the underlying error (candle's,
//! the tokenizer's, the template engine's, the file system's) or a message of our own, kept as
//! the error's source so a caller can walk the chain.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// What caused an [`ExecError`]: a library's error, or tandem's own message. Cheap to clone
/// (shared), compared by message.
#[derive(Clone)]
pub struct ErrorSource(Arc<dyn Error + Send + Sync>);

impl From<Box<dyn Error + Send + Sync>> for ErrorSource {
    /// Also `tokenizers::Error`.
    fn from(e: Box<dyn Error + Send + Sync>) -> Self {
        ErrorSource(Arc::from(e))
    }
}

/// The errors this crate meets, and messages of its own, as sources.
macro_rules! sources {
    ($($t:ty),*) => {$(
        impl From<$t> for ErrorSource {
            fn from(e: $t) -> Self {
                ErrorSource(Arc::from(Box::<dyn Error + Send + Sync>::from(e)))
            }
        }
    )*};
}

sources!(String, &str, std::io::Error, candle_core::Error, minijinja::Error, serde_json::Error);

impl fmt::Display for ErrorSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for ErrorSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Error for ErrorSource {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for ErrorSource {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.to_string() == other.0.to_string()
    }
}

impl Eq for ErrorSource {}

/// Errors of this crate: loading a model, tokenizing, and running steps. A step error makes
/// the engine fail that step's requests and go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    /// The device failed (out of memory, a kernel error, a lost device), or a tensor operation
    /// was given what it cannot take.
    #[error("device error: {0}")]
    Device(#[source] ErrorSource),
    /// The scheduler output refers to something the executor cannot honour.
    #[error("invalid step: {0}")]
    InvalidStep(String),
    /// A model file is missing, unreadable, truncated, malformed or of an unsupported kind.
    #[error("model file {path}: {problem}")]
    ModelFile {
        path: String,
        #[source]
        problem: ErrorSource,
    },
    /// The tokenizer could not be built or failed on input.
    #[error("tokenizer: {0}")]
    Tokenizer(#[source] ErrorSource),
    /// The chat template could not be parsed or rendered.
    #[error("chat template: {0}")]
    Template(#[source] ErrorSource),
    /// A weights format name that is not one of `auto`, `f32`, `q8`.
    #[error("unknown weight format `{0}` (expected auto, f32 or q8)")]
    UnknownWeightFormat(String),
}

impl From<candle_core::Error> for ExecError {
    fn from(e: candle_core::Error) -> Self {
        ExecError::Device(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_underlying_error_is_kept_as_the_source() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let e = ExecError::ModelFile { path: "m.gguf".into(), problem: io.into() };
        assert_eq!(e.to_string(), "model file m.gguf: gone");
        assert_eq!(e.source().map(|s| s.to_string()).as_deref(), Some("gone"));
        // Messages of our own compare by text.
        assert_eq!(ExecError::Device("x".into()), ExecError::Device(String::from("x").into()));
    }
}
