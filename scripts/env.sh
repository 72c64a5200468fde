# Sourced by the scripts: telemetry off, TensorFlow quiet, the venv first on PATH (dvc runs `python -m ...`).
export DO_NOT_TRACK=true PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
export PATH="$PWD/.venv/bin:$PATH"
