"""DVC's entry points: `python -m flows.dvc_stage NAME` runs one stage; `--write-dvc-yaml` regenerates dvc.yaml.

Each stage process validates the whole params.yaml first, so a bad key fails
before any stage does work.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from kerasflow.runtime import configure_logging, quiet_defaults

logger = logging.getLogger("kerasflow")

PLOTS = [
    {"loss": {"template": "linear", "x": "epoch", "y": {"reports/history.csv": ["loss", "val_loss"]}}},
    {"test_predictions": {"template": "confusion", "x": "actual", "y": {"reports/plots/predictions.csv": "predicted"}}},
    "reports/plots/training_curves.png",
    # The primary metric per slice of the test rows (evaluate.slices; the first row: all of them).
    {"slices": {"template": "bar_horizontal", "x": "candidate", "y": {"reports/plots/slices.csv": "slice"}}},
]


def dvc_pipeline(stages: list[Any]) -> dict[str, Any]:
    """dvc.yaml's content for the given stages."""
    document: dict[str, Any] = {"stages": {}}
    for stage in stages:
        entry: dict[str, Any] = {
            "cmd": f"python -m flows.dvc_stage {stage.name}",
            "deps": [*stage.code, *stage.deps],
            "params": list(stage.params),
        }
        outs = [
            *stage.outs,
            *({path: {"cache": False}} for path in stage.git_outs),
            *({path: {"cache": False, "persist": True}} for path in stage.persist),
        ]
        if outs:
            entry["outs"] = outs
        if stage.metrics:
            entry["metrics"] = [{path: {"cache": False}} for path in stage.metrics]
        document["stages"][stage.name] = entry
    document["plots"] = PLOTS
    return document


def render_dvc_yaml(stages: list[Any]) -> str:
    header = (
        "# Generated from the stage list in flows/stages/__init__.py (and the files params.yaml names) by\n"
        "# `python -m flows.dvc_stage --write-dvc-yaml`; edit those, not this.\n"
    )
    return header + yaml.safe_dump(dvc_pipeline(stages), sort_keys=False, width=120)


def undeclared_deps(dvc_yaml: Path, stage: Any) -> list[str]:
    """Files params.yaml names for `stage` (a data file, backbone weights) that dvc.yaml does not list."""
    if not dvc_yaml.is_file():
        return []
    declared = yaml.safe_load(dvc_yaml.read_text()).get("stages", {}).get(stage.name, {}).get("deps", [])
    return [path for path in stage.deps if path not in declared]


def shared_root(workspace: Path) -> Path:
    """Where the project's shared state is (mlflow.db, its artifacts): the workspace, except for a queued DVC
    experiment, which runs in a copy under `.dvc/tmp/exps/` and must record into the project's store (DVC
    sets DVC_ROOT to the project for it), not into a copy thrown away when it ends."""
    parent = os.environ.get("DVC_ROOT")
    if parent and workspace.resolve().is_relative_to(Path(parent).resolve() / ".dvc" / "tmp"):
        return Path(parent).resolve()
    return workspace


def check_model_once(params: Any, root: Path) -> None:
    """Every layer of params.model made once (a bad argument is a ConfigError before any stage works), unless this
    same model spec passed with this Keras already: the check imports TensorFlow, 5 to 8 s of a forced `dvc repro`
    whose ingest itself takes a fraction of a second (bench/results/profile.md). A passing spec leaves a marker in
    .kerasflow/checked/; a failing one is checked again every time."""
    import hashlib
    import json
    from importlib.metadata import version

    spec = json.dumps([params.model.model_dump(mode="json"), version("keras")], sort_keys=True)
    marker = root / ".kerasflow" / "checked" / f"model-{hashlib.sha256(spec.encode()).hexdigest()[:16]}"
    if marker.is_file():
        return
    from kerasflow.runtime import import_quietly

    import_quietly("tasks.model").check_spec(params.model)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()


def main(argv: list[str] | None = None) -> int:
    quiet_defaults()
    configure_logging()
    parser = argparse.ArgumentParser(prog="python -m flows.dvc_stage", description=__doc__)
    parser.add_argument("stage", nargs="?", help="the stage to run")
    parser.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    parser.add_argument("--write-dvc-yaml", action="store_true", help="regenerate dvc.yaml and exit")
    args = parser.parse_args(argv)

    from flows.stages import Context, build_stages
    from kerasflow.config import ConfigError, load_params
    from kerasflow.layout import Layout, RunFolderBusy, run_folder_lock

    root = Path.cwd()
    layout = Layout(root)
    try:
        params = load_params(root / args.params)
        if args.stage == "ingest":  # the first stage of a `dvc repro`: every layer argument checked before any work
            check_model_once(params, root)
    except ConfigError as error:
        logger.error("%s", error)
        return 2
    stages = build_stages(layout, params)
    if args.write_dvc_yaml:
        (root / "dvc.yaml").write_text(render_dvc_yaml(stages))
        return 0
    by_name = {stage.name: stage for stage in stages}
    if args.stage not in by_name:
        parser.error(f"stage must be one of {list(by_name)}, got {args.stage!r}")
    stale = undeclared_deps(root / "dvc.yaml", by_name[args.stage])
    if stale:
        logger.error(
            "dvc.yaml does not list %s as dependencies of stage %s, so `dvc repro` would not notice when they "
            "change; run `python -m flows.dvc_stage --write-dvc-yaml`",
            stale,
            args.stage,
        )
        return 2
    os.environ["KERASFLOW_DVC_STAGE"] = args.stage
    try:
        # A `kerasflow run` in this folder (not --isolate) writes the same models/ and reports/: one at a time.
        with run_folder_lock(root):
            by_name[args.stage].run(params, Context(layout, shared_root(root)))
    except RunFolderBusy as error:
        logger.error("stage %s not started: %s", args.stage, error)
        return 1
    except Exception as error:
        logger.error("stage %s failed: %s", args.stage, error, exc_info=logger.isEnabledFor(logging.DEBUG))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
