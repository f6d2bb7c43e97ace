//! The device's memory shared by contexts: reservations, loads, LRU eviction by tier,
//! keep-alive unloads, memory-pressure hooks (seed 003's `MemoryPool` with quotas and LRU
//! eviction; Ollama's load/evict/keep-alive rules, ordered by QoS tier).
//!
//! Accounting rule: a loaded context uses `bytes` (weights + KV pool, fixed at load). Guaranteed
//! and Burstable contexts never use memory reserved by another context: a Burstable context
//! borrows beyond its base only from unreserved memory. BestEffort contexts may use any free
//! memory, reserved or not, and are evicted when its owner loads. So a Guaranteed load always
//! succeeds once the BestEffort contexts in its way are gone.

use std::collections::BTreeMap;
use std::time::Duration;

use super::admission::{Admission, AdmissionEvaluator};
use super::spec::{ContextError, ContextSpec, QosTier};

/// Called when a context cannot get all it asks for (seed 003's `on_memory_pressure`).
pub trait PressureHook: Send + Sync {
    /// `context` wants `requested` bytes; `available` can be had (after the evictions its tier
    /// permits). `true` loads it with `available`; `false` refuses the load.
    fn on_pressure(&self, context: &ContextSpec, requested: u64, available: u64) -> bool;
}

/// The default hook, the tiers' own rule: load with less if that is at least the context's
/// minimum (Guaranteed always gets its full reservation, so it never gets here).
#[derive(Debug, Clone, Copy, Default)]
pub struct TierRule;

impl PressureHook for TierRule {
    fn on_pressure(&self, context: &ContextSpec, _requested: u64, available: u64) -> bool {
        available >= context.min_bytes()
    }
}

/// What loading a context takes: its memory, and whom to evict first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadPlan {
    pub name: String,
    /// Bytes it gets (weights + KV pool).
    pub bytes: u64,
    /// Contexts to unload first, in order.
    pub evict: Vec<String>,
    /// Whether memory was short (it gets less than its max, or others are evicted).
    pub under_pressure: bool,
}

/// Counters and totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryStats {
    pub total_bytes: u64,
    pub allocated_bytes: u64,
    pub reserved_bytes: u64,
    pub free_bytes: u64,
    pub loaded_contexts: usize,
    pub loads: u64,
    pub evictions: u64,
    pub keep_alive_unloads: u64,
    pub pressure_events: u64,
    pub denied_loads: u64,
}

/// A context as the pool sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContextView {
    pub spec: ContextSpec,
    /// Bytes held when loaded.
    pub loaded_bytes: Option<u64>,
    pub running: usize,
    pub last_used: Duration,
    pub priority: u8,
}

#[derive(Debug, Clone)]
struct Entry {
    spec: ContextSpec,
    loaded: Option<u64>,
    running: usize,
    last_used: Duration,
}

/// The device's memory, shared by contexts.
#[derive(Debug, Clone)]
pub struct DeviceMemory {
    evaluator: AdmissionEvaluator,
    entries: BTreeMap<String, Entry>,
    stats: MemoryStats,
}

impl DeviceMemory {
    pub fn new(total_bytes: u64) -> Self {
        Self {
            evaluator: AdmissionEvaluator::new(total_bytes),
            entries: BTreeMap::new(),
            stats: MemoryStats { total_bytes, ..MemoryStats::default() },
        }
    }

    pub fn total_bytes(&self) -> u64 {
        self.evaluator.total_bytes
    }

    /// Bytes other contexts have claimed for good: their reservations, plus what loaded
    /// Burstable contexts borrowed beyond theirs (unreserved memory, lent until they unload).
    fn committed_by_others(&self, name: &str) -> u64 {
        self.entries
            .values()
            .filter(|e| e.spec.name != name)
            .map(|e| {
                let borrowed = match (e.spec.tier, e.loaded) {
                    (QosTier::BestEffort, _) | (_, None) => 0,
                    (_, Some(b)) => b.saturating_sub(e.spec.reserved_bytes()),
                };
                e.spec.reserved_bytes() + borrowed
            })
            .sum()
    }

    /// Registers a context if admission admits it: its reservation must fit in what other
    /// contexts have neither reserved nor borrowed.
    pub fn register(&mut self, spec: ContextSpec) -> Result<Admission, ContextError> {
        if self.entries.contains_key(&spec.name) {
            return Err(ContextError::Duplicate(spec.name));
        }
        let admission = self.evaluator.evaluate(&spec, self.committed_by_others(&spec.name));
        if !admission.admitted {
            return Err(ContextError::Rejected { name: spec.name, reason: admission.reason });
        }
        let entry = Entry { spec, loaded: None, running: 0, last_used: Duration::ZERO };
        self.entries.insert(entry.spec.name.clone(), entry);
        Ok(admission)
    }

    /// Forgets an unloaded context.
    pub fn deregister(&mut self, name: &str) -> Result<(), ContextError> {
        match self.entries.get(name) {
            None => Err(ContextError::Unknown(name.into())),
            Some(e) if e.loaded.is_some() => {
                Err(ContextError::InvalidSpec { name: name.into(), problem: "is loaded; unload it first".into() })
            }
            Some(_) => {
                self.entries.remove(name);
                Ok(())
            }
        }
    }

    fn entry(&self, name: &str) -> Result<&Entry, ContextError> {
        self.entries.get(name).ok_or_else(|| ContextError::Unknown(name.into()))
    }

    fn entry_mut(&mut self, name: &str) -> Result<&mut Entry, ContextError> {
        self.entries.get_mut(name).ok_or_else(|| ContextError::Unknown(name.into()))
    }

    /// Loaded contexts: name → bytes held.
    fn loaded_bytes(&self) -> BTreeMap<&str, u64> {
        self.entries.values().filter_map(|e| e.loaded.map(|b| (e.spec.name.as_str(), b))).collect()
    }

    /// Bytes `who` could get if exactly the contexts in `loaded` (name → bytes) held memory.
    fn usable(&self, who: &ContextSpec, loaded: &BTreeMap<&str, u64>) -> u64 {
        let used: u64 = loaded.iter().filter(|(n, _)| **n != who.name).map(|(_, b)| b).sum();
        let kept_for_others: u64 = if who.tier == QosTier::BestEffort {
            0
        } else {
            self.entries
                .values()
                .filter(|e| e.spec.name != who.name && !loaded.contains_key(e.spec.name.as_str()))
                .map(|e| e.spec.reserved_bytes())
                .sum()
        };
        self.total_bytes().saturating_sub(used + kept_for_others)
    }

    /// Whether `who` may evict `victim`: a lower tier (a running one only if BestEffort, whose
    /// tier allows preemption), or an idle context of the same non-Guaranteed tier (LRU, as
    /// Ollama). Never a Guaranteed context.
    fn may_evict(who: &ContextSpec, victim: &Entry) -> bool {
        match victim.spec.tier {
            QosTier::Guaranteed => false,
            t if t < who.tier => victim.running == 0 || t == QosTier::BestEffort,
            t => t == who.tier && victim.running == 0,
        }
    }

    /// Plans loading `name`: the bytes it gets and the contexts to evict first (BestEffort
    /// before Burstable, idle before busy, least recently used first), consulting `hook` when
    /// it cannot get its max. An error names what is short.
    pub fn plan_load(&mut self, name: &str, hook: &dyn PressureHook) -> Result<LoadPlan, ContextError> {
        let entry = self.entry(name)?;
        let spec = entry.spec.clone();
        if let Some(bytes) = entry.loaded {
            return Ok(LoadPlan { name: name.into(), bytes, evict: Vec::new(), under_pressure: false });
        }
        let mut loaded = self.loaded_bytes();
        let mut victims: Vec<&Entry> =
            self.entries.values().filter(|e| e.loaded.is_some() && Self::may_evict(&spec, e)).collect();
        victims.sort_by_key(|e| (e.spec.tier, e.running > 0, e.last_used, e.spec.name.clone()));
        let mut evict = Vec::new();
        for v in victims {
            if self.usable(&spec, &loaded) >= spec.min_bytes() {
                break;
            }
            loaded.remove(v.spec.name.as_str());
            evict.push(v.spec.name.clone());
        }
        let available = self.usable(&spec, &loaded);
        if available < spec.min_bytes() {
            self.stats.denied_loads += 1;
            return Err(ContextError::OutOfMemory { name: name.into(), needed: spec.min_bytes(), available });
        }
        let bytes = available.min(spec.max_bytes);
        let under_pressure = bytes < spec.max_bytes || !evict.is_empty();
        if under_pressure {
            self.stats.pressure_events += 1;
            if !hook.on_pressure(&spec, spec.max_bytes, bytes) {
                self.stats.denied_loads += 1;
                return Err(ContextError::Denied { name: name.into(), requested: spec.max_bytes, available: bytes });
            }
        }
        Ok(LoadPlan { name: name.into(), bytes, evict, under_pressure })
    }

    /// Carries out `plan` (evictions, then the load) at `now`. Fails, changing nothing, if the
    /// plan no longer fits (things changed since it was made).
    pub fn apply_load(&mut self, plan: &LoadPlan, now: Duration) -> Result<(), ContextError> {
        let entry = self.entry(&plan.name)?;
        if entry.loaded.is_some() {
            // Already loaded (a plan for a loaded context evicts nobody): just a use.
            let e = self.entry_mut(&plan.name)?;
            e.last_used = e.last_used.max(now);
            return Ok(());
        }
        let spec = entry.spec.clone();
        let mut loaded = self.loaded_bytes();
        for v in &plan.evict {
            loaded.remove(v.as_str());
        }
        let available = self.usable(&spec, &loaded);
        if plan.bytes > available || plan.bytes < spec.min_bytes() || plan.bytes > spec.max_bytes {
            return Err(ContextError::OutOfMemory { name: plan.name.clone(), needed: plan.bytes, available });
        }
        for v in &plan.evict {
            let e = self.entry_mut(v)?;
            // A busy victim's requests are preempted (the registry requeues them).
            e.running = 0;
            if e.loaded.take().is_some() {
                self.stats.evictions += 1;
            }
        }
        let e = self.entry_mut(&plan.name)?;
        e.loaded = Some(plan.bytes);
        e.last_used = now;
        self.stats.loads += 1;
        Ok(())
    }

    /// Unloads `name`; returns the bytes freed.
    pub fn unload(&mut self, name: &str) -> Result<u64, ContextError> {
        let e = self.entry_mut(name)?;
        e.running = 0;
        e.loaded.take().ok_or_else(|| ContextError::NotLoaded(name.into()))
    }

    /// A request starts on `name` (which must be loaded) at `now`.
    pub fn begin_request(&mut self, name: &str, now: Duration) -> Result<(), ContextError> {
        let e = self.entry_mut(name)?;
        if e.loaded.is_none() {
            return Err(ContextError::NotLoaded(name.into()));
        }
        e.running += 1;
        e.last_used = e.last_used.max(now);
        Ok(())
    }

    /// A request on `name` ended at `now`.
    pub fn end_request(&mut self, name: &str, now: Duration) {
        if let Some(e) = self.entries.get_mut(name) {
            e.running = e.running.saturating_sub(1);
            e.last_used = e.last_used.max(now);
        }
    }

    /// Loaded contexts idle for at least their `keep_alive` at `now`, to unload.
    pub fn expired(&self, now: Duration) -> Vec<String> {
        self.entries
            .values()
            .filter(|e| e.loaded.is_some() && e.running == 0 && now.saturating_sub(e.last_used) >= e.spec.keep_alive)
            .map(|e| e.spec.name.clone())
            .collect()
    }

    /// Unloads every expired context; returns their names.
    pub fn unload_expired(&mut self, now: Duration) -> Vec<String> {
        let names = self.expired(now);
        for n in &names {
            if self.unload(n).is_ok() {
                self.stats.keep_alive_unloads += 1;
            }
        }
        names
    }

    pub fn view(&self, name: &str) -> Option<ContextView> {
        self.entries.get(name).map(|e| ContextView {
            spec: e.spec.clone(),
            loaded_bytes: e.loaded,
            running: e.running,
            last_used: e.last_used,
            priority: e.spec.tier.priority(),
        })
    }

    /// Every context, by name.
    pub fn views(&self) -> Vec<ContextView> {
        self.entries.keys().filter_map(|n| self.view(n)).collect()
    }

    pub fn stats(&self) -> MemoryStats {
        let allocated: u64 = self.entries.values().filter_map(|e| e.loaded).sum();
        let reserved: u64 = self.entries.values().map(|e| e.spec.reserved_bytes()).sum();
        MemoryStats {
            allocated_bytes: allocated,
            reserved_bytes: reserved,
            free_bytes: self.total_bytes().saturating_sub(allocated),
            loaded_contexts: self.entries.values().filter(|e| e.loaded.is_some()).count(),
            ..self.stats
        }
    }

    /// The accounting rules; `Err` names the first one broken.
    pub fn check_invariants(&self) -> Result<(), crate::InvariantViolation> {
        let total = self.total_bytes();
        let s = self.stats();
        if s.allocated_bytes > total {
            return Err(crate::InvariantViolation(format!("allocated {} > total {total}", s.allocated_bytes)));
        }
        if s.reserved_bytes > total {
            return Err(crate::InvariantViolation(format!("reserved {} > total {total}", s.reserved_bytes)));
        }
        let mut borrowed = 0;
        for e in self.entries.values() {
            if let Some(b) = e.loaded {
                if b > e.spec.max_bytes || b < e.spec.min_bytes() {
                    return Err(crate::InvariantViolation(format!(
                        "`{}` holds {b}, outside [{}, {}]",
                        e.spec.name,
                        e.spec.min_bytes(),
                        e.spec.max_bytes
                    )));
                }
                if e.spec.tier != QosTier::BestEffort {
                    borrowed += b.saturating_sub(e.spec.reserved_bytes());
                }
            } else if e.running > 0 {
                return Err(crate::InvariantViolation(format!(
                    "`{}` is unloaded with {} running",
                    e.spec.name, e.running
                )));
            }
        }
        if s.reserved_bytes + borrowed > total {
            return Err(crate::InvariantViolation(format!(
                "reservations {} + borrowed {borrowed} > total {total}",
                s.reserved_bytes
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contexts::admission::tests::spec;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn load(m: &mut DeviceMemory, name: &str, now: u64) -> Result<LoadPlan, ContextError> {
        let plan = m.plan_load(name, &TierRule)?;
        m.apply_load(&plan, secs(now))?;
        m.check_invariants().unwrap();
        Ok(plan)
    }

    #[test]
    fn best_effort_uses_spare_memory_and_is_evicted_when_a_guaranteed_context_needs_it() {
        // Device 10. g: Guaranteed 6 (reserved, unloaded); e: BestEffort up to 8.
        let mut m = DeviceMemory::new(10);
        m.register(spec("g", QosTier::Guaranteed, 6, 0)).unwrap();
        m.register(spec("e", QosTier::BestEffort, 8, 0)).unwrap();
        // e may use g's unused reservation: all 8 of its max fit in 10 free.
        assert_eq!(load(&mut m, "e", 1).unwrap().bytes, 8);
        // g needs its 6: 10 − 8 = 2 free, so e is evicted first → 10 free, g gets 6.
        let plan = load(&mut m, "g", 2).unwrap();
        assert_eq!((plan.bytes, plan.evict.clone(), plan.under_pressure), (6, vec!["e".to_string()], true));
        assert_eq!(m.stats().evictions, 1);
        // e again: only 10 − 6 = 4 spare now; it loads with 4 (≥ its minimum 3) and evicts nobody.
        let plan = load(&mut m, "e", 3).unwrap();
        assert_eq!((plan.bytes, plan.evict.len()), (4, 0));
        assert_eq!(m.stats().allocated_bytes, 10);
    }

    #[test]
    fn burstable_borrows_only_unreserved_memory() {
        // Device 10: g Guaranteed 4 (unloaded), b Burstable base 3 max 9.
        let mut m = DeviceMemory::new(10);
        m.register(spec("g", QosTier::Guaranteed, 4, 0)).unwrap();
        m.register(spec("b", QosTier::Burstable, 9, 3)).unwrap();
        // b may use 10 − g's 4 kept aside = 6 (its base 3 + 3 borrowed), not 9.
        assert_eq!(load(&mut m, "b", 1).unwrap().bytes, 6);
        // So g still gets its 4 without evicting anyone: 10 − 6 = 4.
        let plan = load(&mut m, "g", 2).unwrap();
        assert_eq!((plan.bytes, plan.evict.len()), (4, 0));
    }

    #[test]
    fn eviction_order_is_best_effort_then_burstable_idle_lru_and_never_guaranteed() {
        // Device 12: g1 Guaranteed 4 (loaded), b Burstable 3..3, e1/e2 BestEffort 3 each, then a
        // second Guaranteed g2 of 4 that is registered while the others hold memory.
        let mut m = DeviceMemory::new(12);
        m.register(spec("g1", QosTier::Guaranteed, 4, 0)).unwrap();
        m.register(spec("b", QosTier::Burstable, 3, 3)).unwrap();
        m.register(spec("e1", QosTier::BestEffort, 3, 0)).unwrap();
        m.register(spec("e2", QosTier::BestEffort, 3, 0)).unwrap();
        load(&mut m, "g1", 1).unwrap();
        load(&mut m, "e2", 2).unwrap(); // e2 used less recently than e1
        load(&mut m, "e1", 3).unwrap();
        assert_eq!(m.stats().free_bytes, 12 - 4 - 3 - 3);
        // b (Burstable, base 3) needs 3: 12 − 10 used = 2, so one BestEffort goes, the least
        // recently used: e2.
        assert_eq!(load(&mut m, "b", 4).unwrap().evict, vec!["e2"]);
        // g2 (Guaranteed 3) arrives while e1 is busy: 12 − 10 = 2 free < 3. The only BestEffort
        // left is busy; its tier allows preemption, so it goes before the idle Burstable b.
        m.begin_request("e1", secs(5)).unwrap();
        m.register(spec("g2", QosTier::Guaranteed, 3, 0)).unwrap();
        assert_eq!(load(&mut m, "g2", 6).unwrap().evict, vec!["e1"]);
        // A BestEffort may evict neither a Burstable nor a Guaranteed: e2 (min 3) finds
        // 12 − (4 + 3 + 3) = 2.
        assert!(matches!(m.plan_load("e2", &TierRule), Err(ContextError::OutOfMemory { needed: 3, available: 2, .. })));
        assert_eq!(m.stats().evictions, 2);
    }

    #[test]
    fn same_tier_evicts_only_idle_contexts_least_recently_used_first() {
        // Device 6, three BestEffort contexts of 3: two fit.
        let mut m = DeviceMemory::new(6);
        for n in ["e1", "e2", "e3"] {
            m.register(spec(n, QosTier::BestEffort, 3, 0)).unwrap();
        }
        load(&mut m, "e1", 1).unwrap();
        load(&mut m, "e2", 2).unwrap();
        assert_eq!(load(&mut m, "e3", 3).unwrap().evict, vec!["e1"]); // e1 least recently used
        m.begin_request("e2", secs(4)).unwrap();
        // e1 back: e2 is busy (same tier: not evictable), e3 idle goes.
        assert_eq!(load(&mut m, "e1", 5).unwrap().evict, vec!["e3"]);
        m.begin_request("e1", secs(6)).unwrap();
        assert!(matches!(m.plan_load("e3", &TierRule), Err(ContextError::OutOfMemory { .. })));
    }

    #[test]
    fn a_pressure_hook_can_refuse_a_smaller_load() {
        struct Never;
        impl PressureHook for Never {
            fn on_pressure(&self, _: &ContextSpec, _: u64, _: u64) -> bool {
                false
            }
        }
        let mut m = DeviceMemory::new(10);
        m.register(spec("g", QosTier::Guaranteed, 7, 0)).unwrap();
        m.register(spec("e", QosTier::BestEffort, 6, 0)).unwrap();
        load(&mut m, "g", 0).unwrap();
        // e wants 6, 3 are free: pressure; the hook says no.
        assert!(matches!(m.plan_load("e", &Never), Err(ContextError::Denied { requested: 6, available: 3, .. })));
        assert_eq!(m.stats().pressure_events, 1);
        // The tier rule allows it (3 ≥ minimum 3).
        assert_eq!(m.plan_load("e", &TierRule).unwrap().bytes, 3);
    }

    #[test]
    fn idle_contexts_unload_after_keep_alive_busy_ones_never() {
        let mut m = DeviceMemory::new(10);
        m.register(spec("a", QosTier::Burstable, 4, 3)).unwrap();
        m.register(spec("b", QosTier::BestEffort, 4, 0)).unwrap();
        load(&mut m, "a", 0).unwrap();
        load(&mut m, "b", 0).unwrap();
        m.begin_request("b", secs(1)).unwrap();
        // keep_alive 10 s: at 10 s a (last used at 0) expires; b is busy.
        assert_eq!(m.unload_expired(secs(10)), vec!["a"]);
        m.end_request("b", secs(12));
        assert!(m.expired(secs(21)).is_empty()); // 21 − 12 = 9 < 10
        assert_eq!(m.unload_expired(secs(22)), vec!["b"]);
        assert_eq!(m.stats().keep_alive_unloads, 2);
        assert_eq!(m.stats().allocated_bytes, 0);
    }

    #[test]
    fn registration_is_admission_controlled() {
        let mut m = DeviceMemory::new(10);
        m.register(spec("g", QosTier::Guaranteed, 7, 0)).unwrap();
        assert!(matches!(m.register(spec("g", QosTier::Guaranteed, 1, 0)), Err(ContextError::Duplicate(_))));
        // 7 + 4 reserved > 10.
        assert!(matches!(m.register(spec("b", QosTier::Burstable, 8, 4)), Err(ContextError::Rejected { .. })));
        assert_eq!(m.register(spec("b", QosTier::Burstable, 8, 3)).unwrap().priority, 1);
        assert!(m.deregister("nope").is_err());
        assert!(m.deregister("b").is_ok());
    }
}
