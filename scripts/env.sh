# Sourced by the scripts: the venv first on PATH (dvc runs `python -m ...`), then kerasflow's quiet
# environment (telemetry off, TensorFlow quiet), defined once in kerasflow/runtime.py.
export PATH="$PWD/.venv/bin:$PATH"
eval "$(python -m kerasflow.runtime)"
