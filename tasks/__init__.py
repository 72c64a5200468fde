"""The work of each pipeline stage, as plain typed functions (no Prefect, no params.yaml reading)."""
