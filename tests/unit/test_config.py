"""params.yaml is validated once; every mistake names its key."""

from __future__ import annotations

import pytest
import yaml

from kerasflow.config import ConfigError, Params, load_params, parse_params
from kerasflow.overrides import apply_overrides, flatten
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
        ({"train": {"batch_size": 10**8}}, "train.batch_size: Input should be less than or equal to 16777216"),
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
        ({"ingest": {"source": "image_folder", "path": "images"}}, "source 'image_folder' needs path"),
        ({"ingest": {"source": "images"}}, "ingest.source"),
        (
            {"ingest": {"text_column": "review", "image_shape": [8, 8]}},
            "text_column and image_shape cannot both be set",
        ),
        ({"validate": {"max_missing_fraction": 1.0}}, "validate.max_missing_fraction: Input should be less than 1"),
        ({"validate": {"max_missing_fraction": -0.1}}, "validate.max_missing_fraction"),
        ({"preprocess": {"categorical_encoding": "hash"}}, "preprocess.categorical_encoding"),
        ({"preprocess": {"max_categories": 0}}, "preprocess.max_categories"),
        ({"preprocess": {"text": {"standardize": "upper"}}}, "preprocess.text.standardize"),
        ({"preprocess": {"text": {"max_tokens": 0}}}, "preprocess.text.max_tokens"),
        (
            {"model": {"augmentation": [{"type": "dense", "units": 2}]}},
            "augmentation[0]: 'dense' is not an augmentation",
        ),
        ({"model": {"backbone": {"name": "MobileNetV2", "pooling": "sum"}}}, "model.backbone.pooling"),
        ({"model": {"backbone": {"weights": "imagenet"}}}, "model.backbone.name: Field required"),
        (
            {"model": {"decision_threshold": 1.0}},
            "model.decision_threshold: must be between 0 and 1",
        ),
        (
            {"model": {"decision_threshold": 0}},
            "model.decision_threshold: must be between 0 and 1",
        ),
        ({"train": {"class_weight": "balance"}}, "train.class_weight"),
        ({"train": {"class_weight": {"yes": -1.0}}}, "train.class_weight"),
        ({"train": {"fine_tune": {"epochs": -1}}}, "train.fine_tune.epochs"),
        ({"train": {"fine_tune": {"layers": 0}}}, "train.fine_tune.layers: Input should be greater than 0"),
        ({"train": {"fine_tune": {"learning_rate": 0}}}, "train.fine_tune.learning_rate"),
        ({"train": {"deterministic": True, "jit_compile": True}}, "train: deterministic: true and jit_compile: true"),
        (
            {"train": {"early_stopping": {"from_start": True, "monitor": "loss"}}},
            "train.early_stopping: from_start scores the start on the validation split: it needs a validation monitor",
        ),
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


def test_new_sections_parse_with_their_values():
    params = parse_params(
        {
            "ingest": {"source": "file", "path": "d.csv", "features": ["a", "b"], "text_column": "b"},
            "validate": {"max_missing_fraction": 0.2},
            "preprocess": {
                "categorical_encoding": "integer",
                "max_categories": 50,
                "categorical_columns": ["a"],
                "text": {"max_tokens": 100, "sequence_length": 20, "standardize": "none"},
            },
            "model": {
                "augmentation": [
                    {"type": "random_flip", "mode": "horizontal"},
                    {"type": "gaussian_noise", "stddev": 1},
                ],
                "backbone": {"name": "MobileNetV2", "weights": "/w.weights.h5", "pooling": "max", "trainable": True},
                "decision_threshold": 0.3,
            },
            "train": {"class_weight": {"yes": 3.0}, "fine_tune": {"epochs": 2, "learning_rate": 1e-4, "layers": 10}},
        }
    )
    assert params.ingest.features == ["a", "b"] and params.ingest.text_column == "b"
    assert params.validate_.max_missing_fraction == 0.2
    assert params.preprocess.categorical_columns == ["a"] and params.preprocess.text.standardize == "none"
    assert [layer.type for layer in params.model.augmentation] == ["random_flip", "gaussian_noise"]
    assert params.model.backbone.pooling == "max" and params.model.backbone.trainable is True
    assert params.train.class_weight == {"yes": 3.0} and params.train.fine_tune.layers == 10
    assert parse_params({"train": {"class_weight": "balanced"}}).train.class_weight == "balanced"


def test_by_default_missing_values_are_refused_until_params_let_the_model_impute_them():
    import numpy as np
    import pandas as pd

    from kerasflow.records import RawDatasetInfo
    from tasks.validate import check_dataset

    frame = pd.DataFrame({"a": [1.0, np.nan, 3.0, 4.0] * 10, "label": [0, 1] * 20})
    info = RawDatasetInfo("label", "classification", ["a"])
    assert check_dataset(frame, info, parse_params({}).validate_) == [
        "column 'a' has 10 missing (NaN) value(s) (validate.max_missing_fraction is 0.0; "
        "raise it to let the model impute them)"
    ]
    assert check_dataset(frame, info, parse_params({"validate": {"max_missing_fraction": 0.25}}).validate_) == []


@pytest.mark.parametrize("tensor", ["input", "features", "numeric", "categorical", "text", "image"])
def test_functional_layers_may_start_from_each_named_input_tensor(tensor):
    params = parse_params(
        {"model": {"api": "functional", "layers": [{"type": "dense", "units": 2, "inputs": [tensor]}]}}
    )
    assert params.model.layers[0].inputs == [tensor]


EXAMPLES = sorted((REPO_ROOT / "examples").glob("*/params.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.parent.name)
def test_shipped_examples_are_valid(path):
    params = load_params(path)
    if params.ingest.path:  # relative paths are taken from the example's folder
        assert (path.parent / params.ingest.path).exists(), params.ingest.path


def test_each_example_registers_its_own_model():
    names = [load_params(path).register_.model_name for path in EXAMPLES]
    assert len(names) >= 10 and len(set(names)) == len(names)


def test_class_weight_accepts_integer_labels_as_yaml_writes_them():
    params = parse_params(yaml.safe_load("train: {class_weight: {0: 1.0, 1: 5.0}}"))
    assert params.train.class_weight == {"0": 1.0, "1": 5.0}
