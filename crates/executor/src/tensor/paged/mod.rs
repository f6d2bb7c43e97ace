//! Paged attention for the tensor executor (issue 19): attention reading K/V through the
//! block table, the KV write of a step's new rows and the block copy behind swap — CUDA
//! kernels (`kernels/paged_attention.cu`, after vLLM's `paged_attention_v2` for decode and a
//! FlashAttention-style online softmax for prefill chunks) and their CPU reference.
//!
//! - `plan.rs`: the step's tables (block tables, context lengths, slots, decode rows, prefill
//!   tiles) and the index arithmetic, built once per step and read by every layer;
//! - `reference.rs`: the kernels' loops on the CPU, what `--device tensor-cpu` runs;
//! - `ops.rs`: both as candle ops (a custom op, in-place ops);
//! - `cuda.rs` (the `cuda` feature): the launches on the device's stream.

#[cfg(feature = "cuda")]
mod cuda;
mod ops;
mod plan;
mod reference;

pub use ops::{attention, gather_blocks, kernels_cover, scatter_blocks, write_slots, DevicePlan};
pub use plan::{
    kv_head, partitions, slot, AttentionPlan, AttentionShape, KERNEL_HEAD_DIMS, K_TILE, NUM_THREADS, PARTITION_SIZE,
    Q_TILE,
};

#[cfg(test)]
mod tests {
    use super::*;

    const KERNELS: &str = include_str!("../../../kernels/paged_attention.cu");

    fn define(name: &str) -> usize {
        let line = KERNELS
            .lines()
            .find(|l| l.starts_with(&format!("#define {name} ")))
            .unwrap_or_else(|| panic!("no #define {name} in the kernel file"));
        line.split_whitespace().nth(2).unwrap().parse().unwrap()
    }

    #[test]
    fn constants_equal_the_kernel_files() {
        assert_eq!(define("PARTITION_SIZE"), PARTITION_SIZE);
        assert_eq!(define("Q_TILE"), Q_TILE);
        assert_eq!(define("K_TILE"), K_TILE);
        assert_eq!(define("NUM_THREADS"), NUM_THREADS);
        let instantiated: Vec<usize> =
            KERNELS.lines().filter_map(|l| l.strip_prefix("INSTANTIATE(")?.strip_suffix(')')?.parse().ok()).collect();
        assert_eq!(instantiated, KERNEL_HEAD_DIMS);
    }
}
