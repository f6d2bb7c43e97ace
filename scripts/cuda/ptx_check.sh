#!/usr/bin/env bash
# The paged-attention kernels compile, in the suite, without a GPU: nvcc 13.0 from PyPI (only
# the compiler wheels, into target/py-nvcc) builds kernels/paged_attention.cu to PTX for sm_90 as
# the `cuda` build does, then ptxas to sm_90 code; checks every entry point the launches name is
# there and that no kernel spills registers to local memory.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=target/py-nvcc
if [ ! -x "$venv/bin/python" ] || ! [ -e "$venv/ok-13.0" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
fi
touch "$venv/ok-13.0"
cuda_home="$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')"
nvcc="$cuda_home/bin/nvcc"
src=crates/executor/kernels/paged_attention.cu
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
"$nvcc" --ptx -arch=compute_90 -O3 --use_fast_math -o "$out/k.ptx" "$src"
"$nvcc" --cubin -arch=sm_90 -O3 --use_fast_math -Xptxas -v -o "$out/k.cubin" "$src" 2> "$out/ptxas.txt"
missing=0
# The head dims the kernel file instantiates (a Rust test checks they equal KERNEL_HEAD_DIMS).
hds="$(sed -n 's/^INSTANTIATE(\([0-9]*\))$/\1/p' "$src")"
[ -n "$hds" ] || { echo "no INSTANTIATE(...) lines in $src"; exit 1; }
for hd in $hds; do
  for k in paged_decode_bf16_hd$hd paged_decode_reduce_bf16_hd$hd paged_prefill_bf16_hd$hd; do
    grep -q "^.visible .entry $k(" "$out/k.ptx" || { echo "missing entry $k"; missing=1; }
  done
done
for k in write_kv_slots_bf16 copy_blocks_bf16; do
  grep -q "^.visible .entry $k(" "$out/k.ptx" || { echo "missing entry $k"; missing=1; }
done
spills="$(grep -E "bytes spill (stores|loads)" "$out/ptxas.txt" | grep -vc " 0 bytes spill stores, 0 bytes spill loads" || true)"
echo "PTX: $(grep -c '^.visible .entry' "$out/k.ptx") kernels; ptxas sm_90: $(grep -c 'registers' "$out/ptxas.txt") compiled, $spills with spills"
grep -E "Compiling entry|registers" "$out/ptxas.txt" | paste - - | sed -E "s/.*entry function '([^']+)'.*Used ([0-9]+) registers.*/  \1: \2 registers/" 
[ "$missing" = 0 ] && [ "$spills" = 0 ]
