//! With the `cuda` feature: compiles `kernels/paged_attention.cu` to PTX with nvcc (the same
//! nvcc candle's kernels need; `scripts/cuda/toolchain.sh` installs one) for
//! `CUDA_COMPUTE_CAP` (default 90, the H100/H200), into `OUT_DIR`. Without it: nothing.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=kernels/paged_attention.cu");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("paged_attention.ptx");
    let cap = env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let nvcc = env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let status = Command::new(&nvcc)
        .args(["--ptx", &format!("-arch=compute_{cap}"), "-O3", "--use_fast_math", "-o"])
        .arg(&out)
        .arg("kernels/paged_attention.cu")
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{nvcc} failed on kernels/paged_attention.cu ({s})"),
        Err(e) => panic!("cannot run {nvcc} (needed by the `cuda` feature; see scripts/cuda/toolchain.sh): {e}"),
    }
}
