//! tandem's benchmark and simulation harness (`tandem bench`, `tandem simulate`,
//! `tandem simulate-contexts`): how users compare schedulers and engines side by side, with
//! `vllm bench serve`'s metric definitions so numbers compare across engines. One stack for
//! measured and modelled runs: one arrival model, one request builder, one per-request record,
//! one summary, one comparison table.
//!
//! - [`arrival`]: when requests are sent (all at once, fixed, Poisson, gamma with burstiness).
//! - [`dataset`]: what is sent (random, modelled length distributions, ShareGPT, shared-prefix,
//!   with a priority mix); cold by default — each run its own prompts ([`PromptSet`]).
//! - [`workload`]: a dataset under an arrival schedule — one run's requests and send times.
//! - [`target`]: any OpenAI-compatible HTTP endpoint (streaming completions), or a tandem
//!   engine in process.
//! - [`runner`]: one measured run — arrivals, max concurrency, progress bar, resource sampling.
//! - [`sim`]: the same workloads on the simulated device, on a virtual clock (modelled figures),
//!   alone or several models sharing one device.
//! - [`metrics`]: the per-request record and the run summary (TTFT, ITL, TPOT, E2EL,
//!   throughputs, percentiles, goodput).
//! - [`system`]: NVML GPU figures when present, else the server's RSS and CPU; stream
//!   utilisation and the run's prefix-cache hit rate from the engine or tandem's `/metrics`.
//! - [`server`]: a `tandem serve` child per configuration of a `--compare-file`.
//! - [`output`] and [`plot`]: CSV, JSON, the text report, seed 001's comparison table, SVG plots.

pub mod arrival;
pub mod dataset;
mod error;
pub mod metrics;
pub mod output;
pub mod plot;
pub mod runner;
pub mod server;
pub mod sim;
pub mod system;
pub mod target;
pub mod workload;

pub use arrival::Arrival;
pub use dataset::{BenchRequest, DatasetSpec, LengthDist, Prompt, PromptSet};
pub use error::BenchError;
pub use metrics::{ChunkClock, RequestRecord, Slo, Stats, Summary};
pub use runner::{run, RunResult, RunSpec};
pub use sim::{simulate, simulate_shared, SharedContext, Sharing, SimConfig, SimResult};
pub use system::{Probe, SystemStats};
pub use target::{EngineTarget, HttpTarget, Target};
pub use workload::{Workload, WorkloadSpec};
