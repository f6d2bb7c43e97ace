#!/usr/bin/env bash
# tandem replicas behind SGLang's Model Gateway (issue 16): installs `sglang-router` (pinned)
# from PyPI into target/py-router once, builds the binary as the test build does, runs check.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=target/py-router
SGLANG_ROUTER_VERSION=0.3.2
if ! "$VENV/bin/python" -c "import sys; from importlib.metadata import version; sys.exit(version('sglang-router') != '$SGLANG_ROUTER_VERSION')" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "sglang-router==$SGLANG_ROUTER_VERSION"
fi
cargo test --workspace --all-targets --locked --no-run --quiet
"$VENV/bin/python" scripts/router/check.py target/debug/tandem "$VENV/bin/smg"
