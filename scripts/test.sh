#!/usr/bin/env bash
# Set up .venv if needed, lint, build the documentation site (a broken link or page fails), then run the test
# suite but its `slow` tests (unit, flow, integration: about 12 minutes on 2 cores). Extra arguments go to
# pytest: scripts/test.sh -m slow runs the slow ones, scripts/test.sh -m "" everything; CI (.ci/run) runs both.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
ruff check kerasflow tasks flows tests
ruff format --check --quiet kerasflow tasks flows tests
NO_MKDOCS_2_WARNING=1 mkdocs build --strict --quiet
exec python -m pytest -m "not slow" "$@"
