"""params.yaml is validated once; every mistake names its key."""

from __future__ import annotations

import pytest
import yaml

from kerasflow.config import ConfigError, Params, apply_overrides, flatten, load_params, parse_params
from tests.conftest import REPO_ROOT


def test_shipped_params_are_valid():
    params = load_params(REPO_ROOT / "params.yaml")
    assert params.ingest.dataset == "digits"
    assert params.model.layers[0].type == "conv2d"
    assert params.model.layers[0].arguments["filters"] == 32
    assert params.register_.thresholds == {"accuracy": 0.97}


@pytest.mark.parametrize(
    ("tree", "expected"),
    [
        ({"train": {"epohcs": 3}}, "train.epohcs: unknown key"),
        ({"surprise": 1}, "surprise: unknown key"),
        ({"train": {"epochs": "many"}}, "train.epochs"),
        ({"train": {"epochs": -1}}, "train.epochs: Input should be greater than 0"),
        ({"train": {"batch_size": 0}}, "train.batch_size"),
        ({"preprocess": {"test_fraction": 1.0}}, "preprocess.test_fraction: Input should be less than 1"),
        ({"preprocess": {"test_fraction": 0.6, "val_fraction": 0.5}}, "test_fraction + val_fraction must be below 1"),
        ({"model": {"optimizer": {"name": "adamw2"}}}, "model.optimizer.name"),
        ({"model": {"optimizer": {"name": "adam", "momentum": 0.9}}}, "momentum applies to sgd and rmsprop only"),
        ({"model": {"layers": [{"type": "dense2"}]}}, "unknown layer type 'dense2'"),
        (
            {"model": {"api": "functional", "layers": [{"type": "dense", "units": 2, "inputs": ["nope"]}]}},
            "names 'nope'",
        ),
        ({"ingest": {"source": "sklearn", "dataset": "cifar"}}, "ingest: dataset must be one of"),
        ({"ingest": {"source": "file"}}, "path is required for source 'file'"),
        ({"register": {"model_name": "bad/name"}}, "register.model_name"),
        ({"register": {"thresholds": {"accuracyy": 0.5}}}, "unknown metric 'accuracyy'"),
        ({"evaluate": {"primary_metric": "auc"}}, "evaluate.primary_metric"),
    ],
)
def test_bad_values_name_the_key(tree, expected):
    with pytest.raises(ConfigError) as raised:
        parse_params(tree)
    assert expected in str(raised.value)


def test_overrides_dotted_nested_and_shorthand_land_in_the_same_object(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((REPO_ROOT / "params.yaml").read_text())
    dotted = load_params(path, {"train.epochs": 3, "model.optimizer.learning_rate": 0.01})
    nested = load_params(path, {"train": {"epochs": 3}, "model": {"optimizer": {"learning_rate": 0.01}}})
    shorthand = load_params(path, {"epochs": 3, "learning_rate": 0.01})
    assert dotted == nested == shorthand
    assert dotted.train.epochs == 3 and dotted.train.batch_size == 32  # untouched keys keep params.yaml's values


def test_bad_override_names_the_key(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((REPO_ROOT / "params.yaml").read_text())
    with pytest.raises(ConfigError, match="train.epochs"):
        load_params(path, {"train.epochs": 0})
    with pytest.raises(ConfigError, match="train.epoch: unknown key"):
        load_params(path, {"train.epoch": 5})


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "missing.yaml")
    broken = tmp_path / "params.yaml"
    broken.write_text("train: [epochs: 3\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(broken)
    broken.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_params(broken)


def test_defaults_round_trip_through_yaml():
    params = Params()
    assert parse_params(yaml.safe_load(yaml.safe_dump(params.to_dict()))) == params


def test_apply_overrides_leaves_the_input_alone():
    tree = {"train": {"epochs": 1}}
    merged = apply_overrides(tree, {"train.epochs": 2})
    assert tree == {"train": {"epochs": 1}} and merged == {"train": {"epochs": 2}}


def test_flatten_uses_dotted_keys_and_list_indices():
    assert flatten({"a": {"b": 1, "c": [{"d": 2}]}, "e": []}) == {"a.b": 1, "a.c.0.d": 2, "e": []}
