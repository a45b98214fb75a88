#!/usr/bin/env bash
# Run the test suite: unit and integration tests (integration ones need openssl; later ones
# start their own dockerd/registry where installed). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/venv.sh
python -m pytest -q "$@"
