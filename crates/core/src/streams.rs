//! The stream planner: splits one step's scheduled sequences into micro-batches, one per
//! execution stream (seed 000's `ParallelStreamScheduler`, done right).
//!
//! The seed schedules each stream with the *full* token budget and then merges the two lists
//! back into one batch. Here the step is scheduled once, under one budget, and only then
//! partitioned: the micro-batches together never feed more than `max_num_batched_tokens`, and
//! the CPU executor runs them at the same time, each on its own lane of cores (the tensor
//! executor still runs a step fused; the simulator models the overlap). That is synchronised
//! streams (`synchronize`, the default); without synchronisation each stream gets steps of its
//! own as it frees up (`scheduler/stream_step.rs`), and the assignment below decides what a
//! free stream takes there.
//!
//! Assignment strategies:
//! - `RoundRobin`: sequence `i` goes to stream `i mod N`.
//! - `Smart`: prefill (context) and decode (generation) sequences apart — prefill on the first
//!   half of the streams, decode on the second — so a compute-bound prefill micro-batch overlaps
//!   a memory-bound decode one (NanoFlow's insight). With `context_generation_fusion`, or when
//!   only one kind is present, each kind is spread round-robin over all streams (the seed's
//!   behaviour).
//! - `Balanced`: longest-processing-time-first on [`estimated_cost`]: each sequence, heaviest
//!   first, goes to the least-loaded stream (within 4/3 of optimal, Graham 1969).
//!
//! Below `min_requests_for_parallel` sequences the step runs as one micro-batch.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;
use crate::output::ScheduledSeq;

/// How sequences are assigned to streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StreamAssignment {
    RoundRobin,
    #[default]
    Smart,
    Balanced,
}

impl FromStr for StreamAssignment {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "round_robin" | "round-robin" | "rr" => Ok(StreamAssignment::RoundRobin),
            "smart" => Ok(StreamAssignment::Smart),
            "balanced" => Ok(StreamAssignment::Balanced),
            _ => Err(Error::InvalidConfig {
                field: "streams.assignment",
                problem: format!("unknown assignment `{s}`: expected round_robin, smart or balanced"),
            }),
        }
    }
}

impl fmt::Display for StreamAssignment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StreamAssignment::RoundRobin => "round_robin",
            StreamAssignment::Smart => "smart",
            StreamAssignment::Balanced => "balanced",
        })
    }
}

/// Parallel-stream settings (seed 000's `ParallelExecutionConfig`, generalized to N streams).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamConfig {
    /// Execution streams; 1 runs every step as one batch.
    pub num_streams: usize,
    pub assignment: StreamAssignment,
    /// Fewer scheduled sequences than this run as one micro-batch.
    pub min_requests_for_parallel: usize,
    /// Let prefill and decode share a stream under `Smart`.
    pub context_generation_fusion: bool,
    /// Relative priority of the stream kinds (CUDA's sign: negative is higher). Below zero the
    /// decode streams of `Smart` are favoured, above zero the prefill streams; on the CPU the
    /// other kind's lanes run at a lower OS priority (niceness `|priority|`). 0: all equal.
    pub stream_priority: i32,
    /// Synchronised: a step's micro-batches start together and the step ends when every
    /// stream has finished. Off: each stream is given its own steps as soon as it is free
    /// (`Scheduler::schedule_stream`), without waiting for the others.
    pub synchronize: bool,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            num_streams: 1,
            assignment: StreamAssignment::Smart,
            min_requests_for_parallel: 2,
            context_generation_fusion: false,
            stream_priority: 0,
            synchronize: true,
        }
    }
}

impl StreamConfig {
    /// Two streams with the given assignment, other settings default.
    pub fn parallel(assignment: StreamAssignment) -> Self {
        Self { num_streams: 2, assignment, ..Self::default() }
    }

    pub fn validate(&self) -> Result<(), Error> {
        if self.num_streams == 0 || self.num_streams > 16 {
            return Err(Error::InvalidConfig {
                field: "streams.num_streams",
                problem: format!("must be in 1..=16, got {}", self.num_streams),
            });
        }
        if self.min_requests_for_parallel == 0 {
            return Err(Error::InvalidConfig {
                field: "streams.min_requests_for_parallel",
                problem: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}

/// Relative cost of a sequence's work in a step: its fed tokens (GEMM work) plus its context
/// divided by 32 (attention reads of the KV cache; a decode token over 1,024 cached tokens costs
/// about as much as a 33-token prefill). An estimate for balancing, not a timing.
pub fn estimated_cost(seq: &ScheduledSeq) -> f64 {
    cost_of(seq.tokens.len(), seq.start_pos)
}

/// [`estimated_cost`] of feeding `fed` tokens from position `start_pos`.
pub fn cost_of(fed: usize, start_pos: usize) -> f64 {
    fed as f64 + (start_pos + fed) as f64 / 32.0
}

/// Assigns each of `seqs` to a stream; returns the stream index per sequence (all 0 when the
/// step runs serially). Deterministic.
pub fn assign_streams(seqs: &[ScheduledSeq], cfg: &StreamConfig) -> Vec<usize> {
    let n = cfg.num_streams.max(1);
    if n == 1 || seqs.len() < cfg.min_requests_for_parallel.max(2) {
        return vec![0; seqs.len()];
    }
    match cfg.assignment {
        StreamAssignment::RoundRobin => (0..seqs.len()).map(|i| i % n).collect(),
        StreamAssignment::Smart => {
            let prefill: Vec<bool> = seqs.iter().map(|s| s.tokens.len() > 1).collect();
            let num_prefill = prefill.iter().filter(|&&p| p).count();
            let mixed = num_prefill > 0 && num_prefill < seqs.len();
            let (mut next_p, mut next_d) = (0usize, 0usize);
            let split = n.div_ceil(2);
            prefill
                .iter()
                .map(|&p| {
                    if mixed && !cfg.context_generation_fusion {
                        // prefill on streams [0, split), decode on [split, n)
                        if p {
                            next_p += 1;
                            (next_p - 1) % split
                        } else {
                            next_d += 1;
                            split + (next_d - 1) % (n - split)
                        }
                    } else if p {
                        next_p += 1;
                        (next_p - 1) % n
                    } else {
                        next_d += 1;
                        (next_d - 1) % n
                    }
                })
                .collect()
        }
        StreamAssignment::Balanced => {
            let mut order: Vec<usize> = (0..seqs.len()).collect();
            order.sort_by(|&a, &b| estimated_cost(&seqs[b]).total_cmp(&estimated_cost(&seqs[a])).then(a.cmp(&b)));
            let mut load = vec![0.0f64; n];
            let mut out = vec![0; seqs.len()];
            for i in order {
                let s = (0..n).min_by(|&a, &b| load[a].total_cmp(&load[b]).then(a.cmp(&b))).unwrap_or(0);
                load[s] += estimated_cost(&seqs[i]);
                out[i] = s;
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::RequestId;

    fn seq(id: u64, fed: usize, start: usize) -> ScheduledSeq {
        ScheduledSeq::new(RequestId(id), 0..fed, start, 0..0, true)
    }

    #[test]
    fn round_robin_alternates() {
        let seqs: Vec<_> = (0..5).map(|i| seq(i, 1, 10)).collect();
        assert_eq!(assign_streams(&seqs, &StreamConfig::parallel(StreamAssignment::RoundRobin)), vec![0, 1, 0, 1, 0]);
    }

    #[test]
    fn smart_separates_prefill_from_decode_unless_fused() {
        // C1 G1 C2 G2 G3
        let seqs = vec![seq(1, 100, 0), seq(2, 1, 50), seq(3, 80, 0), seq(4, 1, 60), seq(5, 1, 70)];
        let cfg = StreamConfig::parallel(StreamAssignment::Smart);
        assert_eq!(assign_streams(&seqs, &cfg), vec![0, 1, 0, 1, 1]);
        // Fused (the seed): C → 0,1; G → 0,1,0.
        let fused = StreamConfig { context_generation_fusion: true, ..cfg };
        assert_eq!(assign_streams(&seqs, &fused), vec![0, 0, 1, 1, 0]);
        // Decode only: spread.
        let decode: Vec<_> = (0..4).map(|i| seq(i, 1, 10)).collect();
        assert_eq!(assign_streams(&decode, &cfg), vec![0, 1, 0, 1]);
    }

    #[test]
    fn balanced_is_longest_processing_time_first() {
        // Costs: fed + (start + fed)/32 → 5 tokens at 27 → 5 + 1 = 6; 3 at 29 → 4; 4 at 28 → 5; 2 at 30 → 3.
        let seqs = vec![seq(1, 5, 27), seq(2, 3, 29), seq(3, 4, 28), seq(4, 2, 30)];
        // LPT: 6 → s0 (6); 5 → s1 (5); 4 → s1 (9); 3 → s0 (9).
        assert_eq!(assign_streams(&seqs, &StreamConfig::parallel(StreamAssignment::Balanced)), vec![0, 1, 1, 0]);
    }

    #[test]
    fn small_steps_stay_serial() {
        let seqs = vec![seq(1, 5, 0), seq(2, 1, 9)];
        let cfg = StreamConfig { min_requests_for_parallel: 3, ..StreamConfig::parallel(StreamAssignment::RoundRobin) };
        assert_eq!(assign_streams(&seqs, &cfg), vec![0, 0]);
    }

    #[test]
    fn invalid_settings_are_rejected() {
        assert!(StreamConfig { num_streams: 0, ..Default::default() }.validate().is_err());
        assert!(StreamConfig { min_requests_for_parallel: 0, ..Default::default() }.validate().is_err());
        assert!("sideways".parse::<StreamAssignment>().is_err());
    }
}
