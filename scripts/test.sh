#!/usr/bin/env bash
# Set up .venv if needed, lint, then run the test suite but its `slow` tests (unit, flow, integration:
# about 25 minutes on 2 cores). Extra arguments go to pytest: scripts/test.sh -m slow runs the slow ones,
# scripts/test.sh -m "" everything; CI (.ci/run) runs both halves.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
ruff check kerasflow tasks flows tests
ruff format --check --quiet kerasflow tasks flows tests
exec python -m pytest -m "not slow" "$@"
