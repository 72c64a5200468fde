#!/usr/bin/env bash
# Set up .venv if needed, then run the whole test suite (unit, flow, integration).
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
exec python -m pytest "$@"
