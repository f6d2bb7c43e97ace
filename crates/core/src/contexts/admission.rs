//! Admission: may this context be created on this device? (Seed 003's `QosPolicyEvaluator`.)

use super::spec::{ContextSpec, QosTier};

/// The answer for one context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub admitted: bool,
    /// Why (for a rejection), or what was reserved (for an admission).
    pub reason: String,
    /// Scheduling priority: Guaranteed 2, Burstable 1, BestEffort 0.
    pub priority: u8,
}

/// Admits contexts so that reservations never exceed the device's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionEvaluator {
    pub total_bytes: u64,
}

impl AdmissionEvaluator {
    pub fn new(total_bytes: u64) -> Self {
        Self { total_bytes }
    }

    /// Whether `spec` fits next to contexts that already hold `committed_by_others` bytes for
    /// good (reservations, and memory lent to Burstable contexts).
    pub fn evaluate(&self, spec: &ContextSpec, committed_by_others: u64) -> Admission {
        let priority = spec.tier.priority();
        let reject = |reason: String| Admission { admitted: false, reason, priority };
        if let Err(e) = spec.validate() {
            return reject(e.to_string());
        }
        if spec.min_bytes() > self.total_bytes {
            return reject(format!("needs at least {} bytes, the device has {}", spec.min_bytes(), self.total_bytes));
        }
        let reserve = spec.reserved_bytes();
        let free = self.total_bytes.saturating_sub(committed_by_others);
        if reserve > free {
            return reject(format!(
                "{} reservation of {reserve} bytes exceeds the {free} bytes not yet reserved or lent",
                spec.tier
            ));
        }
        let reason = match spec.tier {
            QosTier::BestEffort => "admitted without a reservation (spare memory only)".to_string(),
            tier => format!("admitted, {reserve} bytes reserved ({tier})"),
        };
        Admission { admitted: true, reason, priority }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;

    pub(crate) fn spec(name: &str, tier: QosTier, max: u64, base: u64) -> ContextSpec {
        ContextSpec {
            name: name.into(),
            tier,
            max_bytes: max,
            base_bytes: base,
            weight_bytes: 2,
            min_kv_bytes: 1,
            share: 1.0,
            keep_alive: Duration::from_secs(10),
        }
    }

    #[test]
    fn reservations_never_exceed_the_device() {
        let e = AdmissionEvaluator::new(10);
        // Guaranteed reserves its max: 6 ≤ 10 − 3 already reserved = 7, so it fits.
        let a = e.evaluate(&spec("g", QosTier::Guaranteed, 6, 0), 3);
        assert!(a.admitted && a.priority == 2, "{a:?}");
        // With 5 reserved, 6 > 10 − 5 = 5: rejected, and the reason says so.
        let r = e.evaluate(&spec("g", QosTier::Guaranteed, 6, 0), 5);
        assert!(!r.admitted && r.reason.contains("exceeds the 5 bytes"), "{r:?}");
        // Burstable reserves only its base: base 4 fits next to 5 reserved (4 ≤ 5) though max 8 does not.
        assert!(e.evaluate(&spec("b", QosTier::Burstable, 8, 4), 5).admitted);
        // BestEffort reserves nothing: admitted even when everything is reserved.
        let be = e.evaluate(&spec("e", QosTier::BestEffort, 5, 0), 10);
        assert!(be.admitted && be.priority == 0, "{be:?}");
    }

    #[test]
    fn impossible_specs_are_rejected_with_the_reason() {
        let e = AdmissionEvaluator::new(10);
        // Weights 2 + smallest KV 1 = 3 > max 2.
        assert!(e.evaluate(&spec("x", QosTier::BestEffort, 2, 0), 0).reason.contains("cannot hold"));
        // A Guaranteed context bigger than the device.
        assert!(e.evaluate(&spec("x", QosTier::Guaranteed, 11, 0), 0).reason.contains("the device has 10"));
        let mut s = spec("x", QosTier::Burstable, 5, 6);
        assert!(e.evaluate(&s, 0).reason.contains("above max_bytes"));
        s.base_bytes = 3;
        s.share = 0.0;
        assert!(e.evaluate(&s, 0).reason.contains("share"));
    }
}
