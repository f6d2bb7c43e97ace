#!/usr/bin/env bash
# tandem's KV events read by vLLM's subscriber types (issue 16): installs pyzmq and msgspec from
# PyPI into target/py-kv once, builds the binary as the test build does, runs check.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=target/py-kv
if ! "$VENV/bin/python" -c "import zmq, msgspec" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "pyzmq==27.*" "msgspec==0.23.*"
fi
cargo test --workspace --all-targets --locked --no-run --quiet
"$VENV/bin/python" scripts/kv_events/check.py target/debug/tandem
