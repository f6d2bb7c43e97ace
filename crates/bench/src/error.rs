//! [`BenchError`]: everything a benchmark or simulation can fail on before or after its
//! requests (a request's own failure is data in its record, not an error).

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
    /// The scheduler refused a configuration or a step's answer.
    #[error("scheduler: {0}")]
    Scheduler(#[from] tandem_core::Error),
    /// The simulated device failed a step.
    #[error("simulated device: {0}")]
    Device(#[from] tandem_executor::ExecError),
    /// A simulation stopped making progress.
    #[error("simulation: {0}")]
    Simulation(String),
}
