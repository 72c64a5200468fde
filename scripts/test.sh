#!/usr/bin/env bash
# Set up .venv if needed, lint, then run the whole test suite (unit, flow, integration).
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
ruff check kerasflow tasks flows tests
ruff format --check --quiet kerasflow tasks flows tests
exec python -m pytest "$@"
