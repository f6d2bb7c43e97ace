//! Compute partitions: weighted fair interleaving of contexts' steps by stride scheduling
//! (Waldspurger's stride scheduling; Linux CFS's virtual runtime with a floor for sleepers).

use std::collections::BTreeMap;
use std::time::Duration;

/// Picks whose step runs next so that, while contexts contend, each gets device time in
/// proportion to its share.
#[derive(Debug, Clone, Default)]
pub struct FairShare {
    /// Name → (share, virtual time = device seconds used / share).
    entries: BTreeMap<String, (f64, f64)>,
    /// The virtual time of the last pick: a context returning from idle starts no lower, so it
    /// cannot monopolise the device to "catch up".
    floor: f64,
}

impl FairShare {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or re-shares) a context; a new one starts at the current floor.
    pub fn register(&mut self, name: &str, share: f64) {
        let share = if share > 0.0 && share.is_finite() { share } else { 1.0 };
        let floor = self.floor;
        self.entries.entry(name.to_string()).and_modify(|e| e.0 = share).or_insert((share, floor));
    }

    pub fn remove(&mut self, name: &str) {
        self.entries.remove(name);
    }

    /// The ready context with the least virtual time (ties: the first name); unknown names are
    /// ignored.
    pub fn pick<'a>(&mut self, ready: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
        let floor = self.floor;
        let mut best: Option<(&'a str, f64)> = None;
        for name in ready {
            let Some(entry) = self.entries.get_mut(name) else { continue };
            entry.1 = entry.1.max(floor);
            if best.is_none_or(|(n, v)| entry.1 < v || (entry.1 == v && name < n)) {
                best = Some((name, entry.1));
            }
        }
        let (name, vt) = best?;
        self.floor = vt;
        Some(name)
    }

    /// Charges `cost` of device time to `name`.
    pub fn charge(&mut self, name: &str, cost: Duration) {
        if let Some(e) = self.entries.get_mut(name) {
            e.1 += cost.as_secs_f64() / e.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(f: &mut FairShare, ready: &[&str], steps: usize) -> Vec<String> {
        (0..steps)
            .map(|_| {
                let n = f.pick(ready.iter().copied()).unwrap().to_string();
                f.charge(&n, Duration::from_millis(10));
                n
            })
            .collect()
    }

    #[test]
    fn contending_contexts_get_time_in_proportion_to_their_shares() {
        let mut f = FairShare::new();
        f.register("big", 3.0);
        f.register("small", 1.0);
        let picks = run(&mut f, &["big", "small"], 400);
        // 3 : 1 of 400 equal-cost steps = 300 : 100.
        let small = picks.iter().filter(|n| *n == "small").count();
        assert!((99..=101).contains(&small), "small got {small}");
        // Never starved: every window of 5 consecutive steps holds a "small" step (3 : 1 gives
        // one in 4; ties and float rounding can add a fourth "big").
        for w in picks.windows(5) {
            assert!(w.iter().any(|n| n == "small"), "{w:?}");
        }
    }

    #[test]
    fn a_context_back_from_idle_does_not_monopolise() {
        let mut f = FairShare::new();
        f.register("a", 1.0);
        f.register("b", 1.0);
        // Only a has work for 100 steps (1 s of device time).
        run(&mut f, &["a"], 100);
        // Then both: b's virtual time is lifted to the floor, so they alternate at once instead
        // of b running 100 steps in a row.
        let picks = run(&mut f, &["a", "b"], 10);
        let b = picks.iter().filter(|n| *n == "b").count();
        assert!((4..=6).contains(&b), "{picks:?}");
    }

    #[test]
    fn nothing_ready_picks_nothing() {
        let mut f = FairShare::new();
        f.register("a", 1.0);
        assert_eq!(f.pick([]), None);
        assert_eq!(f.pick(["unknown"]), None);
    }
}
