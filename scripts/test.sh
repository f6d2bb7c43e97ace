#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test of the workspace.
# Set TANDEM_FUZZ_OPS to lengthen the randomized scheduler harness (default: CI size).
set -euo pipefail
cd "$(dirname "$0")/.."
# Each phase prints how long the previous one took, so a slow CI run shows where the time went.
phase() {
  if [[ -n "${phase_name:-}" ]]; then
    echo "   (${phase_name}: $((SECONDS - phase_start)) s)"
  fi
  phase_name="$1"
  phase_start=$SECONDS
  if [[ -n "$1" ]]; then echo "== $1"; fi
}
trap 'phase "" ; echo "== total: ${SECONDS} s"' EXIT
phase "cargo fmt --check"
cargo fmt --all -- --check
phase "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
# Libraries, binaries and integration tests; the criterion benches are linted by clippy above
# and run by `cargo bench` (BENCHMARKS.md), not built a second time here.
targets=(--lib --bins --tests)
phase "cargo test: build"
cargo test --workspace "${targets[@]}" --locked --no-run
phase "cargo test: run"
cargo test --workspace "${targets[@]}" --locked
phase "doc tests"
cargo test --workspace --doc --locked
phase "the official openai Python client against tandem serve"
./scripts/openai_client/run.sh
phase "two replicas behind SGLang's router (sglang-router from PyPI)"
./scripts/router/run.sh
phase "KV events as vLLM's subscribers decode them (pyzmq, msgspec from PyPI)"
./scripts/kv_events/run.sh
phase "Kubernetes manifests (kubernetes-validate from PyPI, and how they fit together)"
./scripts/k8s/run.sh
phase "the CUDA kernels compile to PTX and sm_90 code without spills (nvcc from PyPI)"
./scripts/cuda/ptx_check.sh
phase "the GPU device check, dry run on tensor-cpu (scripts/cuda/device_check.sh)"
dry="$(mktemp -d)"
TANDEM=target/debug/tandem OUT_DIR="$dry" ./scripts/cuda/device_check.sh --dry-run
rm -rf "$dry"
