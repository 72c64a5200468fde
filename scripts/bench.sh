#!/usr/bin/env bash
# Set up .venv if needed, then run the benchmarks (kerasflow against bare Keras, same work, same run).
# Extra arguments go to `python -m bench`, e.g. scripts/bench.sh --only throughput --repeats 5
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
exec python -m bench "$@"
