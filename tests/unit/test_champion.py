"""Whether the champion can be re-scored on this run's data, and why not."""

from __future__ import annotations

import pytest

from kerasflow.model_interface import InputColumn, ModelConfig, ModelInputs
from kerasflow.records import PreprocessState
from tasks.champion import mismatch

COLUMNS = ModelInputs(
    "columns", (InputColumn("area", "numeric", "numeric"), InputColumn("zone", "zone", "categorical"))
)


def state(inputs: ModelInputs = COLUMNS, classes=None, task="regression") -> PreprocessState:
    return PreprocessState(task, inputs, "y", [], {}, 0, "md5", classes=classes)


@pytest.mark.parametrize(
    ("champion", "data", "expected"),
    [
        (ModelConfig("regression", COLUMNS), state(), None),
        (
            ModelConfig("regression", COLUMNS),
            state(ModelInputs("columns", (COLUMNS.columns[0],))),
            "takes column(s) ['zone'] that this data does not have",
        ),
        (
            ModelConfig("regression", ModelInputs("columns", (InputColumn("zone", "numeric", "numeric"),))),
            state(ModelInputs("columns", (InputColumn("zone", "zone", "categorical"),))),
            "column(s) ['zone'] are of another kind",
        ),
        (ModelConfig("classification", COLUMNS, [0, 1]), state(), "it is a classification model"),
        (
            ModelConfig("classification", COLUMNS, [0, 1]),
            state(classes=[0, 1, 2], task="classification"),
            "predicts classes [0, 1] and this data has [0, 1, 2]",
        ),
        (
            ModelConfig("classification", ModelInputs.images([8, 8, 1]), [0, 1]),
            state(ModelInputs.images([28, 28, 1]), [0, 1], "classification"),
            "images of shape [8, 8, 1], this data's are [28, 28, 1]",
        ),
    ],
)
def test_a_champion_that_cannot_take_the_data_says_why(champion, data, expected):
    found = mismatch(champion, data)
    assert found == expected if expected is None else expected in found


def test_extra_columns_in_the_data_do_not_stop_a_champion_that_needs_fewer():
    wider = ModelInputs("columns", (*COLUMNS.columns, InputColumn("age", "numeric", "numeric")))
    assert mismatch(ModelConfig("regression", COLUMNS), state(wider)) is None


def test_a_champion_whose_file_carries_code_is_refused_by_name_and_does_not_stop_the_run(monkeypatch):
    from kerasflow import tracking
    from tasks.champion import rescore

    keras_refusal = ValueError(
        "Requested the deserialization of a `Lambda` layer whose `function` is a Python lambda. This carries a "
        "potential risk of arbitrary code execution ... passing `safe_mode=False` to the loading function"
    )

    def load(uri):
        raise RuntimeError("loading the model failed") from keras_refusal

    import mlflow.artifacts
    import mlflow.pyfunc

    class Version:  # the registry's answer: version 3, registered before digests were recorded
        name, version, run_id, tags = "houses", "3", "r", {}

    class Client:
        get_model_version = get_model_version_by_alias = staticmethod(lambda *args: Version())

    monkeypatch.setattr(tracking, "MlflowClient", Client)
    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", lambda uri, dst_path: dst_path)
    monkeypatch.setattr(mlflow.pyfunc, "load_model", load)
    with pytest.raises(
        tracking.ModelRefused, match=r"models:/houses/3: refused to load: .* carries Python code"
    ) as found:
        tracking.load_version("houses", "3")
    assert "safe_mode=False" not in str(found.value)  # kerasflow never suggests turning safety off
    with pytest.raises(tracking.ModelRefused, match="models:/houses@champion: refused"):
        tracking.load_model("models:/houses@champion")
    score = rescore("houses", "3", None, state())
    assert score.test is None and "the champion (version 3) cannot be scored" in score.skipped
