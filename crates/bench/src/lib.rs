//! tandem's benchmark harness (`tandem bench`): how users compare schedulers and engines side
//! by side, with `vllm bench serve`'s metric definitions so numbers compare across engines.
//!
//! - [`dataset`]: random, ShareGPT, shared-prefix datasets with a priority mix; arrival
//!   schedules (all at once, fixed, Poisson, gamma with burstiness). Deterministic by seed.
//! - [`target`]: any OpenAI-compatible HTTP endpoint (streaming completions), or a tandem
//!   engine in process.
//! - [`runner`]: one run — arrivals, max concurrency, progress bar, resource sampling.
//! - [`metrics`]: TTFT, ITL, TPOT, E2EL, throughputs, percentiles, goodput.
//! - [`system`]: NVML GPU figures when present, else the server's RSS and CPU; stream
//!   utilisation from tandem's `/metrics`.
//! - [`output`] and [`plot`]: CSV, JSON, the text report, seed 001's comparison table, SVG plots.

pub mod dataset;
mod error;
pub mod metrics;
pub mod output;
pub mod plot;
pub mod runner;
pub mod system;
pub mod target;

pub use dataset::{ArrivalSpec, BenchRequest, DatasetSpec, Prompt};
pub use error::BenchError;
pub use metrics::{ChunkClock, RequestResult, Slo, Stats, Summary};
pub use runner::{run, RunResult, RunSpec};
pub use system::{Probe, SystemStats};
pub use target::{EngineTarget, HttpTarget, Target};
