//! tandem's engine: drives the scheduler core and an executor.
//!
//! - [`Engine`]: the step loop on its own thread (TGI's router, vLLM's `EngineCore`), with a
//!   device-worker thread so that, for executors that allow it, the CPU work of step N+1
//!   (scheduling, applying results, streaming) overlaps the device work of step N. Requests go
//!   in through a bounded queue and come back as a [`RequestHandle`] — a stream of deltas whose
//!   drop aborts the request.
//! - [`simulate`]: the same scheduler driven by a virtual clock and the simulated device, for
//!   studying policies at scale (`tandem simulate`).
//! - [`ModelRegistry`]: several models on one device, each an engine in its own context, loaded
//!   on demand, evicted by QoS tier, their steps interleaved by compute share ([`FairDevice`]).
//! - [`workload`] generates request mixes; [`report`] turns timelines into vLLM-style metrics
//!   and seed 001's comparison table.
//!
//! This is the only crate with threads and channels.

mod drive;
mod engine;
mod error;
mod gate;
mod handle;
pub mod metrics;
mod process;
pub mod registry;
pub mod report;
pub mod sim;
pub mod sim_shared;
mod stats;
mod text_stream;
pub mod workload;

pub use drive::run_workload;
pub use engine::{Engine, EngineConfig};
pub use error::EngineError;
pub use gate::{FairDevice, GateHandle};
pub use handle::{RequestEvent, RequestHandle};
pub use metrics::{Histogram, RequestMetrics};
pub use process::ProcessUsage;
pub use registry::{ContextEvent, ContextStatus, ModelLease, ModelLoader, ModelRegistry, ServedModel};
pub use report::{Percentiles, RequestRecord, RunSummary};
pub use sim::{simulate, SimConfig, SimResult};
pub use sim_shared::{goodput, simulate_shared, SharedContext, Sharing};
pub use stats::EngineStats;
pub use text_stream::{StopMatcher, TextEvent, TextStream, TokenText};
pub use workload::{Arrival, LengthDist, WorkloadRequest, WorkloadSpec};
