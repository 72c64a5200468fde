"""The pipeline's stages, defined once.

Each stage function reads its inputs from the layout, calls the work in `tasks/`,
writes its outputs atomically and does its MLflow logging. The Prefect flow wraps
these functions as tasks; `python -m flows.dvc_stage NAME` calls the same functions
for `dvc repro`; `dvc.yaml` is generated from `build_stages`, so the two cannot drift.

TensorFlow and MLflow are imported inside the stages that use them, so a DVC process
running a data stage does not pay for them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from kerasflow.config import Params, flatten
from kerasflow.io import atomic_dir, atomic_path, read_json, write_json, write_text
from kerasflow.layout import Layout

logger = logging.getLogger(__name__)

# How far the logged model's predictions may stray from the trained model's (float32 rounding).
ROUND_TRIP_TOLERANCE = 1e-5


@dataclass(frozen=True)
class Context:
    """Where a pipeline run works: its layout, the project root (where mlflow.db lives), and
    the MLflow run when the caller opened one before the stages (the Prefect flow does)."""

    layout: Layout
    project_root: Path
    run_id: str | None = None


def run_tags(context: Context) -> dict[str, str]:
    """Lineage of a pipeline run: git commit, and the Prefect flow run or DVC stage."""
    from kerasflow import tracking

    return {**tracking.git_tags(context.project_root), **tracking.orchestration_tags()}


def begin_run(params: Params, context: Context) -> str:
    """Create the MLflow run of a whole pipeline run (left RUNNING), with params and lineage."""
    from kerasflow import tracking

    experiment_id = tracking.configure(params.tracking, context.project_root)
    tags = {**run_tags(context), "kerasflow.workdir": str(context.layout.root)}
    return tracking.create_run(experiment_id, tags, flatten(params.to_dict()))


def source_params(params: Params, project_root: Path) -> Any:
    """The ingest section with a relative `path` taken from the project root (the params file's folder)."""
    path = params.ingest.path
    if not path or Path(path).is_absolute():
        return params.ingest
    return params.ingest.model_copy(update={"path": str(project_root / path)})


def ingest(params: Params, context: Context) -> dict[str, Any]:
    """Load the configured source into data/raw (Parquet + metadata with its md5)."""
    from tasks.ingest import ingest_dataset

    layout = context.layout
    return ingest_dataset(source_params(params, context.project_root), params.seed, layout.raw_data, layout.raw_meta)


def validate(params: Params, context: Context) -> dict[str, Any]:
    """Check the raw data against the recorded schema (inferred and recorded on the first run)."""
    from tasks.validate import DataValidationError, validate_dataset

    layout = context.layout
    meta = read_json(layout.raw_meta)
    frame = pd.read_parquet(layout.raw_data)
    recorded = read_json(layout.schema) if layout.schema.is_file() else None
    try:
        schema, report = validate_dataset(frame, meta, recorded, params.validate_)
    except DataValidationError as error:
        # The report says what went wrong; preprocess refuses to run on a failed report.
        write_json(layout.validation_report, {"ok": False, "problems": error.problems, "md5": meta["md5"]})
        raise
    if recorded is None:
        write_json(layout.schema, schema)
        logger.info("recorded the dataset schema in %s", layout.schema)
    write_json(layout.validation_report, report)
    return report


def preprocess(params: Params, context: Context) -> dict[str, Any]:
    """Split the validated raw data and fit the scaling statistics."""
    from tasks.preprocess import preprocess_dataset, write_processed

    layout = context.layout
    report = read_json(layout.validation_report)
    meta = read_json(layout.raw_meta)
    if not report.get("ok") or report.get("md5") != meta["md5"]:
        raise RuntimeError(f"{layout.validation_report}: the raw dataset has not passed validation; run validate first")
    splits, state = preprocess_dataset(pd.read_parquet(layout.raw_data), meta, params.preprocess, params.seed)
    state["data_md5"] = meta["md5"]
    state["source"] = meta["source"]
    write_processed(splits, state, layout.processed_dir)
    return state["rows"]


def backup_folder(params: Params, context: Context, data_md5: str) -> Path:
    """Where training keeps its per-epoch backup: one folder per (run folder, model, training, data),
    so a rerun with the same config resumes and a changed config never restores the wrong weights."""
    config = {"model": params.model.model_dump(mode="json"), "train": params.train.model_dump(mode="json")}
    config.update(seed=params.seed, data=data_md5)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    return context.layout.backup_dir / digest


def resume_history(backup: Path, run_id: str) -> pd.DataFrame:
    """Epochs a killed attempt finished: replayed into this run so its history has each epoch once.

    The killed attempt's own MLflow run (left RUNNING by the kill) is marked FAILED.
    """
    from kerasflow import tracking
    from tasks.train import completed_epochs

    done = completed_epochs(backup)
    log = backup / "epochs.csv"
    marker = backup / "mlflow_run.json"
    if marker.is_file() and (previous := read_json(marker)["run_id"]) != run_id:
        tracking.mark_failed(previous)
    write_json(marker, {"run_id": run_id})
    if not done or not log.is_file():
        log.unlink(missing_ok=True)
        return pd.DataFrame()
    earlier = pd.read_csv(log).drop_duplicates("epoch", keep="last")
    earlier = earlier[earlier["epoch"] < done].sort_values("epoch")
    tracking.replay_epochs(earlier.to_dict("records"))
    logger.info("resuming training after epoch %d of an interrupted attempt", done)
    return earlier.drop(columns="epoch").reset_index(drop=True)


def train(params: Params, context: Context) -> dict[str, Any]:
    """Adapt the input layers and fit the model; log params, lineage, epochs and the model to the MLflow run."""
    import keras
    import mlflow

    from kerasflow import tracking
    from kerasflow.runtime import set_seeds
    from tasks.backbone import unfreeze
    from tasks.features import adapt_inputs, raw_example, target_scaling
    from tasks.model import DataSpec, build_model, compile_model, export_for_serving
    from tasks.preprocess import read_split, read_state
    from tasks.train import (
        accelerator_plan,
        class_weights,
        device_summary,
        distribution_strategy,
        predict,
        train_model,
    )

    layout = context.layout
    state = read_state(layout.processed_dir)
    inputs = state["inputs"]
    train_split, val_split = read_split(layout.processed_dir, "train"), read_split(layout.processed_dir, "val")
    set_seeds(params.seed)
    strings = any(entry["kind"] != "numeric" for entry in inputs.get("columns", []))
    plan = accelerator_plan(params.train, string_inputs=strings)
    # Adapt and build before the run exists: a bad model spec fails without leaving a run behind.
    fitted = adapt_inputs(inputs, train_split.x, params.preprocess)
    fitted["target"] = target_scaling(train_split.y, state["task"], params.preprocess)
    data = DataSpec.from_state(state, fitted)
    strategy = distribution_strategy(plan)
    with strategy.scope():
        model = build_model(params.model, data, jit_compile=plan["jit_compile"])
    weights = class_weights(params.train.class_weight, train_split.y, state.get("classes"))

    def fine_tune(model: keras.Model) -> None:
        with strategy.scope():
            unfreeze(model, params.train.fine_tune.layers)
            compile_model(model, params.model, data, plan["jit_compile"], params.train.fine_tune.learning_rate)

    experiment_id = tracking.configure(params.tracking, context.project_root)
    tags = {
        **run_tags(context),
        "data.md5": state["data_md5"],
        "data.source": ":".join(str(part) for part in state["source"].values() if part),
        "data.inputs": inputs["kind"],
        "model.api": params.model.api,
        **{f"train.{key}": str(value) for key, value in {**device_summary(), **plan}.items()},
    }
    backup = backup_folder(params, context, state["data_md5"])
    model_config = {
        "task": state["task"],
        "classes": state.get("classes"),
        "inputs": inputs,
        "threshold": params.model.decision_threshold,
    }
    with tracking.open_run(experiment_id, run_id=context.run_id) as run_id:
        mlflow.set_tags(tags)
        tracking.log_params(flatten(params.to_dict()))
        earlier = resume_history(backup, run_id)
        # The best-weights checkpoint grows beside the backup; outputs appear only when training succeeded.
        checkpoint = backup.with_name(f"{backup.name}.best.weights.h5")
        history = train_model(
            model,
            train_split,
            val_split,
            inputs,
            params.train,
            params.seed,
            checkpoint_path=checkpoint,
            backup_dir=backup,
            callbacks=[tracking.epoch_logger()],
            class_weight=weights,
            fine_tune=fine_tune,
        )
        frame = pd.concat([earlier, pd.DataFrame(history)], ignore_index=True)
        frame.insert(0, "epoch", range(len(frame)))
        lines: list[str] = []
        model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
        write_text(layout.model_summary, "\n".join(lines) + "\n")
        mlflow.log_artifact(str(layout.model_summary))
        example = raw_example(val_split.x, inputs)
        with atomic_dir(layout.models_dir) as folder:
            # models/ appears whole, and only once the logged model has proved it predicts what this one does.
            model.save(folder / layout.model_file.name)
            export_for_serving(model, folder / layout.saved_model_dir.name, inputs)
            write_json(folder / layout.model_config.name, model_config)
            if checkpoint.is_file():
                (folder / "checkpoints").mkdir()
                os.replace(checkpoint, folder / "checkpoints" / layout.checkpoint_file.name)
            model_uri = tracking.log_model(
                folder / layout.model_file.name,
                model_config,
                example,
                saved_model=folder / layout.saved_model_dir.name,
            )
            difference = tracking.round_trip_difference(
                model_uri, example, predict(model, example, inputs), state.get("classes")
            )
            mlflow.log_metric("roundtrip_max_abs_diff", difference)
            if difference > ROUND_TRIP_TOLERANCE:
                raise RuntimeError(
                    f"the logged model's predictions differ from the trained model's by {difference:g} "
                    f"(tolerance {ROUND_TRIP_TOLERANCE:g}); not publishing it"
                )
        with atomic_path(layout.history) as temporary:
            frame.to_csv(temporary, index=False)
        mlflow.log_metric("epochs_trained", len(frame))
        payload = {
            "run_id": run_id,
            "experiment_id": experiment_id,
            "model_uri": model_uri,
            "tracking_uri": mlflow.get_tracking_uri(),
            "run_url": tracking.run_url(run_id, experiment_id),
        }
        write_json(layout.run_file, payload)
    shutil.rmtree(backup, ignore_errors=True)
    keras.backend.clear_session()
    return {**payload, "epochs_trained": len(frame), "final_loss": float(frame["loss"].iloc[-1])}


def load_model_safely(path: Path) -> Any:
    """Load a .keras file with Keras' safe mode: a model that would run code (a Lambda layer) is refused."""
    import keras

    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run the train stage first")
    try:
        return keras.saving.load_model(path, safe_mode=True)
    except ValueError as error:
        if "safe_mode" in str(error) or "Lambda" in str(error):
            raise ValueError(
                f"{path}: refused to load a model that carries Python code (e.g. a Lambda layer); "
                "kerasflow loads models with safe_mode=True"
            ) from error
        raise


def evaluate(params: Params, context: Context) -> dict[str, Any]:
    """Score the model and the scikit-learn baseline on the test split; write metrics and plots."""
    import mlflow

    from kerasflow import tracking
    from tasks.evaluate import (
        baseline_metrics,
        is_better,
        plot_binary_curves,
        plot_confusion_matrix,
        plot_training_curves,
        predictions_frame,
        primary_metric,
        score_predictions,
    )
    from tasks.preprocess import read_split, read_state
    from tasks.train import predict

    layout = context.layout
    run_info = read_json(layout.run_file)
    state = read_state(layout.processed_dir)
    threshold = read_json(layout.model_config).get("threshold", 0.5)
    task, n_classes, inputs = state["task"], len(state.get("classes") or []), state["inputs"]
    train_split, test_split = read_split(layout.processed_dir, "train"), read_split(layout.processed_dir, "test")
    model = load_model_safely(layout.model_file)
    outputs = predict(model, test_split.x, inputs)
    scores = score_predictions(task, test_split.y, outputs, n_classes, threshold)
    baseline_name, baseline = baseline_metrics(
        params.evaluate, task, train_split, test_split, n_classes, params.seed, inputs, threshold
    )
    primary = primary_metric(params.evaluate, task)
    if primary not in scores:
        raise ValueError(f"evaluate.primary_metric {primary!r} is not a {task} metric; choose from {sorted(scores)}")
    result = {
        "task": task,
        "primary_metric": primary,
        "test": scores,
        "baseline": {"name": baseline_name, **baseline},
        "beats_baseline": is_better(primary, scores[primary], baseline[primary]),
        "test_rows": len(test_split),
        "decision_threshold": threshold if n_classes == 2 else None,
    }
    predictions = predictions_frame(task, test_split.y, outputs, state.get("classes"), threshold)
    layout.plots_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(layout.predictions) as temporary:
        predictions.to_csv(temporary, index=False)
    pictures = [layout.plots_dir / "training_curves.png"]
    plot_training_curves(pd.read_csv(layout.history), pictures[0])
    if task == "classification":
        pictures.append(layout.plots_dir / "confusion_matrix.png")
        plot_confusion_matrix(predictions, pictures[-1])
    if n_classes == 2:
        pictures += [layout.plots_dir / "roc_curve.png", layout.plots_dir / "precision_recall_curve.png"]
        plot_binary_curves(test_split.y, outputs, threshold, pictures[-2], pictures[-1])
    experiment_id = tracking.configure(params.tracking, context.project_root)
    with tracking.open_run(experiment_id, run_id=run_info["run_id"]):
        mlflow.log_metrics({f"test_{name}": value for name, value in scores.items()})
        mlflow.log_metrics({f"baseline_{name}": value for name, value in baseline.items()})
        mlflow.set_tag("baseline.model", baseline_name)
        for picture in pictures:
            mlflow.log_artifact(str(picture), artifact_path="plots")
        mlflow.log_artifact(str(layout.history), artifact_path="plots")
        # The metrics file is written last: it is what register (and dvc metrics) read.
        write_json(layout.metrics, result)
        mlflow.log_artifact(str(layout.metrics))
    return result


def register(params: Params, context: Context) -> dict[str, Any]:
    """Register the model version and move `champion` only if the gate blesses it."""
    import mlflow

    from kerasflow import tracking
    from tasks.preprocess import read_split
    from tasks.register import apply_decision, champion_metrics, decide, register_version, smoke_test

    layout = context.layout
    run_info = read_json(layout.run_file)
    result = read_json(layout.metrics)
    name = params.register_.model_name
    experiment_id = tracking.configure(params.tracking, context.project_root)
    with tracking.open_run(experiment_id, run_id=run_info["run_id"]) as run_id:
        champion_version, champion = champion_metrics(name)
        version = register_version(run_info["model_uri"], name, run_id)
        example = read_split(layout.processed_dir, "val").x[:5]  # Raw input, as a caller would send it.
        smoke_ok, smoke_detail = smoke_test(f"models:/{name}/{version}", example)
        decision = decide(
            result["test"], result["baseline"], champion, result["primary_metric"], params.register_, smoke_ok
        )
        apply_decision(name, version, decision)
        payload = {
            "model_name": name,
            "version": version,
            "previous_champion": champion_version,
            "smoke_test": smoke_detail,
            "run_id": run_id,
            **decision.to_dict(),
        }
        mlflow.set_tags({"registry.model": name, "registry.version": version, "registry.alias": decision.alias})
        mlflow.log_dict(payload, "registration.json")
        write_json(layout.registration, payload)
    logger.info("registered %s version %s as %s: %s", name, version, decision.alias, "; ".join(decision.reasons))
    return payload


@dataclass(frozen=True)
class Stage:
    """One pipeline stage, with what `dvc.yaml` declares for it."""

    name: str
    run: Callable[[Params, Context], dict[str, Any]]
    code: tuple[str, ...]
    params: tuple[str, ...]
    deps: tuple[str, ...] = ()
    outs: tuple[str, ...] = ()
    # Small files git keeps (not DVC's cache): reports, the recorded schema.
    git_outs: tuple[str, ...] = ()
    persist: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()


def build_stages(layout: Layout) -> list[Stage]:
    """The stages in pipeline order, with paths relative to the layout root."""
    path = layout.relative
    raw = (path(layout.raw_data), path(layout.raw_meta))
    return [
        Stage("ingest", ingest, ("tasks/ingest.py",), ("seed", "ingest"), outs=raw),
        Stage(
            "validate",
            validate,
            ("tasks/validate.py",),
            ("validate",),
            deps=raw,
            git_outs=(path(layout.validation_report),),
            persist=(path(layout.schema),),
        ),
        Stage(
            "preprocess",
            preprocess,
            ("tasks/preprocess.py", "tasks/features.py"),
            ("seed", "preprocess"),
            deps=(*raw, path(layout.validation_report)),
            outs=(path(layout.processed_dir),),
        ),
        Stage(
            "train",
            train,
            ("tasks/features.py", "tasks/backbone.py", "tasks/model.py", "tasks/train.py", "kerasflow/pyfunc_model.py"),
            # preprocess: the input layers are adapted here (scaling, categories, text vocabulary).
            ("seed", "preprocess", "model", "train", "tracking"),
            deps=(path(layout.processed_dir),),
            outs=(path(layout.models_dir),),
            git_outs=(path(layout.run_file), path(layout.model_summary), path(layout.history)),
        ),
        Stage(
            "evaluate",
            evaluate,
            ("tasks/evaluate.py",),
            ("seed", "evaluate", "tracking"),
            deps=(path(layout.processed_dir), path(layout.models_dir), path(layout.run_file), path(layout.history)),
            git_outs=(path(layout.predictions), path(layout.plots_dir / "training_curves.png")),
            metrics=(path(layout.metrics),),
        ),
        Stage(
            "register",
            register,
            ("tasks/register.py",),
            ("register", "tracking"),
            deps=(path(layout.metrics), path(layout.run_file), path(layout.processed_dir)),
            git_outs=(path(layout.registration),),
        ),
    ]


def run_pipeline(params: Params, context: Context) -> dict[str, dict[str, Any]]:
    """Every stage in order, in this process, without Prefect or DVC (for notebooks and tests)."""
    return {stage.name: stage.run(params, context) for stage in build_stages(context.layout)}
