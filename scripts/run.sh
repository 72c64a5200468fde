#!/usr/bin/env bash
# Set up .venv if needed, then run the default pipeline once as a Prefect flow.
# Extra arguments go to `kerasflow run`, e.g. scripts/run.sh --set train.epochs=5
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
exec kerasflow run "$@"
