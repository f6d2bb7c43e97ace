#!/usr/bin/env bash
# The Kubernetes manifests (issue 16): installs kubernetes-validate (pinned; it validates against
# the Kubernetes version of its own release) into target/py-k8s once and runs check.py, with the
# test build's tandem and the router from scripts/router/run.sh's venv when present.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=target/py-k8s
KUBERNETES_VALIDATE_VERSION=1.37.0
if ! "$VENV/bin/python" -c "import sys; from importlib.metadata import version; sys.exit(version('kubernetes-validate') != '$KUBERNETES_VALIDATE_VERSION')" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
bins=()
if [[ -x target/debug/tandem && -x target/py-router/bin/smg ]]; then
  bins=(target/debug/tandem target/py-router/bin/smg)
fi
"$VENV/bin/python" scripts/k8s/check.py "$VENV/bin/kubernetes-validate" "${bins[@]}"
