//! [`Workload`]: one run's requests with their send times — a dataset's requests under an
//! arrival schedule. What the benchmark runner sends and the simulators replay.

use crate::arrival::Arrival;
use crate::dataset::{BenchRequest, DatasetSpec, PromptSet};
use crate::BenchError;
use tandem_executor::text::TextTokenizer;

/// Requests and when to send them (seconds from the start, non-decreasing).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Workload {
    pub requests: Vec<BenchRequest>,
    pub times: Vec<f64>,
    /// Requests/s of the arrival schedule (`None`: all at once), for reports.
    pub rate: Option<f64>,
}

/// How to build a workload.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadSpec {
    pub dataset: DatasetSpec,
    pub requests: usize,
    /// Priorities uniform in `0..priority_levels` (1: everyone priority 0).
    pub priority_levels: u32,
    pub arrival: Arrival,
}

impl WorkloadSpec {
    /// The workload of run `set`: arrival times from its shape seed, so runs of one shape
    /// arrive alike.
    pub fn generate(&self, set: PromptSet, tokenizer: Option<&TextTokenizer>) -> Result<Workload, BenchError> {
        let requests = self.dataset.generate(self.requests, self.priority_levels, set, tokenizer)?;
        // A background (the mixed dataset's short requests) is sent at once, ahead of the rest.
        let background = self.dataset.background().min(requests.len());
        let mut times = vec![0.0; background];
        times.extend(self.arrival.times(requests.len() - background, set.shape_seed)?);
        Ok(Workload { requests, times, rate: self.arrival.rate() })
    }
}

impl Workload {
    pub fn len(&self) -> usize {
        self.requests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// `(send time, request)` in order.
    pub fn iter(&self) -> impl Iterator<Item = (f64, &BenchRequest)> {
        self.times.iter().copied().zip(&self.requests)
    }
}
