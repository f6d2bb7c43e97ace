//! The simulated device: a roofline cost model of one step, for benchmarking scheduling policies
//! at scale on a CPU-only machine.
//!
//! [`ModelShape`] describes a transformer, [`DeviceProfile`] a device, [`cost`] turns a scheduler
//! step into device time, and [`SimExecutor`] answers steps with deterministic tokens, either
//! sleeping for the modelled time (real-time clock, for serving) or not (virtual clock, for
//! `tandem simulate`).

mod cost;
mod device;
mod executor;
mod shape;

pub use cost::{step_cost, MicroBatchCost, StepCost};
pub use device::DeviceProfile;
pub use executor::{ClockMode, SimExecutor};
pub use shape::ModelShape;

/// A scheduled sequence feeding `fed` tokens from `start`, for this crate's tests.
#[cfg(test)]
pub(crate) fn test_seq(id: u64, fed: usize, start: usize, sample: bool) -> tandem_core::ScheduledSeq {
    tandem_core::ScheduledSeq::new(tandem_core::RequestId(id), 0..fed, start, 0..0, sample)
}
