//! Multi-model contexts on one device (seed 003): each model runs in its own context with a
//! memory budget and a QoS tier, and this module decides — deterministically, with time passed
//! in — who may load, how much memory each gets, whom to evict, and whose step runs next.
//!
//! - [`QosTier`] and [`ContextSpec`]: Guaranteed (its whole budget reserved, never evicted),
//!   Burstable (a base reserved, may borrow up to its max from spare memory), BestEffort (spare
//!   memory only, evicted first) — Kubernetes' QoS classes applied to device memory.
//! - [`AdmissionEvaluator`]: registering a context is admitted or rejected with a reason and a
//!   priority; reservations never add up to more than the device (seed 003's
//!   `QosPolicyEvaluator`).
//! - [`DeviceMemory`]: the device's memory pool with per-context quotas: plans loads (how many
//!   bytes a context gets, which contexts to evict first: BestEffort → Burstable, idle before
//!   busy, least recently used first, never Guaranteed), tracks usage and running requests,
//!   unloads idle contexts after their `keep_alive` (Ollama's rule), counts evictions, and asks
//!   a [`PressureHook`] when memory is short.
//! - [`FairShare`]: compute partitions — when several contexts have work, steps are interleaved
//!   in proportion to their shares by stride scheduling (each context's virtual time advances by
//!   its step's cost divided by its share; the lowest runs next), so a small share is slowed,
//!   never starved.
//!
//! Nothing here loads a model or touches a device: the engine's model registry does the I/O and
//! reports back.

mod admission;
mod fair;
mod memory;
mod spec;

pub use admission::{Admission, AdmissionEvaluator};
pub use fair::FairShare;
pub use memory::{ContextView, DeviceMemory, LoadPlan, MemoryStats, PressureHook, TierRule};
pub use spec::{ContextError, ContextSpec, QosTier};
