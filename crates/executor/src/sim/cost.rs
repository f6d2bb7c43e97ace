//! The cost model of one step: device time per micro-batch and for the whole step.
//!
//! For a micro-batch with fed tokens `T`, sampled sequences `S`, and per sequence `n` fed
//! tokens starting at position `p` (context `c = p + n`):
//!
//! - linear layers: bytes `W = params · dtype` (every weight is read once per forward pass),
//!   FLOPs `F_lin = 2 · layer_params · T + 2 · vocab · hidden · S` (the LM head only for sampled
//!   rows); time `t_lin = max(W / BW, F_lin / peak)`;
//! - attention: bytes `B_att = Σ kv_bytes_per_token · (c + n)` (read the context once, write the
//!   new tokens), FLOPs `F_att = Σ 4 · layers · heads · head_dim · n · (p + (n + 1) / 2)` (QKᵀ and
//!   PV over a causal window); time `t_att = max(B_att / BW, F_att / peak)`;
//! - the micro-batch's serial time on its stream: `S_i = t_lin + t_att` (the two kinds of kernel
//!   run one after another within a stream, so one does not hide the other).
//!
//! A step of one micro-batch takes `S_0 + step_overhead`. A step of `k > 1` micro-batches on
//! concurrent streams takes
//! `max(max_i S_i, (k · W + Σ B_att) / BW, Σ F / peak) + step_overhead + (k − 1) · stream_overhead`:
//! streams overlap, but share the device's bandwidth and compute, and each micro-batch reads the
//! weights again. Hence splitting a pure decode batch (memory-bound) only adds weight traffic,
//! while a compute-bound prefill micro-batch beside a memory-bound decode one overlaps (as
//! NanoFlow observes). On a CPU with stream lanes (`lane_cores > 0`) each micro-batch runs on
//! its lane's cores alone ([`DeviceProfile::lane`]) and the step takes the slowest lane's time.
//! Swaps add `(Σ swap bytes) / host_link` before the compute. On a device
//! without concurrent streams the micro-batches run one after another.

use std::time::Duration;

use tandem_core::SchedulerOutput;

use super::{DeviceProfile, ModelShape};

/// Resource use and serial time of one micro-batch.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MicroBatchCost {
    pub weight_bytes: f64,
    pub attention_bytes: f64,
    pub flops: f64,
    /// Time on its own stream: `t_lin + t_att` (seconds).
    pub serial_secs: f64,
}

/// The modelled device time of a step.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StepCost {
    pub micro_batches: Vec<MicroBatchCost>,
    /// Wall time of the step on the device.
    pub device: Duration,
    /// Busy time of each stream (aligned with the output's micro-batches).
    pub stream_busy: Vec<Duration>,
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// Cost of the sequences `out.seqs[range]` run as one micro-batch.
fn micro_batch_cost(
    out: &SchedulerOutput,
    range: std::ops::Range<usize>,
    m: &ModelShape,
    d: &DeviceProfile,
) -> MicroBatchCost {
    let seqs = &out.seqs[range];
    if seqs.is_empty() {
        return MicroBatchCost::default();
    }
    let kv_tok = m.kv_bytes_per_token() as f64;
    let (mut tokens, mut sampled, mut att_bytes, mut att_flops) = (0f64, 0f64, 0f64, 0f64);
    let att_unit = 4.0 * (m.layers * m.heads * m.head_dim) as f64;
    for s in seqs {
        let n = s.tokens.len() as f64;
        let p = s.start_pos as f64;
        tokens += n;
        sampled += s.sample as u8 as f64;
        att_bytes += kv_tok * (p + 2.0 * n);
        att_flops += att_unit * n * (p + (n + 1.0) / 2.0);
    }
    let weight_bytes = m.weight_bytes() as f64;
    let lin_flops = 2.0 * m.layer_params() as f64 * tokens + 2.0 * (m.vocab * m.hidden) as f64 * sampled;
    let t_lin = (weight_bytes / d.mem_bandwidth).max(lin_flops / d.peak_flops);
    let t_att = (att_bytes / d.mem_bandwidth).max(att_flops / d.peak_flops);
    MicroBatchCost {
        weight_bytes,
        attention_bytes: att_bytes,
        flops: lin_flops + att_flops,
        serial_secs: t_lin + t_att,
    }
}

/// Models the device time of `out` with `block_size`-token KV blocks (see the module docs).
pub fn step_cost(out: &SchedulerOutput, m: &ModelShape, d: &DeviceProfile, block_size: usize) -> StepCost {
    let swap_blocks = (out.swap_out.len() + out.swap_in.len()) as f64;
    let swap_secs = swap_blocks * block_size as f64 * m.kv_bytes_per_token() as f64 / d.host_link;
    let nonempty = out.micro_batches.iter().filter(|r| !r.is_empty()).count();
    // CPU lanes: micro-batches run at once, each on its own lane's share of the cores.
    let lanes = d.lane_cores > 0 && nonempty > 1;
    let on = if lanes { d.lane(out.micro_batches.len()) } else { d.clone() };
    let mbs: Vec<MicroBatchCost> = out.micro_batches.iter().map(|r| micro_batch_cost(out, r.clone(), m, &on)).collect();
    let active: Vec<&MicroBatchCost> = mbs.iter().filter(|c| c.serial_secs > 0.0).collect();
    let overhead = d.step_overhead.as_secs_f64();
    let compute = match active.len() {
        0 => 0.0,
        1 => active[0].serial_secs + overhead,
        k if lanes => {
            active.iter().map(|c| c.serial_secs).fold(0.0, f64::max)
                + overhead
                + (k - 1) as f64 * d.stream_overhead.as_secs_f64()
        }
        k if !d.concurrent_streams => active.iter().map(|c| c.serial_secs).sum::<f64>() + overhead * k as f64,
        k => {
            let longest = active.iter().map(|c| c.serial_secs).fold(0.0, f64::max);
            let bytes: f64 = active.iter().map(|c| c.weight_bytes + c.attention_bytes).sum();
            let flops: f64 = active.iter().map(|c| c.flops).sum();
            longest.max(bytes / d.mem_bandwidth).max(flops / d.peak_flops)
                + overhead
                + (k - 1) as f64 * d.stream_overhead.as_secs_f64()
        }
    };
    let device = secs(compute + swap_secs);
    let stream_busy = mbs.iter().map(|c| secs(c.serial_secs).min(device)).collect();
    StepCost { micro_batches: mbs, device, stream_busy }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // one micro-batch is one range, on purpose
mod tests {
    use super::*;
    use tandem_core::ScheduledSeq;

    /// A 1-layer toy: 1e6 params (1e6 · 2 = 2 MB of weights), 1 KV head × 1 dim → 4 KV bytes/token.
    fn toy() -> ModelShape {
        ModelShape {
            name: "toy",
            layers: 1,
            hidden: 10,
            heads: 1,
            kv_heads: 1,
            head_dim: 1,
            intermediate: 10,
            vocab: 100,
            params: 1_000_000,
            dtype_bytes: 2,
            kv_dtype_bytes: 2,
        }
    }

    /// 1 GB/s, 100 GFLOP/s (100 FLOP per byte, an H100 has ~260), no overheads.
    fn slow_device() -> DeviceProfile {
        DeviceProfile {
            name: "toy",
            mem_bandwidth: 1e9,
            peak_flops: 1e11,
            memory: 1 << 30,
            host_link: 1e9,
            step_overhead: Duration::ZERO,
            stream_overhead: Duration::ZERO,
            concurrent_streams: true,
            dtype_bytes: 2,
            kv_dtype_bytes: 2,
            lane_cores: 0,
            core_bandwidth: 0.0,
            core_flops: 0.0,
        }
    }

    fn seq(fed: usize, start: usize, sample: bool) -> ScheduledSeq {
        crate::sim::test_seq(0, fed, start, sample)
    }

    fn output(seqs: Vec<ScheduledSeq>, micro_batches: Vec<std::ops::Range<usize>>) -> SchedulerOutput {
        SchedulerOutput { seqs, micro_batches, ..SchedulerOutput::default() }
    }

    #[test]
    fn one_decode_token_is_weight_bound() {
        // Weights 2e6 B / 1e9 B/s = 2 ms. FLOPs: layer params 1e6 - 100·10 = 999,000;
        // 2 · 999,000 · 1 + 2 · 100 · 10 · 1 = 2,000,000 → 20 µs. t_lin = 2 ms.
        // Attention: 4 B/token · (9 + 2) = 44 B → 44 ns; FLOPs 4 · 1 · 1 · 1 · 1 · (9 + 1) = 40 → 0.4 ns.
        let out = output(vec![seq(1, 9, true)], vec![0..1]);
        let c = step_cost(&out, &toy(), &slow_device(), 16);
        assert!((c.device.as_secs_f64() - 0.002_000_044).abs() < 1e-9, "{:?}", c.device);
    }

    #[test]
    fn splitting_decode_adds_weight_traffic_but_prefill_beside_decode_overlaps() {
        let (m, d) = (toy(), slow_device());
        // Two decodes, one stream: 2 ms (weights) + tiny attention.
        let serial = step_cost(&output(vec![seq(1, 9, true), seq(1, 9, true)], vec![0..2]), &m, &d, 16).device;
        // Split over two streams: weights read twice → 4e6 B / 1e9 = 4 ms at least.
        let split = step_cost(&output(vec![seq(1, 9, true), seq(1, 9, true)], vec![0..1, 1..2]), &m, &d, 16).device;
        assert!(split.as_secs_f64() >= 0.004 && serial.as_secs_f64() < 0.0021, "{serial:?} vs {split:?}");

        // A 1,000-token prefill: 2 · 999,000 · 1,000 ≈ 2e9 FLOPs → 20 ms, compute-bound.
        // A decode over 5e6 cached tokens: 4 B · 5e6 = 2e7 B of KV reads → 20 ms, memory-bound.
        // One stream runs them back to back: t_lin 20 ms + t_att 20 ms = 40 ms.
        // Two streams: max(20 ms, 22 ms, (2 · 2e6 + 2e7) B / 1e9 = 24 ms, ~2.02e9 FLOPs → 20 ms) = 24 ms.
        let prefill = seq(1_000, 0, true);
        let decode = seq(1, 5_000_000, true);
        let one = step_cost(&output(vec![prefill.clone(), decode.clone()], vec![0..2]), &m, &d, 16).device;
        let two = step_cost(&output(vec![prefill, decode], vec![0..1, 1..2]), &m, &d, 16).device;
        assert!((one.as_secs_f64() - 0.040).abs() < 0.001, "{one:?}");
        assert!((two.as_secs_f64() - 0.024).abs() < 0.001, "{two:?}");
    }

    #[test]
    fn without_concurrent_streams_micro_batches_add_up() {
        let d = DeviceProfile { concurrent_streams: false, ..slow_device() };
        let c = step_cost(&output(vec![seq(1, 9, true), seq(1, 9, true)], vec![0..1, 1..2]), &toy(), &d, 16);
        assert!((c.device.as_secs_f64() - 2.0 * 0.002_000_044).abs() < 1e-9);
        assert_eq!(c.stream_busy.len(), 2);
    }
}
