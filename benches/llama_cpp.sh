#!/usr/bin/env bash
# llama.cpp against tandem on this machine's CPU, side by side and cold (issue 18).
#
#   benches/llama_cpp.sh build    # once: llama.cpp from the llama-cpp-python sdist (~30 min on 2 cores)
#   benches/llama_cpp.sh run      # the A B A B comparison; prints one markdown table
#
# build: `pip download` the llama-cpp-python sdist (pinned), take the llama.cpp tree it vendors,
# build llama-server, llama-bench and llama-batched-bench with cmake and ninja from PyPI wheels.
# CPU flags: GGML_NATIVE=ON, except where the CPU has AMX (llama.cpp's native AMX build dies with
# SIGILL on some of those machines): there GGML_NATIVE=OFF with the AVX-512 options this CPU has.
# run: see benches/llama_cpp_compare.py (same GGUF, 2 threads each, A B A B, every serving run's
# prompts new).
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS=target/peers
VENV=$PEERS/llama-cpp-venv
LLAMA_CPP_PYTHON_VERSION=0.3.36
SRC=$PEERS/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp
BUILD=$PEERS/llama.cpp-build

cpu_flags() {
  local flags
  flags=$(grep -m1 '^flags' /proc/cpuinfo)
  if [[ " $flags " == *" amx_tile "* ]]; then
    local opts="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
    [[ " $flags " == *" avx512f "* ]] && opts+=" -DGGML_AVX512=ON"
    [[ " $flags " == *" avx512_vnni "* ]] && opts+=" -DGGML_AVX512_VNNI=ON"
    [[ " $flags " == *" avx512_vbmi "* ]] && opts+=" -DGGML_AVX512_VBMI=ON"
    [[ " $flags " == *" avx512_bf16 "* ]] && opts+=" -DGGML_AVX512_BF16=ON"
    echo "$opts"
  else
    echo "-DGGML_NATIVE=ON"
  fi
}

build() {
  mkdir -p "$PEERS"
  if [[ ! -x $VENV/bin/cmake ]]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check cmake ninja
  fi
  if [[ ! -d $SRC ]]; then
    "$VENV/bin/pip" download --quiet --disable-pip-version-check --no-deps \
      -d "$PEERS" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
    tar xzf "$PEERS/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz" -C "$PEERS"
  fi
  local flags
  flags=$(cpu_flags)
  echo "llama.cpp CPU options: $flags"
  # shellcheck disable=SC2086
  PATH=$VENV/bin:$PATH cmake -S "$SRC" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON $flags >/dev/null
  PATH=$VENV/bin:$PATH cmake --build "$BUILD" -j "$(nproc)" --target llama-server llama-bench llama-batched-bench
  ls -l "$BUILD/bin/llama-server" "$BUILD/bin/llama-bench" "$BUILD/bin/llama-batched-bench"
}

case "${1:-}" in
  build) build ;;
  run) shift; exec python3 benches/llama_cpp_compare.py --llama-bin "$BUILD/bin" "$@" ;;
  *) echo "usage: $0 build | run [options of benches/llama_cpp_compare.py]" >&2; exit 2 ;;
esac
