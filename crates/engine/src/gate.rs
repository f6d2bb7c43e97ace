//! Compute partitions across engines: several models' engines share one device, and a
//! [`FairDevice`] interleaves their steps in proportion to their compute shares
//! (`tandem_core::contexts::FairShare`, stride scheduling), one step on the device at a time.
//! Each engine's device thread runs its step through its [`GateHandle`]; with one engine, or
//! without contention, a step never waits.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tandem_core::contexts::FairShare;

#[derive(Debug, Default)]
struct GateState {
    fair: FairShare,
    waiting: BTreeSet<String>,
    busy: bool,
    /// Device time used per context (for stats and tests).
    used: std::collections::BTreeMap<String, Duration>,
}

/// One device shared by several engines.
#[derive(Default)]
pub struct FairDevice {
    state: Mutex<GateState>,
    turn: Condvar,
}

impl fmt::Debug for FairDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FairDevice").field("state", &*self.lock()).finish()
    }
}

impl FairDevice {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A handle for context `name` with compute `share`.
    pub fn handle(self: &Arc<Self>, name: &str, share: f64) -> GateHandle {
        self.lock().fair.register(name, share);
        GateHandle { device: Arc::clone(self), name: name.to_string() }
    }

    /// Forgets `name` (its engine stopped).
    pub fn remove(&self, name: &str) {
        let mut s = self.lock();
        s.fair.remove(name);
        s.waiting.remove(name);
        drop(s);
        self.turn.notify_all();
    }

    /// Device time each context has used.
    pub fn used(&self) -> Vec<(String, Duration)> {
        self.lock().used.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    fn run<T>(&self, name: &str, step: impl FnOnce() -> T) -> T {
        let mut s = self.lock();
        s.waiting.insert(name.to_string());
        loop {
            if !s.busy {
                let st = &mut *s;
                if st.fair.pick(st.waiting.iter().map(String::as_str)) == Some(name) {
                    break;
                }
            }
            s = self.turn.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.waiting.remove(name);
        s.busy = true;
        drop(s);
        let started = Instant::now();
        let out = step();
        let took = started.elapsed();
        let mut s = self.lock();
        s.busy = false;
        s.fair.charge(name, took);
        *s.used.entry(name.to_string()).or_default() += took;
        drop(s);
        self.turn.notify_all();
        out
    }
}

/// An engine's way onto a shared device.
#[derive(Clone)]
pub struct GateHandle {
    device: Arc<FairDevice>,
    name: String,
}

impl fmt::Debug for GateHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GateHandle").field("name", &self.name).finish()
    }
}

impl GateHandle {
    /// Runs one step when it is this context's turn.
    pub fn run<T>(&self, step: impl FnOnce() -> T) -> T {
        self.device.run(&self.name, step)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// This context leaves the device (its engine stopped).
    pub fn leave(&self) {
        self.device.remove(&self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contending_engines_take_turns_one_step_at_a_time_by_share() {
        // Two threads run 1 ms steps for 300 ms of wall time with shares 3 : 1. On an idle
        // machine device time splits about 3 : 1; under load, time a thread spends descheduled
        // inside its step is charged too, which evens it out, so only the direction is checked:
        // steps never overlap, the larger share gets more, the smaller is not starved.
        // A wall-clock property: on a machine busy with other work (the rest of the suite) a
        // run can come out even, so it gets three tries; overlapping steps fail at once.
        let mut runs = Vec::new();
        for _ in 0..3 {
            let used = contend();
            let (big, small) = (used["big"].as_secs_f64(), used["small"].as_secs_f64());
            if big > small && small > 0.1 * (big + small) {
                return;
            }
            runs.push(used);
        }
        panic!("the larger share did not get more in three runs: {runs:?}");
    }

    /// Two threads contending as above for 300 ms; the device time each was charged.
    fn contend() -> std::collections::BTreeMap<String, Duration> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dev = FairDevice::new();
        let on_device = Arc::new(AtomicBool::new(false));
        let (big, small) = (dev.handle("big", 3.0), dev.handle("small", 1.0));
        let deadline = Instant::now() + Duration::from_millis(300);
        let spin = |h: GateHandle| {
            let on_device = on_device.clone();
            std::thread::spawn(move || {
                while Instant::now() < deadline {
                    h.run(|| {
                        assert!(!on_device.swap(true, Ordering::SeqCst), "two steps on the device at once");
                        let t = Instant::now();
                        while t.elapsed() < Duration::from_millis(1) {
                            std::hint::spin_loop();
                        }
                        on_device.store(false, Ordering::SeqCst);
                    });
                }
            })
        };
        let (a, b) = (spin(big), spin(small));
        a.join().unwrap();
        b.join().unwrap();
        dev.used().into_iter().collect()
    }

    #[test]
    fn a_lone_engine_never_waits() {
        let dev = FairDevice::new();
        let h = dev.handle("only", 0.1);
        let t = Instant::now();
        for _ in 0..1000 {
            h.run(|| ());
        }
        assert!(t.elapsed() < Duration::from_secs(1));
        dev.remove("only");
    }
}
