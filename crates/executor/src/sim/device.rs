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
    /// Bytes per weight and KV element as this device's executor stores them (bf16 on GPUs,
    /// f32 in tandem's CPU executor); overrides the model shape's.
    pub dtype_bytes: u64,
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
        }
    }

    /// This project's 2-core CPU machine, calibrated from the real CPU executor
    /// (`tandem bench-model`, SmolLM2-135M in f32): batch-1 decode streams ~540 MB of weights in
    /// 23.5 ms (≈ 23 GB/s effective); a 512-token prefill and batch-64 decode sustain 60–85
    /// GFLOP/s. Two cores cannot overlap streams.
    pub fn cpu_2core() -> Self {
        Self {
            name: "cpu-2c",
            mem_bandwidth: 23e9,
            peak_flops: 70e9,
            memory: 16_000_000_000,
            host_link: 10e9,
            step_overhead: Duration::from_micros(500),
            stream_overhead: Duration::from_micros(50),
            concurrent_streams: false,
            dtype_bytes: 4,
        }
    }

    /// Looks a profile up by name (`h100`, `a100`, `cpu-2c`).
    pub fn by_name(name: &str) -> Option<Self> {
        [Self::h100(), Self::a100(), Self::cpu_2core()].into_iter().find(|d| d.name == name)
    }
}
