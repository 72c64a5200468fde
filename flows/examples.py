"""`kerasflow example NAME`: make one of examples/ the project's workload, for `dvc repro` and `kerasflow run`.

An example's params.yaml says only what differs from the defaults, with data paths taken from
its own folder. Made the project's workload, it is written out whole (every key, paths from the
project root), and what belonged to the previous workload (its recorded schema) is cleared, so
`dvc repro` runs the example as if it had always been the project's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from kerasflow.config import ConfigError, Params, load_params
from kerasflow.io import write_text
from kerasflow.layout import Layout

logger = logging.getLogger(__name__)


def available(project_root: Path) -> list[str]:
    return sorted(path.parent.name for path in (project_root / "examples").glob("*/params.yaml"))


def relative_paths(params: Params, project_root: Path) -> dict[str, Any]:
    """The params as a plain tree, with file paths inside the project written relative to its root."""
    tree = params.to_dict()

    def relative(value: str | None) -> str | None:
        if not value or value == "imagenet":
            return value
        path = Path(value)
        return path.relative_to(project_root).as_posix() if path.is_relative_to(project_root) else value

    tree["ingest"]["path"] = relative(tree["ingest"]["path"])
    if tree["ingest"]["source"] not in ("sklearn", "keras"):
        tree["ingest"]["dataset"] = None  # the default names a built-in dataset this workload does not use
    if tree["model"].get("backbone"):
        tree["model"]["backbone"]["weights"] = relative(tree["model"]["backbone"]["weights"])
    return tree


def use_example(name: str, project_root: Path, overrides: dict[str, Any] | None = None) -> Params:
    """Write examples/NAME/params.yaml, completed and with `overrides`, as the project's params.yaml; clear the
    previous workload's schema and regenerate dvc.yaml for the files the example names."""
    project_root = project_root.resolve()
    source = project_root / "examples" / name / "params.yaml"
    if not source.is_file():
        raise ConfigError(f"examples/{name}: no such example; choose one of {available(project_root)}")
    params = load_params(source, overrides)
    header = (
        f"# The workload of examples/{name}, written by `kerasflow example {name}`: every key, with paths from\n"
        "# the project root. Edit it, or switch workloads again with `kerasflow example NAME`.\n"
    )
    write_workload(params, project_root, header)
    logger.info("params.yaml is now examples/%s (model %s)", name, params.register_.model_name)
    return params


def write_workload(params: Params, project_root: Path, header: str) -> None:
    """`params` as the project's params.yaml (every key, paths from the project root); the previous workload's
    recorded schema cleared, and dvc.yaml regenerated for the files the params name."""
    from flows.dvc_stage import render_dvc_yaml
    from flows.stages import build_stages

    previous = registered_name(project_root / "params.yaml")
    body = yaml.safe_dump(relative_paths(params, project_root), sort_keys=False, width=120)
    write_text(project_root / "params.yaml", header + body)
    deployments = project_root / "prefect.yaml"
    if previous and previous != params.register_.model_name and deployments.is_file():
        # The deployments' model (reproduce's default, the retraining trigger's events) follows the workload.
        write_text(deployments, deployments.read_text().replace(previous, params.register_.model_name))
    layout = Layout(project_root)
    if layout.schema.is_file():
        layout.schema.unlink()  # recorded for the previous workload's data; validate records this one's
    if (project_root / "dvc.yaml").is_file():
        write_text(project_root / "dvc.yaml", render_dvc_yaml(build_stages(layout, params)))


def registered_name(params_file: Path) -> str | None:
    """The model name a params file registers (None if there is no readable one)."""
    try:
        tree = yaml.safe_load(params_file.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    return ((tree.get("register") or {}).get("model_name") if isinstance(tree, dict) else None) or None
