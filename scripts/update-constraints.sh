#!/usr/bin/env bash
# Re-pin constraints.txt: resolve pyproject's ranges in a throw-away venv and freeze the result.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install --quiet --upgrade pip
"$tmp/venv/bin/pip" install --quiet ".[test,serve]" "./examples/plugins/onnxruntime"
{
  sed -n '1,2p' constraints.txt
  "$tmp/venv/bin/pip" freeze --all | grep -v -E '^(pip|enclave-build|enclave-build-onnxruntime)=='
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "constraints.txt updated"
