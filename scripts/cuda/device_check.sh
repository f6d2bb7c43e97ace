#!/usr/bin/env bash
# Issue 19's device run: every GPU measurement in one go (scripts/cuda/device_check.py says
# which), writing OUT_DIR/results.json and results.md. On the GPU machine, from the repository
# root, with the CUDA binary carried as ./tandem-cuda (built here by scripts/cuda/build.sh):
#
#   scripts/cuda/device_check.sh                 # ~8 minutes on an H200
#   scripts/cuda/device_check.sh --dry-run       # here, without a GPU: --device tensor-cpu, tiny sizes
#
# The CUDA libraries the binary links (cudart, cuBLAS, cuRAND) come from PyTorch's install of the
# nvidia-* wheels on that machine; the driver's libcuda from the system.
set -euo pipefail
cd "$(dirname "$0")/../.."
libs="$(python3 -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13", "lib"))' 2>/dev/null || true)"
if [ -n "$libs" ] && [ -d "$libs" ]; then
  export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
dry=0
for a in "$@"; do [ "$a" = "--dry-run" ] && dry=1; done
if [ "$dry" = 1 ]; then
  export TANDEM="${TANDEM:-target/release/tandem}" OUT_DIR="${OUT_DIR:-bench-results/cuda-dry-run}"
fi
exec python3 scripts/cuda/device_check.py "$@"
