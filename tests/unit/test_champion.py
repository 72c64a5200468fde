"""Whether the champion can be re-scored on this run's data, and why not."""

from __future__ import annotations

import numpy as np
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


def test_a_champions_outputs_on_a_split_are_kept_and_the_next_run_on_it_does_not_load_the_champion(
    tmp_path, monkeypatch
):
    import pandas as pd

    from kerasflow import tracking
    from tasks.champion import rescore_outputs
    from tasks.preprocess import LABEL, ParquetSplit

    split = ParquetSplit(tmp_path / "test.parquet", COLUMNS)
    pd.DataFrame({"area": [1.0, 2.0, 3.0], "zone": ["a", "b", "a"], LABEL: [2.0, 4.0, 7.0]}).to_parquet(split.path)
    loads = []

    class Scorer:  # the champion's pyfunc: twice the area
        config = ModelConfig("regression", COLUMNS)

        def predict(self, context, x):
            return pd.DataFrame({"prediction": 2 * x["area"]})

    class Loaded:
        def unwrap_python_model(self):
            return Scorer()

    monkeypatch.setattr(tracking, "load_version", lambda name, version: loads.append(version) or Loaded())
    digests = {"3": "a" * 64, "4": "b" * 64}
    monkeypatch.setattr(tracking, "recorded_digest", lambda name, version: digests.get(version))
    cache = tmp_path / "cache"

    first = rescore_outputs("houses", "3", split, state(), cache=cache)
    again = rescore_outputs("houses", "3", split, state(), cache=cache)
    assert loads == ["3"]  # the second run on the same split weighed the kept outputs
    np.testing.assert_array_equal(again.outputs, [[2.0], [4.0], [6.0]])
    assert again.score.test == first.score.test and again.score.test["mae"] == pytest.approx(1 / 3)
    assert again.score.version == "3"
    # Another version, or another split (new data), is scored by the champion itself.
    rescore_outputs("houses", "4", split, state(), cache=cache)
    pd.DataFrame({"area": [5.0, 6.0], "zone": ["a", "b"], LABEL: [10.0, 11.0]}).to_parquet(split.path)
    rescore_outputs("houses", "3", split, state(), cache=cache)
    assert loads == ["3", "4", "3"]
    # The kept outputs are still checked against this run's data: a champion that cannot take it is not scored.
    narrower = state(ModelInputs("columns", (COLUMNS.columns[0],)))
    skipped = rescore_outputs("houses", "3", split, narrower, cache=cache)
    assert skipped.outputs is None and "takes column(s) ['zone']" in skipped.score.skipped and len(loads) == 3
