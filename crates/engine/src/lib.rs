//! tandem's engine: drives the scheduler core and an executor.
//!
//! - [`Engine`]: the step loop on its own thread (TGI's router, vLLM's `EngineCore`), with a
//!   device-worker thread so that, for executors that allow it, the CPU work of step N+1
//!   (scheduling, applying results, streaming) overlaps the device work of step N. Requests go
//!   in through a bounded queue and come back as a [`RequestHandle`] — a stream of deltas whose
//!   drop aborts the request.
//! - [`ModelRegistry`]: several models on one device, each an engine in its own context, loaded
//!   on demand, evicted by QoS tier, their steps interleaved by compute share ([`FairDevice`]).
//!
//! Workloads, simulations on a virtual clock and reports live in `tandem_bench`: this crate
//! keeps only the engine.
//!
//! This is the only crate with threads and channels.

pub mod build;
mod control;
mod device;
mod engine;
mod error;
mod gate;
mod generation;
mod grammar;
mod handle;
pub mod metrics;
mod process;
pub mod registry;
mod stats;
mod step_loop;
mod text;

pub use build::{BuildError, DeviceKind, DeviceLoader, ModelSource, Running, SimSpec, Sizing, BLOCK_SIZE};
pub use engine::{Engine, EngineConfig, KvEventBatch, KvEventSender};
pub use error::EngineError;
pub use gate::{FairDevice, GateHandle};
pub use generation::{Generation, GenerationEvent, Structured};
pub use grammar::{Constraint, GrammarError, GrammarSpec, Grammars};
pub use handle::{RequestEvent, RequestHandle};
pub use metrics::{Histogram, RequestMetrics};
pub use process::ProcessUsage;
pub use registry::{ContextEvent, ContextStatus, ModelLease, ModelLoader, ModelRegistry, ServedModel};
pub use stats::EngineStats;
pub use text::{StopMatcher, TokenText};
