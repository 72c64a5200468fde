"""Overrides of a params tree: `--set train.epochs=5`, a Prefect run's parameters, a trial's searched values.

They merge into the raw tree before it is validated (`kerasflow.config.load_params`), and `flatten` turns a tree
back into the dotted keys MLflow logs as params.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

import yaml

from kerasflow.errors import ConfigError


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """`train.epochs=5` → {"train.epochs": 5}; values are parsed as YAML. A malformed one is a ConfigError."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. train.epochs=5), got {item!r}")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            problem = str(error).splitlines()[0]
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({problem})") from None
    return overrides


def params_options() -> argparse.ArgumentParser:
    """`--params FILE`, as a parent parser: declared once for `kerasflow` and `kerasflow train-worker`."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    return options


def override_options() -> argparse.ArgumentParser:
    """`--set KEY=VALUE` (repeatable, into `overrides`; `parse_assignments` reads them), as a parent parser."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a param"
    )
    return options


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `dotted` (`train.epochs`, or `model.layers.5.units` with a list index) in a params tree."""
    node: Any = tree
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[:depth]) or "the top level"
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {dotted!r}: {where} has {len(node)} item(s); {part!r} is not one of them")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ConfigError(f"override {dotted!r}: {where} is a value, not a section")


def apply_overrides(tree: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Merge overrides into a params tree.

    Keys may be dotted (`{"train.epochs": 5}`) or nested (`{"train": {"epochs": 5}}`);
    the top-level shorthands `epochs`, `batch_size` and `learning_rate` are accepted
    for Prefect runs (`--param epochs=5`).
    """
    merged = copy.deepcopy(tree)
    shorthands = {
        "epochs": "train.epochs",
        "batch_size": "train.batch_size",
        "learning_rate": "model.optimizer.learning_rate",
    }

    def merge(prefix: str, value: Any) -> None:
        # tune.space's own keys are dotted param names: an override replaces the whole space.
        if isinstance(value, dict) and (value or not prefix) and prefix != "tune.space":
            for key, child in value.items():
                merge(f"{prefix}.{key}" if prefix else str(key), child)
        else:
            set_dotted(merged, shorthands.get(prefix, prefix), value)

    merge("", overrides or {})
    return merged


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested params to dotted keys (lists by index), e.g. for MLflow params."""
    flat: dict[str, Any] = {}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    for key, value in items:
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, (dict, list)) and value:
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat
