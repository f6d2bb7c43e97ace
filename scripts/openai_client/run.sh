#!/usr/bin/env bash
# The official `openai` Python client against `tandem serve` (an independent client).
# Creates a venv under target/ with openai from PyPI (once), builds the binary, runs check.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=target/py-openai
OPENAI_VERSION=3.54.0
PROMETHEUS_CLIENT_VERSION=0.26.0
JSONSCHEMA_VERSION=4.25.1
if ! "$VENV/bin/python" -c "import openai, prometheus_client, jsonschema, sys; from importlib.metadata import version; sys.exit(openai.__version__ != '$OPENAI_VERSION' or version('prometheus-client') != '$PROMETHEUS_CLIENT_VERSION' or version('jsonschema') != '$JSONSCHEMA_VERSION')" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "openai==$OPENAI_VERSION" \
    "prometheus-client==$PROMETHEUS_CLIENT_VERSION" "jsonschema==$JSONSCHEMA_VERSION"
fi
# The binary exactly as the test build made it (a plain `cargo build -p tandem` unifies
# features differently and would recompile half the dependencies).
cargo test --workspace --all-targets --locked --no-run --quiet
"$VENV/bin/python" scripts/openai_client/check.py target/debug/tandem
