//! Randomized multi-model memory accounting: contexts of every tier register, load (with
//! evictions), run and finish requests, unload and expire in random order. After every
//! operation the pool's rules hold (never over the device, reservations kept, borrowing only
//! from unreserved memory), and no request is lost: every started request is finished, still
//! running, or was preempted by an eviction and requeued.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tandem_core::contexts::{ContextError, ContextSpec, DeviceMemory, QosTier, TierRule};

const TOTAL: u64 = 1_000;

fn random_spec(rng: &mut ChaCha8Rng, i: usize) -> ContextSpec {
    let tier = [QosTier::Guaranteed, QosTier::Burstable, QosTier::BestEffort][rng.random_range(0..3)];
    let weight_bytes = rng.random_range(10..150);
    let min_kv_bytes = rng.random_range(1..50);
    let max_bytes = weight_bytes + min_kv_bytes + rng.random_range(0..300);
    ContextSpec {
        name: format!("m{i}"),
        tier,
        max_bytes,
        base_bytes: rng.random_range(weight_bytes + min_kv_bytes..=max_bytes),
        weight_bytes,
        min_kv_bytes,
        share: rng.random_range(0.1..4.0),
        keep_alive: Duration::from_secs(rng.random_range(1..30)),
    }
}

#[test]
fn memory_accounting_holds_under_random_operations() {
    let (mut all_evictions, mut all_requeued, mut all_expired) = (0u64, 0usize, 0u64);
    for seed in 0..200u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut m = DeviceMemory::new(TOTAL);
        let mut names: Vec<String> = Vec::new();
        // Our own count of requests running per context, and totals.
        let mut running: BTreeMap<String, usize> = BTreeMap::new();
        let (mut started, mut finished, mut requeued) = (0usize, 0usize, 0usize);
        let mut now = Duration::ZERO;
        for step in 0..400 {
            now += Duration::from_millis(rng.random_range(0..2_000));
            match rng.random_range(0..10) {
                0 if names.len() < 8 => {
                    let spec = random_spec(&mut rng, names.len());
                    if m.register(spec.clone()).is_ok() {
                        names.push(spec.name);
                    }
                }
                1..=3 if !names.is_empty() => {
                    let n = names[rng.random_range(0..names.len())].clone();
                    match m.plan_load(&n, &TierRule) {
                        Ok(plan) => {
                            let before = m.views();
                            m.apply_load(&plan, now)
                                .unwrap_or_else(|e| panic!("seed {seed} step {step}: {e}\n{plan:?}\n{before:#?}"));
                            for v in &plan.evict {
                                let was = before.iter().find(|c| &c.spec.name == v).unwrap();
                                assert_ne!(was.spec.tier, QosTier::Guaranteed, "seed {seed}: evicted Guaranteed {v}");
                                // Its running requests are preempted and requeued, not lost.
                                requeued += running.remove(v).unwrap_or(0);
                            }
                        }
                        Err(ContextError::OutOfMemory { .. } | ContextError::Denied { .. }) => {}
                        Err(e) => panic!("seed {seed} step {step}: {e}"),
                    }
                }
                4..=5 if !names.is_empty() => {
                    let n = names[rng.random_range(0..names.len())].clone();
                    if m.begin_request(&n, now).is_ok() {
                        *running.entry(n).or_default() += 1;
                        started += 1;
                    }
                }
                6..=7 => {
                    if let Some((n, c)) = running.iter_mut().find(|(_, c)| **c > 0) {
                        *c -= 1;
                        m.end_request(n, now);
                        finished += 1;
                    }
                }
                8 => {
                    for n in m.unload_expired(now) {
                        assert_eq!(running.get(&n).copied().unwrap_or(0), 0, "seed {seed}: expired a busy {n}");
                    }
                }
                _ => {}
            }
            m.check_invariants().unwrap_or_else(|e| panic!("seed {seed} step {step}: {e}"));
            // The pool's running counts are ours.
            for v in m.views() {
                assert_eq!(v.running, running.get(&v.spec.name).copied().unwrap_or(0), "seed {seed} step {step}");
            }
            let still: usize = running.values().sum();
            assert_eq!(started, finished + requeued + still, "seed {seed} step {step}: a request was lost");
        }
        all_evictions += m.stats().evictions;
        all_expired += m.stats().keep_alive_unloads;
        all_requeued += requeued;
    }
    // The runs exercised what they check.
    assert!(
        all_evictions > 100 && all_requeued > 10 && all_expired > 100,
        "{all_evictions} {all_requeued} {all_expired}"
    );
}
