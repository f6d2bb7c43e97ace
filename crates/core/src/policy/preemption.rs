//! Preemption modes: what happens to a victim's KV blocks.
//!
//! - `Recompute`: free the blocks; the request re-prefills prompt + output later (vLLM v1's only
//!   mode; cheap when prefix caching still holds its blocks).
//! - `Swap`: copy the blocks to the host tier and back later (vLLM v0's swap mode).
//! - `Auto`: per victim, the cheaper of the two by [`PreemptionCost`]: re-prefilling
//!   `computed_tokens / recompute_tokens_per_sec` seconds versus copying
//!   `2 · blocks · kv_bytes_per_block / swap_bytes_per_sec` seconds (out and back in).
//!
//! Swap always falls back to recompute when the host tier has no room.
//!
//! `Auto` starts from the configured [`PreemptionCost`] and then learns both speeds from the
//! executor's measured steps ([`CostSample`]: the time a step spent copying blocks, and the
//! time its forward took for the tokens it fed), as exponentially weighted averages — so the
//! choice follows the machine it runs on, not constants.

use crate::error::Error;

/// What to do with one victim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreemptionMode {
    Recompute,
    Swap,
}

/// The numbers a preemption policy decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VictimView {
    /// Tokens whose KV the victim holds (what recompute would redo).
    pub computed_tokens: usize,
    /// Device blocks the victim holds (what swap would copy).
    pub blocks: usize,
    /// Free blocks in the host tier.
    pub host_free_blocks: usize,
}

/// What one executed step measured, for a policy that learns speeds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CostSample {
    /// Blocks the step copied (swap-outs plus swap-ins) and the time the copies took.
    pub swapped_blocks: usize,
    pub swap_secs: f64,
    /// Tokens the step fed, how many of them were prefill (chunks of more than one token), and
    /// the forward's time (the step's device time less the copies).
    pub tokens_fed: usize,
    pub prefill_tokens: usize,
    pub compute_secs: f64,
}

/// Chooses the mode for a victim.
pub trait PreemptionPolicy: std::fmt::Debug + Send {
    fn choose(&self, victim: &VictimView) -> PreemptionMode;
    fn name(&self) -> &'static str;
    /// Learns from a measured step (default: nothing to learn).
    fn observe(&mut self, _sample: &CostSample) {}
    /// The cost figures it decides by, if it has any.
    fn cost(&self) -> Option<PreemptionCost> {
        None
    }
}

/// Cost figures for `Auto`. Defaults: a 1 MiB block (e.g. 16 tokens of a 7B model in bf16 is
/// 8 MiB; a 135M model is ~0.3 MiB), PCIe 4 x16 at 25 GB/s, 10k prefill tokens/s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreemptionCost {
    pub kv_bytes_per_block: u64,
    pub swap_bytes_per_sec: f64,
    pub recompute_tokens_per_sec: f64,
}

impl Default for PreemptionCost {
    fn default() -> Self {
        Self { kv_bytes_per_block: 1 << 20, swap_bytes_per_sec: 25e9, recompute_tokens_per_sec: 10_000.0 }
    }
}

impl PreemptionCost {
    /// Seconds to re-prefill the victim.
    pub fn recompute_secs(&self, v: &VictimView) -> f64 {
        v.computed_tokens as f64 / self.recompute_tokens_per_sec
    }

    /// Seconds to copy the victim's blocks out and back.
    pub fn swap_secs(&self, v: &VictimView) -> f64 {
        2.0 * v.blocks as f64 * self.kv_bytes_per_block as f64 / self.swap_bytes_per_sec
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        let ok = |x: f64| x.is_finite() && x > 0.0;
        if !ok(self.swap_bytes_per_sec) || !ok(self.recompute_tokens_per_sec) {
            return Err(Error::InvalidConfig {
                field: "preemption_cost",
                problem: "swap_bytes_per_sec and recompute_tokens_per_sec must be finite and > 0".into(),
            });
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct RecomputeOnly;

impl PreemptionPolicy for RecomputeOnly {
    fn choose(&self, _: &VictimView) -> PreemptionMode {
        PreemptionMode::Recompute
    }
    fn name(&self) -> &'static str {
        "recompute"
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SwapFirst;

impl PreemptionPolicy for SwapFirst {
    fn choose(&self, v: &VictimView) -> PreemptionMode {
        if v.blocks <= v.host_free_blocks {
            PreemptionMode::Swap
        } else {
            PreemptionMode::Recompute
        }
    }
    fn name(&self) -> &'static str {
        "swap"
    }
}

#[derive(Debug, Clone, Copy)]
pub struct AutoPreemption {
    pub cost: PreemptionCost,
}

/// Weight of the newest measurement in the learned speeds.
const LEARN_RATE: f64 = 0.2;

impl PreemptionPolicy for AutoPreemption {
    fn choose(&self, v: &VictimView) -> PreemptionMode {
        if v.blocks <= v.host_free_blocks && self.cost.swap_secs(v) < self.cost.recompute_secs(v) {
            PreemptionMode::Swap
        } else {
            PreemptionMode::Recompute
        }
    }
    fn name(&self) -> &'static str {
        "auto"
    }
    /// Copy speed from steps that swapped; prefill speed from steps whose tokens were mostly
    /// prefill (what a recompute is). Implausible samples (no time measured) are skipped.
    fn observe(&mut self, m: &CostSample) {
        let blend =
            |old: f64, new: f64| if new.is_finite() && new > 0.0 { old + LEARN_RATE * (new - old) } else { old };
        if m.swapped_blocks > 0 && m.swap_secs > 0.0 {
            let rate = m.swapped_blocks as f64 * self.cost.kv_bytes_per_block as f64 / m.swap_secs;
            self.cost.swap_bytes_per_sec = blend(self.cost.swap_bytes_per_sec, rate);
        }
        if m.prefill_tokens * 2 >= m.tokens_fed && m.prefill_tokens > 0 && m.compute_secs > 0.0 {
            self.cost.recompute_tokens_per_sec =
                blend(self.cost.recompute_tokens_per_sec, m.tokens_fed as f64 / m.compute_secs);
        }
    }
    fn cost(&self) -> Option<PreemptionCost> {
        Some(self.cost)
    }
}

/// The preemption modes a config can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PreemptionModeKind {
    #[default]
    Recompute,
    Swap,
    Auto,
}

impl PreemptionModeKind {
    pub fn build(self, cost: PreemptionCost) -> Box<dyn PreemptionPolicy> {
        match self {
            PreemptionModeKind::Recompute => Box::new(RecomputeOnly),
            PreemptionModeKind::Swap => Box::new(SwapFirst),
            PreemptionModeKind::Auto => Box::new(AutoPreemption { cost }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_learns_the_measured_speeds_and_changes_its_mind() {
        // Configured: 1 MiB blocks, a fast link (1 GiB/s), slow prefill (100 tokens/s): a
        // 64-block, 1,000-token victim swaps (0.125 s < 10 s).
        let mut auto = AutoPreemption {
            cost: PreemptionCost {
                kv_bytes_per_block: 1 << 20,
                swap_bytes_per_sec: (1u64 << 30) as f64,
                recompute_tokens_per_sec: 100.0,
            },
        };
        let v = VictimView { computed_tokens: 1000, blocks: 64, host_free_blocks: 100 };
        assert_eq!(auto.choose(&v), PreemptionMode::Swap);
        // Measured: 10 blocks copied in 1 s (10 MiB/s) and 2,000 prefill tokens in 0.1 s (20k
        // tokens/s). After enough steps the speeds approach those: swapping the victim costs
        // 2 * 64 MiB / 10 MiB/s = 12.8 s, recompute 1000 / 20k = 0.05 s.
        let slow_copy = CostSample { swapped_blocks: 10, swap_secs: 1.0, ..CostSample::default() };
        let fast_prefill =
            CostSample { tokens_fed: 2000, prefill_tokens: 2000, compute_secs: 0.1, ..CostSample::default() };
        for _ in 0..60 {
            auto.observe(&slow_copy);
            auto.observe(&fast_prefill);
        }
        let c = auto.cost().unwrap();
        assert!((c.swap_bytes_per_sec / (10.0 * (1u64 << 20) as f64) - 1.0).abs() < 0.01, "{c:?}");
        assert!((c.recompute_tokens_per_sec / 20_000.0 - 1.0).abs() < 0.01, "{c:?}");
        assert_eq!(auto.choose(&v), PreemptionMode::Recompute);
        // A decode-heavy step (2 prefill of 40 tokens) says nothing about prefill speed.
        auto.observe(&CostSample { tokens_fed: 40, prefill_tokens: 2, compute_secs: 1.0, ..CostSample::default() });
        assert_eq!(auto.cost().unwrap().recompute_tokens_per_sec, c.recompute_tokens_per_sec);
    }

    #[test]
    fn auto_swaps_long_contexts_and_recomputes_short_ones() {
        // 1 MiB blocks at 1 GiB/s: swapping 64 blocks costs 2*64 MiB / 1 GiB/s = 0.125 s.
        let cost = PreemptionCost {
            kv_bytes_per_block: 1 << 20,
            swap_bytes_per_sec: (1u64 << 30) as f64,
            recompute_tokens_per_sec: 1000.0,
        };
        let auto = AutoPreemption { cost };
        // 1024 tokens at 1000 tok/s = 1.024 s > 0.125 s: swap.
        let long = VictimView { computed_tokens: 1024, blocks: 64, host_free_blocks: 100 };
        assert_eq!(auto.choose(&long), PreemptionMode::Swap);
        // 100 tokens = 0.1 s < 0.125 s: recompute.
        let short = VictimView { computed_tokens: 100, blocks: 64, host_free_blocks: 100 };
        assert_eq!(auto.choose(&short), PreemptionMode::Recompute);
        // No host room: recompute whatever the cost.
        let full = VictimView { host_free_blocks: 63, ..long };
        assert_eq!(auto.choose(&full), PreemptionMode::Recompute);
    }

    #[test]
    fn swap_falls_back_when_the_host_tier_is_full() {
        assert_eq!(
            SwapFirst.choose(&VictimView { computed_tokens: 1, blocks: 2, host_free_blocks: 1 }),
            PreemptionMode::Recompute
        );
        assert_eq!(
            SwapFirst.choose(&VictimView { computed_tokens: 1, blocks: 2, host_free_blocks: 2 }),
            PreemptionMode::Swap
        );
    }
}
