//! Queue policies: the order in which waiting requests are considered, as a time-invariant
//! [`Rank`] (smaller is served first).
//!
//! - [`Fcfs`]: rank = arrival time. Preempted requests keep their arrival, so they go back to
//!   the front (vLLM's behaviour).
//! - [`PriorityAging`]: rank = `-priority + aging · arrival` (seconds). A request's *effective*
//!   priority at time `now` is `priority + aging · (now - arrival)`; since every waiting request
//!   ages at the same rate, comparing effective priorities at any `now` gives the same order as
//!   comparing ranks, so the queue never needs re-sorting.
//!
//! **How aging bounds the wait.** A request `q` overtakes `r` only if
//! `-p_q + a·t_q < -p_r + a·t_r`, i.e. `t_q < t_r + (p_q - p_r)/a`. With priorities at most
//! `p_max`, nothing arriving later than `t_r + (p_max - p_r)/a` is ever ranked ahead of `r`: `r`
//! waits at most for the (finite) work that arrived before that instant. With `a = 0.1/s`, a
//! priority-0 request is overtaken by priority-10 requests for at most 100 s of arrivals. With
//! `a = 0` the policy is strict priority and low priorities can starve under sustained load.
//!
//! The same rank orders preemption victims (the worst-ranked running request goes first) and
//! decides whether a waiting request may preempt a running one (see `crate::scheduler`).

use std::cmp::Ordering;

use crate::error::Error;
use crate::types::Time;

/// Position in the waiting queue; smaller is served first. Totally ordered (NaN cannot occur:
/// policies are validated).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rank(pub f64);

impl Eq for Rank {}

impl PartialOrd for Rank {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Rank {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Orders waiting requests.
pub trait QueuePolicy: std::fmt::Debug + Send {
    /// The request's rank; must not depend on anything that changes while it waits.
    fn rank(&self, priority: i32, arrival: Time) -> Rank;
    /// May a waiting request preempt a running one of lower priority?
    fn preempts_for_priority(&self) -> bool;
    /// Stable name for logs and stats.
    fn name(&self) -> &'static str;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Fcfs;

impl QueuePolicy for Fcfs {
    fn rank(&self, _priority: i32, arrival: Time) -> Rank {
        Rank(arrival.as_secs_f64())
    }
    fn preempts_for_priority(&self) -> bool {
        false
    }
    fn name(&self) -> &'static str {
        "fcfs"
    }
}

/// Priority with aging: `aging_per_sec` priority levels gained per second of waiting.
#[derive(Debug, Clone, Copy)]
pub struct PriorityAging {
    pub aging_per_sec: f64,
}

impl QueuePolicy for PriorityAging {
    fn rank(&self, priority: i32, arrival: Time) -> Rank {
        Rank(-(priority as f64) + self.aging_per_sec * arrival.as_secs_f64())
    }
    fn preempts_for_priority(&self) -> bool {
        true
    }
    fn name(&self) -> &'static str {
        "priority"
    }
}

/// The queue policies a config can name.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum QueuePolicyKind {
    #[default]
    Fcfs,
    Priority {
        aging_per_sec: f64,
    },
}

impl QueuePolicyKind {
    pub fn build(self) -> Box<dyn QueuePolicy> {
        match self {
            QueuePolicyKind::Fcfs => Box::new(Fcfs),
            QueuePolicyKind::Priority { aging_per_sec } => Box::new(PriorityAging { aging_per_sec }),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        match self {
            QueuePolicyKind::Priority { aging_per_sec } if !(aging_per_sec.is_finite() && *aging_per_sec >= 0.0) => {
                Err(Error::InvalidConfig {
                    field: "queue.aging_per_sec",
                    problem: format!("must be finite and >= 0, got {aging_per_sec}"),
                })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn secs(s: u64) -> Time {
        Duration::from_secs(s)
    }

    #[test]
    fn fcfs_ignores_priority() {
        assert!(Fcfs.rank(0, secs(1)) < Fcfs.rank(100, secs(2)));
    }

    #[test]
    fn aging_lets_an_old_low_priority_request_overtake() {
        let p = PriorityAging { aging_per_sec: 0.5 };
        // r: priority 0 at t=0 → rank 0.0. q: priority 10 at t=10 → rank -10 + 5 = -5 < 0: q first.
        assert!(p.rank(10, secs(10)) < p.rank(0, secs(0)));
        // q': priority 10 at t=30 → rank -10 + 15 = 5 > 0: r first. Cut-off: t_r + 10/0.5 = 20 s.
        assert!(p.rank(0, secs(0)) < p.rank(10, secs(30)));
    }

    #[test]
    fn zero_aging_is_strict_priority() {
        let p = PriorityAging { aging_per_sec: 0.0 };
        assert!(p.rank(1, secs(1_000_000)) < p.rank(0, secs(0)));
    }
}
