"""Batch scoring: files read batch by batch, rows kept in order, bad input named, nothing half-written."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kerasflow.model_interface import ModelInputError, ModelInputs
from tasks.predict import InputFileError, OutputWriter, default_output, read_batches, score_file


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    """A small logged model on a numeric and a categorical column, loaded back as its pyfunc implementation."""
    import mlflow

    from kerasflow import tracking
    from kerasflow.config import TrackingParams
    from tests.conftest import use_store
    from tests.unit.helpers import log_mixed_model

    folder = tmp_path_factory.mktemp("model")
    use_store(folder / "mlflow.db")
    experiment_id = tracking.configure(TrackingParams(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}"), folder)
    with tracking.open_run(experiment_id):
        uri, _, prepared, _ = log_mixed_model(folder, "classification")
    return mlflow.pyfunc.load_model(uri).unwrap_python_model(), prepared


def rows(count: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"size": rng.normal(size=count), "color": rng.choice(["red", "green", "blue"], count)})


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_file_many_batches_long_is_scored_in_its_own_row_order(tmp_path, scorer, suffix):
    model, _ = scorer
    source = tmp_path / f"new{suffix}"
    data = rows(1000)
    data.to_csv(source, index=False) if suffix == ".csv" else data.to_parquet(source)
    writer = score_file(source, tmp_path / f"out{suffix}", model, {"model_name": "m", "model_version": "7"}, 64)
    assert not (tmp_path / f"out{suffix}").exists()  # nothing at the output until committed
    writer.commit()
    out = pd.read_csv(tmp_path / f"out{suffix}") if suffix == ".csv" else pd.read_parquet(tmp_path / f"out{suffix}")
    assert len(out) == 1000 and list(out.columns) == [
        "row",
        "label",
        "probability_0",
        "probability_1",
        "model_name",
        "model_version",
    ]
    # Row order kept: the same predictions as scoring the whole frame at once.
    np.testing.assert_allclose(out["probability_1"], model.predict(None, data)["probability_1"], atol=1e-6)
    assert set(out["model_version"].astype(str)) == {"7"}
    assert out["row"].tolist() == list(range(1000))  # each prediction names its row in the file
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []


def test_kept_columns_join_the_predictions_back_to_their_records(tmp_path, scorer):
    model, _ = scorer
    data = rows(300).assign(house_id=[f"h{index:04d}" for index in range(300)], listed=pd.Timestamp("2026-01-01"))
    data.to_parquet(tmp_path / "new.parquet")
    writer = score_file(tmp_path / "new.parquet", tmp_path / "out.parquet", model, {}, 64, keep_columns=["house_id"])
    writer.commit()
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert list(out.columns[:2]) == ["row", "house_id"] and out["house_id"].tolist() == data["house_id"].tolist()
    with pytest.raises(InputFileError, match=r"predict.keep_columns names \['id'\], which the file does not have"):
        score_file(tmp_path / "new.parquet", tmp_path / "again.parquet", model, {}, 64, keep_columns=["id"])
    assert not (tmp_path / "again.parquet").exists()


def test_kept_columns_named_like_the_outputs_own_keep_both(tmp_path, scorer):
    model, _ = scorer
    data = rows(50).assign(row=np.arange(50) + 1000, prediction="old", label="x")
    data.to_csv(tmp_path / "new.csv", index=False)
    keep = ["row", "prediction", "label"]
    score_file(tmp_path / "new.csv", tmp_path / "out.csv", model, {}, 20, keep_columns=keep).commit()
    out = pd.read_csv(tmp_path / "out.csv")
    assert out["row"].tolist() == list(range(50))  # the row number in the file, not the kept column
    assert out["input_row"].tolist() == list(range(1000, 1050)) and set(out["input_prediction"]) == {"old"}
    assert list(out.columns).count("label") == 1 and set(out["input_label"]) == {"x"}


@pytest.mark.parametrize("value", [np.inf, -np.inf, 1e300])
def test_infinite_or_huge_numbers_are_named_not_scored(tmp_path, scorer, value):
    model, _ = scorer
    data = rows(30)
    data.loc[12, "size"] = value
    data.to_csv(tmp_path / "new.csv", index=False)
    with pytest.raises(ModelInputError, match=r"column 'size', row 12: a number that is infinite or beyond float32"):
        score_file(tmp_path / "new.csv", tmp_path / "out.csv", model, {}, 100)
    assert not (tmp_path / "out.csv").exists()
    # Served: MLflow's bad-input error (a scoring server answers 400), never NaN probabilities.
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="infinite"):
        model.predict(None, data)


def test_a_header_only_file_is_named_as_empty(tmp_path, scorer):
    from tasks.drift import DriftCounter, training_statistics

    model, prepared = scorer
    (tmp_path / "new.csv").write_text("size,color\n")
    counter = DriftCounter(training_statistics(prepared.x, prepared.inputs), prepared.inputs)
    with pytest.raises(InputFileError, match=r"new.csv: no rows to score"):
        score_file(tmp_path / "new.csv", tmp_path / "out.csv", model, {}, 64, counter)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["new.csv"]


def test_text_in_a_numeric_column_names_the_file_row_and_nothing_is_written(tmp_path, scorer):
    model, _ = scorer
    data = rows(300).astype({"size": object})
    data.loc[217, "size"] = "twelve"
    data.to_csv(tmp_path / "new.csv", index=False)
    with pytest.raises(ModelInputError, match=r"column 'size', row 217: 'twelve' is not a number"):
        score_file(tmp_path / "new.csv", tmp_path / "out.csv", model, {}, 100)  # row 217 is in the third batch
    assert sorted(path.name for path in tmp_path.iterdir()) == ["new.csv"]


def test_a_missing_column_is_named(tmp_path, scorer):
    model, _ = scorer
    rows(10).drop(columns="color").to_csv(tmp_path / "new.csv", index=False)
    with pytest.raises(ModelInputError, match=r"\['color'\] are missing"):
        score_file(tmp_path / "new.csv", tmp_path / "out.csv", model, {}, 100)
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("gone.csv", None, "gone.csv: not found"),
        ("broken.parquet", b"PAR1 not parquet", "broken.parquet: could not be read as parquet"),
        ("ragged.csv", b"size,color\n1,red\n2,blue,extra,more\n", "ragged.csv: could not be read as csv"),
        ("rows.xlsx", b"x", "unsupported file type '.xlsx'"),
    ],
)
def test_an_unreadable_file_says_why(tmp_path, name, content, expected):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(InputFileError, match=expected):
        list(read_batches(tmp_path / name, 100, ModelInputs("columns")))


def test_image_arrays_are_read_in_batches(tmp_path):
    images = np.arange(50 * 4, dtype="float32").reshape(50, 2, 2, 1)
    np.save(tmp_path / "images.npy", images)
    batches = list(read_batches(tmp_path / "images.npy", 16, ModelInputs.images([2, 2, 1])))
    assert [start for start, _ in batches] == [0, 16, 32, 48]
    np.testing.assert_array_equal(np.concatenate([batch for _, batch in batches]), images)


def test_outputs_are_csv_or_parquet_and_written_whole(tmp_path):
    assert default_output(tmp_path / "houses.csv") == tmp_path / "houses.predictions.csv"
    assert default_output(tmp_path / "houses.parquet") == tmp_path / "houses.predictions.parquet"
    assert default_output(tmp_path / "images") == tmp_path / "images.predictions.csv"
    with pytest.raises(InputFileError, match="must be a .csv or .parquet"):
        OutputWriter(tmp_path / "out.json")
    writer = OutputWriter(tmp_path / "out.parquet")
    writer.write(pd.DataFrame({"a": [1]}))
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_an_image_folder_is_read_lazily_in_batches_at_the_models_size(tmp_path):
    from kerasflow import samples

    folder = samples.shapes(tmp_path / "images", per_class=3, size=12, seed=0)  # nine PNGs in class folders
    batches = list(read_batches(folder, 4, ModelInputs.images([8, 8, 1])))
    assert [start for start, _ in batches] == [0, 4, 8]
    images = np.concatenate([batch for _, batch in batches])
    assert images.shape == (9, 8, 8, 1) and images.max() > 100  # decoded, resized and grey, as the model takes them
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputFileError, match="empty: no images"):
        list(read_batches(tmp_path / "empty", 4, ModelInputs.images([8, 8, 1])))


def test_a_corrupt_image_is_named_by_its_path_and_nothing_is_dropped(tmp_path):
    from kerasflow import samples

    folder = samples.shapes(tmp_path / "images", per_class=3, size=12, seed=0)
    broken = folder / "cross" / "cross_001.png"
    broken.write_bytes(broken.read_bytes()[:40])  # a truncated file
    with pytest.raises(InputFileError, match=r"cross_001.png: not an image TensorFlow can decode"):
        list(read_batches(folder, 4, ModelInputs.images([8, 8, 1])))


def test_an_output_that_is_the_input_is_refused_and_the_input_kept(tmp_path):
    from pathlib import Path

    from tasks.predict import predict_file

    rows(5).to_csv(tmp_path / "new.csv", index=False)
    before = (tmp_path / "new.csv").read_text()
    params = Path(__file__).resolve().parents[2] / "params.yaml"
    with pytest.raises(InputFileError, match=r"new.csv: --output is the input file"):
        predict_file(tmp_path / "new.csv", tmp_path / "." / "new.csv", params_path=params)
    assert (tmp_path / "new.csv").read_text() == before


def test_integer_columns_typed_as_the_signature_pass_mlflows_schema_check(tmp_path):
    """What `kerasflow reproduce` sends the registered model: a CSV's integer column, as the signature's double."""
    import mlflow

    from kerasflow import tracking
    from kerasflow.config import TrackingParams
    from tasks.features import as_signature
    from tests.conftest import use_store
    from tests.unit.helpers import log_mixed_model

    use_store(tmp_path / "mlflow.db")
    experiment_id = tracking.configure(TrackingParams(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"), tmp_path)
    with tracking.open_run(experiment_id):
        uri, _, _, _ = log_mixed_model(tmp_path, "classification")
    model = mlflow.pyfunc.load_model(uri)
    data = pd.DataFrame({"size": [1, 2, 3], "color": ["red", "green", "blue"]})  # size read as int64
    with pytest.raises(Exception, match="int64"):
        model.predict(data)
    typed = as_signature(data, model.unwrap_python_model().config.inputs)
    assert typed["size"].dtype == "float64" and len(model.predict(typed)) == 3


def test_a_registered_version_whose_files_changed_is_refused_by_name(tmp_path):
    """Code added to a registered version's model_interface.py in the artifact store never runs."""
    import mlflow

    from kerasflow import tracking
    from kerasflow.config import RegisterParams, TrackingParams
    from tasks.register import decide
    from tests.conftest import use_store
    from tests.unit.helpers import log_mixed_model

    use_store(tmp_path / "mlflow.db")
    experiment_id = tracking.configure(TrackingParams(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"), tmp_path)
    with tracking.open_run(experiment_id) as run_id:
        uri, _, _, _ = log_mixed_model(tmp_path, "classification")
    version = tracking.register_version(uri, "mixed", run_id)
    with tracking.downloaded(uri) as local:
        digest = tracking.artifact_digest(local)
    decision = decide({"accuracy": 1.0}, {"accuracy": 0.5}, None, "accuracy", RegisterParams(model_name="mixed"))
    tracking.apply_decision("mixed", version, decision, "", digest)
    scorer = tracking.load_model("models:/mixed@champion").unwrap_python_model()  # the checked files load
    assert scorer.config.task == "classification"

    (interface,) = tmp_path.glob("mlartifacts/**/model_interface.py")
    interface.write_text(interface.read_text() + "\nraise SystemExit('tampered code ran')\n")
    with pytest.raises(tracking.ModelTampered, match=r"models:/mixed/1: its files .* are not the ones registered"):
        tracking.load_model("models:/mixed@champion")
    with pytest.raises(tracking.ModelTampered):
        tracking.load_version("mixed", version)
    assert mlflow.MlflowClient().get_model_version("mixed", version).tags[tracking.DIGEST_TAG] == digest
