//! Device profiles: the roofline numbers of a device, as measured where we could.

use std::time::Duration;

/// A device's roofline and overheads.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceProfile {
    pub name: &'static str,
    /// Achieved memory bandwidth (bytes/s).
    pub mem_bandwidth: f64,
    /// Achieved dense bf16 throughput (FLOP/s).
    pub peak_flops: f64,
    /// Device memory (bytes).
    pub memory: u64,
    /// Host ↔ device copy bandwidth for swapping (bytes/s).
    pub host_link: f64,
    /// Fixed cost of one step (kernel launches, sampling, synchronisation).
    pub step_overhead: Duration,
    /// Extra cost of each additional stream in a step (launch + event join).
    pub stream_overhead: Duration,
    /// Whether micro-batches on separate streams can overlap on this device.
    pub concurrent_streams: bool,
    /// Bytes per weight as this device's executor stores them (bf16 on GPUs, int8 in tandem's
    /// CPU executor); overrides the model shape's.
    pub dtype_bytes: u64,
    /// Bytes per KV element as this device's executor stores them (bf16 on GPUs, f32 on the
    /// CPU); overrides the model shape's.
    pub kv_dtype_bytes: u64,
    /// CPUs: cores, shared out between stream lanes (0: a GPU, whose streams share the whole
    /// device). With `core_bandwidth` and `core_flops`, what one core achieves alone.
    pub lane_cores: usize,
    pub core_bandwidth: f64,
    pub core_flops: f64,
}

impl DeviceProfile {
    /// H100 SXM 80 GB: 3.0 TB/s and 790 TFLOP/s bf16 as measured (issue 3's figures).
    pub fn h100() -> Self {
        Self {
            name: "h100",
            mem_bandwidth: 3.0e12,
            peak_flops: 790e12,
            memory: 80_000_000_000,
            host_link: 50e9,
            step_overhead: Duration::from_micros(100),
            stream_overhead: Duration::from_micros(15),
            concurrent_streams: true,
            dtype_bytes: 2,
            kv_dtype_bytes: 2,
            lane_cores: 0,
            core_bandwidth: 0.0,
            core_flops: 0.0,
        }
    }

    /// A static `fraction` of this device (an MIG-like partition): that share of its bandwidth,
    /// compute and memory; fixed per-step costs unchanged.
    pub fn partition(&self, fraction: f64) -> Self {
        let f = fraction.clamp(1e-3, 1.0);
        Self {
            mem_bandwidth: self.mem_bandwidth * f,
            peak_flops: self.peak_flops * f,
            memory: (self.memory as f64 * f) as u64,
            ..self.clone()
        }
    }

    /// A100 SXM 80 GB: ~1.9 TB/s and ~280 TFLOP/s bf16 achieved (of 2.04 TB/s and 312 peak).
    pub fn a100() -> Self {
        Self {
            name: "a100",
            mem_bandwidth: 1.9e12,
            peak_flops: 280e12,
            memory: 80_000_000_000,
            host_link: 25e9,
            step_overhead: Duration::from_micros(120),
            stream_overhead: Duration::from_micros(15),
            concurrent_streams: true,
            dtype_bytes: 2,
            kv_dtype_bytes: 2,
            lane_cores: 0,
            core_bandwidth: 0.0,
            core_flops: 0.0,
        }
    }

    /// This project's 2-core CPU machine (AMD EPYC), calibrated from the real CPU executor with
    /// its default int8 weights and f32 KV (`tandem bench-model --batch 1,16,32 --prefill 1024`,
    /// SmolLM2-135M, on both cores and with `RAYON_NUM_THREADS=1`): batch-1 decode 11.1 ms on 2
    /// cores (≈ 13 GB/s of weights) and 14.5 ms on one (≈ 9.6 GB/s); a 1,024-token prefill at
    /// 515 tokens/s on 2 cores (≈ 145 GFLOP/s with attention) and 317 on one (≈ 86). Each
    /// stream lane gets its share of the cores (`streams=2`: one each), so lanes overlap.
    pub fn cpu_2core() -> Self {
        Self {
            name: "cpu-2c",
            mem_bandwidth: 13e9,
            peak_flops: 145e9,
            memory: 16_000_000_000,
            host_link: 10e9,
            step_overhead: Duration::from_micros(500),
            stream_overhead: Duration::from_micros(50),
            concurrent_streams: true,
            dtype_bytes: 1,
            kv_dtype_bytes: 4,
            lane_cores: 2,
            core_bandwidth: 9.6e9,
            core_flops: 86e9,
        }
    }

    /// What one of `n` stream lanes has: on a CPU (`lane_cores > 0`) its `cores / n` cores
    /// (at least one), each at the single-core figures, capped by the whole machine's; on a GPU
    /// a static `1/n` slice ([`Self::partition`]).
    pub fn lane(&self, n: usize) -> Self {
        let n = n.max(1);
        if self.lane_cores == 0 {
            return self.partition(1.0 / n as f64);
        }
        let cores = (self.lane_cores / n).max(1) as f64;
        Self {
            mem_bandwidth: (self.core_bandwidth * cores).min(self.mem_bandwidth),
            peak_flops: (self.core_flops * cores).min(self.peak_flops),
            ..self.clone()
        }
    }

    /// KV bytes in `fraction` of this device's memory once `model`'s weights are in, stored at
    /// this device's element size (as [`super::SimExecutor`] stores them).
    pub fn kv_memory(&self, model: &super::ModelShape, fraction: f64) -> u64 {
        ((self.memory as f64 * fraction) as u64).saturating_sub(model.params * self.dtype_bytes)
    }

    /// Looks a profile up by name (`h100`, `a100`, `cpu-2c`).
    pub fn by_name(name: &str) -> Option<Self> {
        [Self::h100(), Self::a100(), Self::cpu_2core()].into_iter().find(|d| d.name == name)
    }
}
