#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test of the workspace.
# Set TANDEM_FUZZ_OPS to lengthen the randomized scheduler harness (default: CI size).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --all-targets --locked
echo "== doc tests"
cargo test --workspace --doc --locked
echo "== the official openai Python client against tandem serve"
./scripts/openai_client/run.sh
echo "== two replicas behind SGLang's router (sglang-router from PyPI)"
./scripts/router/run.sh
echo "== KV events as vLLM's subscribers decode them (pyzmq, msgspec from PyPI)"
./scripts/kv_events/run.sh
echo "== Kubernetes manifests (kubernetes-validate from PyPI, and how they fit together)"
./scripts/k8s/run.sh
echo "== the CUDA kernels compile to PTX and sm_90 code without spills (nvcc from PyPI)"
./scripts/cuda/ptx_check.sh
echo "== the GPU device check, dry run on tensor-cpu (scripts/cuda/device_check.sh)"
dry="$(mktemp -d)"
TANDEM=target/debug/tandem OUT_DIR="$dry" ./scripts/cuda/device_check.sh --dry-run
rm -rf "$dry"
