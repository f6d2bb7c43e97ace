#!/usr/bin/env bash
# Builds the CUDA binary to carry to a lent GPU machine (no cargo there): the toolchain from
# PyPI (toolchain.sh), `--features cuda` with the dist-cuda profile (stripped, thin LTO), copied
# to ./tandem-cuda (git-ignored). Prints its size: with the repository it must fit 64 MiB.
#
#   scripts/cuda/build.sh && scripts/cuda/device_check.sh   # the latter on the GPU machine
set -euo pipefail
cd "$(dirname "$0")/../.."
eval "$(scripts/cuda/toolchain.sh)"
CARGO_TARGET_DIR=target/cuda cargo build --locked --profile dist-cuda -p tandem --features cuda
cp target/cuda/dist-cuda/tandem tandem-cuda
ls -l tandem-cuda | awk '{printf "tandem-cuda: %.1f MiB\n", $5 / 1048576}'
