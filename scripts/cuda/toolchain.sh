#!/usr/bin/env bash
# CUDA 13.0 build toolchain from PyPI for a machine without a GPU or CUDA install (issue 8):
# nvcc, headers and the libraries candle's `cuda` feature links, in a venv, plus a link-time stub
# libcuda.so (the real one comes with the driver at run time). Prints the environment to build
# with. Pinned to CUDA 13.0 to match the H100 machine's driver 580 (../shared/notes/cuda.md).
#
#   eval "$(./scripts/cuda/toolchain.sh)"
#   cargo build --release -p tandem --features cuda
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$root/target/cuda-venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
fi
"$venv/bin/pip" install -q \
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88 \
  nvidia-cuda-cccl==13.0.85 nvidia-nvvm==13.0.88 \
  nvidia-cublas==13.1.0.3 nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88 >&2
cuda_home="$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')"
# Unversioned names for -l, next to the versioned libraries pip installed.
for lib in "$cuda_home"/lib/*.so.*; do
  base="${lib%%.so.*}.so"
  [ -e "$base" ] || ln -s "$(basename "$lib")" "$base"
done
# The stub driver library: every cu* symbol the link asks for, each failing with
# CUDA_ERROR_NO_DEVICE (100). Symbols are collected from the headers.
stub="$root/target/cuda-stub"
mkdir -p "$stub"
if [ ! -e "$stub/libcuda.so" ]; then
  # Declared names, plus the versioned names cuda.h's macros map them to (cuCtxCreate_v2, ...).
  { grep -ohE '\bCUresult CUDAAPI (cu[A-Za-z0-9_]+)' "$cuda_home/include/cuda.h" | awk '{print $3}'
    grep -ohE '^\s*#define\s+cu[A-Za-z0-9_]+\s+cu[A-Za-z0-9_]+' "$cuda_home/include/cuda.h" | awk '{print $3}'
  } | sort -u | awk '{printf "int %s(void) { return 100; }\n", $1}' > "$stub/stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub/libcuda.so" "$stub/stub.c"
  ln -sf libcuda.so "$stub/libcuda.so.1"
fi
echo "export CUDA_HOME='$cuda_home'"
echo "export PATH='$cuda_home/bin':\"\$PATH\""
echo "export CUDA_COMPUTE_CAP=90 CUDARC_CUDA_VERSION=13000"
echo "export LIBRARY_PATH='$cuda_home/lib:$stub'"
echo "export RUSTFLAGS='-L $cuda_home/lib -L $stub'"
