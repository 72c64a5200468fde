"""The `kerasflow` command: run the pipeline once through Prefect, or one DVC stage."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kerasflow.overrides import override_options, params_options, parse_assignments
from kerasflow.runtime import quiet_defaults

if TYPE_CHECKING:
    from kerasflow.records import Evaluation, PipelineResult, StudyResult


def check_model(params: Any) -> Any:
    """Each layer of params.yaml's model made once (TensorFlow's start-up lines left out): a bad argument stops the
    command here, with exit 2, before any stage runs. Returns the params."""
    from kerasflow.runtime import import_quietly

    import_quietly("tasks.model").check_spec(params.model)
    return params


def params_ok(args: argparse.Namespace, overrides: dict[str, Any], *checks: Any) -> bool:
    """Load the command's params file with its overrides and run `checks` on it (each takes the params and returns
    them): True, or False once the error is written (the command then exits 2, before any server starts)."""
    from kerasflow.config import ConfigError, load_params

    try:
        params = load_params(args.params, overrides)
        for check in checks:
            params = check(params)
    except ConfigError as error:
        # Prefect formats the logs of flow runs; the command's own errors go straight to stderr.
        sys.stderr.write(f"kerasflow: {error}\n")
        return False
    return True


def failed(error: Exception, what: str) -> int:
    """One message for a failed pipeline or study: an expected failure's own (exit 2 for params, else 1), no
    traceback (Prefect's logs keep it); anything else is named as a failure of kerasflow's, with its type."""
    from kerasflow.config import ConfigError
    from kerasflow.errors import expected_message, is_expected

    if is_expected(error):
        sys.stderr.write(f"kerasflow: {expected_message(error)}\n")
        return 2 if isinstance(error, ConfigError) else 1
    sys.stderr.write(f"kerasflow: {what} failed: {type(error).__name__}: {error}\n")
    return 1


def interrupted(what: str) -> int:
    """Ctrl-C: one line, and the shell's exit code for SIGINT (128 + 2). The flow has marked its MLflow run KILLED
    and reported its end to Prefect; the temporary server stops as the command exits."""
    sys.stderr.write(f"kerasflow: the {what} was stopped (Ctrl-C); its MLflow run is marked KILLED\n")
    return 130


def report(result: PipelineResult) -> str:
    registration = result.registration
    lines = ["", "kerasflow: pipeline finished", f"  MLflow run      {result.run_id}"]
    lines.append(f"  outputs in      {result.workdir}")
    reference = result.reference
    for name, value in result.metrics.items():
        baseline = result.baseline.get(name)
        versus = f"   (baseline {baseline:.4f}" if baseline is not None else ""
        if versus and reference.get(name) is not None:
            versus += f", reference {reference[name]:.4f}"
        versus += ")" if versus else ""
        lines.append(f"  test {name:<10} {value:.4f}{versus}")
    if reference:
        from kerasflow.notes import reference_settings

        name = result.evaluation.reference_name
        lines.append(f"  reference       {name} ({reference_settings(name)}) on the same rows")
    lines += evidence_lines(result.evaluation, result.min_slice_rows)
    lines += [
        f"  registered      {registration.model_name} version {registration.version} -> {registration.alias}",
        *(
            f"  {'decision' if position == 0 else '':<15} {reason}"
            for position, reason in enumerate(registration.reasons)
        ),
        "",
    ]
    if result.run_url:
        lines.append(f"Review it in the MLflow UI: {result.run_url}")
    else:
        page = f"http://127.0.0.1:5000/#/experiments/{result.experiment_id}/runs/{result.run_id}"
        lines += [
            f"Review it in the MLflow UI:  .venv/bin/mlflow ui --backend-store-uri {result.tracking_uri} --port 5000",
            f"then open {page}",
        ]
    return "\n".join(lines)


def evidence_lines(evaluation: Evaluation, min_slice_rows: int = 1) -> list[str]:
    """How sure the scores are: the primary metric's interval, and the weakest slice when there are slices (of
    those with `min_slice_rows` rows, when any has)."""
    from kerasflow.notes import weakest_slice

    lines = []
    low, high = evaluation.interval or (None, None)
    if low is not None and high is not None:
        note = f"; {evaluation.split_note}" if evaluation.split_note else ""
        lines.append(
            f"  95 % interval   {evaluation.primary_metric} {low:.4f} to {high:.4f} (bootstrap of the test rows{note})"
        )
    weakest = weakest_slice(evaluation, min_slice_rows)
    if weakest is not None:
        lines.append(
            f"  weakest slice   {weakest.key}: {evaluation.primary_metric} {weakest.candidate:.4f} on {weakest.rows} "
            f"rows (of {len(evaluation.slices) - 1} slices; reports/plots/slices.csv)"
        )
    return lines


def study_report(result: StudyResult) -> str:
    summary, registration = result.summary, result.registration
    counts, best = summary.counts, summary.best
    assert best is not None  # a study without a completed trial fails before it reports
    values = ", ".join(
        f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}" for key, value in best.params.items()
    )
    lines = [
        "",
        f"kerasflow: study {summary.study} finished ({summary.storage})",
        f"  trials          {counts['complete']} complete, {counts['pruned']} pruned, {counts['failed']} failed",
        f"  best            trial {best.trial}: {summary.objective} {best.value:.4g} with {values}",
        f"  registered      {registration.model_name} version {registration.version} -> {registration.alias}"
        + ("  (registered by an earlier run of this study)" if registration.reused else ""),
        f"  decision        {'; '.join(registration.reasons)}",
        "",
    ]
    if result.run_url:
        lines.append(f"Compare the trials in the MLflow UI: {result.run_url}")
    else:
        page = f"http://127.0.0.1:5000/#/experiments/{result.experiment_id}/runs/{summary.parent_run_id}"
        lines += [
            f"Compare the trials in the MLflow UI:  .venv/bin/mlflow ui --backend-store-uri {result.tracking_uri} "
            "--port 5000",
            f"then open {page}",
        ]
    return "\n".join(lines)


def tune(args: argparse.Namespace) -> int:
    """`kerasflow tune`: the tuning flow, after the params and the search space are checked."""
    from kerasflow.search_space import check_search_space

    overrides = parse_assignments(args.overrides)
    if args.n_trials is not None:
        overrides["tune.n_trials"] = args.n_trials
    if not params_ok(args, overrides, check_model, check_search_space):
        return 2
    from flows.tuning import tuning_pipeline
    from kerasflow.errors import quiet_console
    from kerasflow.io import check_writable
    from kerasflow.runtime import redact_logged_credentials, start_temporary_prefect_server

    quiet_console()
    redact_logged_credentials()
    try:
        check_writable(Path(args.params).resolve().parent)
        start_temporary_prefect_server()
        result = tuning_pipeline(params_path=args.params, overrides=overrides or None, cache_data=not args.no_cache)
    except KeyboardInterrupt:
        return interrupted("study")
    except Exception as error:
        return failed(error, "study")
    shown = json.dumps(result.to_dict(), indent=2, default=str) if args.json else study_report(result)
    sys.stdout.write(shown + "\n")
    return 0


# `kerasflow reproduce`'s exit code when the rebuild itself failed: never 1, which means "it did not match".
REBUILD_FAILED = 3


def reproduce(args: argparse.Namespace) -> int:
    """`kerasflow reproduce`: rebuild a registered version from its record; exit 0 if it matches, 1 if it does
    not, 2 if its record or data cannot be found, 3 if the rebuild failed (a crash is never a verdict)."""
    from kerasflow.config import ConfigError
    from kerasflow.runtime import configure_logging

    configure_logging()
    from flows.reproduce import ReproduceError, reproduce_in_project
    from kerasflow.errors import expected_message, is_expected

    try:
        verdict = reproduce_in_project(args.model_uri, args.params, args.tolerance)
    except (ConfigError, ReproduceError) as error:
        sys.stderr.write(f"kerasflow: {error}\n")
        return 2
    except Exception as error:  # its stages refused the data (named), a store is down, or kerasflow's own fault
        why = expected_message(error) if is_expected(error) else f"{type(error).__name__}: {error}"
        sys.stderr.write(f"kerasflow: the rebuild of {args.model_uri} failed: {why}\n")
        return REBUILD_FAILED
    lines = [f"kerasflow: {args.model_uri} rebuilt from its record", "", verdict.table(), "", verdict.summary()]
    lines += [f"warning: {warning}" for warning in verdict.warnings]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0 if verdict.matches else 1


def predict(args: argparse.Namespace) -> int:
    """`kerasflow predict`: the prediction function, without Prefect (no server to start for one file)."""
    overrides = parse_assignments(args.overrides)
    if not params_ok(args, overrides):
        return 2
    from kerasflow.errors import ExpectedError
    from kerasflow.model_interface import ModelInputError
    from tasks.predict import DriftError, InputFileError, predict_file

    try:
        result = predict_file(args.input, args.output, args.model, args.params, overrides or None)
    except (InputFileError, ModelInputError, DriftError, ExpectedError) as error:
        sys.stderr.write(f"kerasflow: {error}\n")
        return 1
    lines = [
        f"kerasflow: scored {result.rows:,} rows with {result.model_name} version {result.model_version} "
        f"in {result.seconds:.1f} s",
        f"  predictions     {result.output}",
        f"  {result.summary}",
    ]
    if result.drift:
        lines.append(f"  drift report    {result.drift_report} (and .png)")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def init(args: argparse.Namespace) -> int:
    """`kerasflow init --data PATH --target COLUMN`: params.yaml for the user's own data, each choice explained."""
    from flows.init import init_project

    # A ConfigError (exit 2) or another expected failure (exit 1) is main's one line.
    params, reasons = init_project(
        Path(args.data),
        args.target,
        Path.cwd(),
        task=args.task,
        text=args.text_column,
        image_size=args.image_size,
        model_name=args.name,
    )
    lines = [f"kerasflow: params.yaml is now a {params.ingest.task} workload on {args.data}", "", "Chosen:"]
    lines += [f"  {reason}" for reason in reasons]
    lines += [
        "",
        "The previous workload's schema is cleared; dvc.yaml and prefect.yaml follow params.yaml.",
        "Run it with `kerasflow run` or `dvc repro`; change anything in params.yaml first if you like.",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def accept_schema(args: argparse.Namespace) -> int:
    """`kerasflow accept-schema`: record the current raw data's schema, accepting a change validate refused."""
    from kerasflow.config import ConfigError, load_params
    from kerasflow.layout import Layout
    from kerasflow.runtime import configure_logging

    configure_logging()
    from flows.stages.validate import accept

    try:
        params = load_params(args.params)
        root = Path(args.params).resolve().parent
        layout = Layout(root)
        if not layout.raw_meta.is_file():
            # After `kerasflow run` the raw dataset is in the flow's cache, keyed as the flow keys it.
            from flows.training import cached_raw_dir

            found = cached_raw_dir(params, root)
            layout = Layout(root, raw_dir=found) if found is not None else layout
        schema = accept(params, layout)
    except (ConfigError, FileNotFoundError) as error:
        sys.stderr.write(f"kerasflow: {error}\n")
        return 2
    sys.stdout.write(f"kerasflow: recorded the schema of {schema.source} ({len(schema.columns)} columns)\n")
    return 0


def use_example(name: str | None, overrides: dict[str, Any]) -> int:
    from flows import examples

    root = Path.cwd()
    if not name:
        sys.stdout.write("\n".join(examples.available(root)) + "\n")
        return 0
    params = examples.use_example(name, root, overrides or None)  # a ConfigError is main's one line, exit 2
    sys.stdout.write(
        f"params.yaml is now examples/{name} (model {params.register_.model_name}); dvc.yaml follows it.\n"
        "Run it with `dvc repro` or `kerasflow run`.\n"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    """`kerasflow run`: the training flow once, after the params and every layer of the model are checked."""
    overrides = parse_assignments(args.overrides)
    if not params_ok(args, overrides, check_model):  # before Prefect starts a server for a bad config
        return 2
    from flows.training import training_pipeline
    from kerasflow.errors import quiet_console
    from kerasflow.io import check_writable
    from kerasflow.runtime import redact_logged_credentials, start_temporary_prefect_server

    quiet_console()
    redact_logged_credentials()
    try:
        check_writable(Path(args.workdir) if args.workdir else Path(args.params).resolve().parent)
        start_temporary_prefect_server()
        result = training_pipeline(
            params_path=args.params,
            overrides=overrides or None,
            workdir=args.workdir,
            isolate=args.isolate,
            cache_data=not args.no_cache,
        )
    except KeyboardInterrupt:
        return interrupted("run")
    except Exception as error:
        return failed(error, "pipeline")
    sys.stdout.write((json.dumps(result.to_dict(), indent=2, default=str) if args.json else report(result)) + "\n")
    return 0


def serve(args: argparse.Namespace) -> int:
    """`kerasflow serve`: serve the training flow; each served run gets its own run folder, as on a work pool."""
    from flows.training import training_pipeline

    training_pipeline.serve(name=args.name, parameters={"params_path": args.params, "isolate": True})
    return 0


def stage(args: argparse.Namespace) -> int:
    from flows.dvc_stage import main as stage_main

    return stage_main([args.name])


def example(args: argparse.Namespace) -> int:
    return use_example(args.name, parse_assignments(args.overrides))


def parser() -> argparse.ArgumentParser:
    """The `kerasflow` command line; each command's function is its `handler`."""
    params, overrides = params_options(), override_options()  # the options several commands share, declared once
    cached = argparse.ArgumentParser(add_help=False)
    cached.add_argument("--no-cache", action="store_true", help="run ingest and preprocess even if cached")
    cached.add_argument("--json", action="store_true", help="print the result as JSON")

    top = argparse.ArgumentParser(prog="kerasflow", description="Keras pipelines on Prefect, DVC and MLflow.")
    commands = top.add_subparsers(dest="command", required=True)

    def command(name: str, handler: Any, help: str, *shared: argparse.ArgumentParser) -> argparse.ArgumentParser:
        found = commands.add_parser(name, help=help, parents=list(shared))
        found.set_defaults(handler=handler)
        return found

    running = command("run", run, "run the whole pipeline once as a Prefect flow", params, overrides, cached)
    running.add_argument("--workdir", default=None, help="where models and reports go (default: beside params)")
    running.add_argument("--isolate", action="store_true", help="give the run a folder of its own under runs/")
    serving = command("serve", serve, "serve the flow (no work pool needed); trigger runs from Prefect", params)
    serving.add_argument("--name", default="kerasflow-serve", help="the deployment name (default: kerasflow-serve)")
    tuning = command(
        "tune", tune, "search params.yaml's tune.space; register the best configuration", params, overrides, cached
    )
    tuning.add_argument("--n-trials", type=int, default=None, help="override tune.n_trials")
    rebuild = command("reproduce", reproduce, "rebuild a registered version from its record; compare", params)
    rebuild.add_argument("model_uri", help="models:/NAME/VERSION or models:/NAME@ALIAS")
    rebuild.add_argument("--tolerance", type=float, default=1e-6, help="largest difference that matches (1e-6)")
    command("stage", stage, "run one stage as `dvc repro` does").add_argument("name")
    scoring = command(
        "predict", predict, "score a file with the champion (or --model); check it for drift", params, overrides
    )
    scoring.add_argument("--input", required=True, help="a .csv or .parquet file, a .npy of images, or an image folder")
    scoring.add_argument("--output", default=None, help="a .csv or .parquet file (default: beside the input)")
    scoring.add_argument("--model", default=None, help="a model URI (default: models:/<register.model_name>@champion)")
    starting = command("init", init, "write params.yaml for your own CSV, Parquet file or image folder")
    starting.add_argument("--data", required=True, help="a .csv or .parquet file, or a folder of class sub-folders")
    starting.add_argument("--target", help="the column to predict (not for an image folder)")
    starting.add_argument("--task", choices=["classification", "regression"], help="when the target's values mislead")
    starting.add_argument("--text-column", help="the column of free text (found by itself where it can be)")
    starting.add_argument("--image-size", type=int, help="images are resized to this many pixels square")
    starting.add_argument("--name", help="the registered model's name (default: from the data's)")
    command("accept-schema", accept_schema, "record the raw data's schema, accepting a changed one", params)
    # Listed for --help; `main` hands its arguments to flows/train_worker.py before parsing.
    command("train-worker", None, "one worker of train.distribute: multi_worker (TF_CONFIG: the cluster)")
    chosen = command("example", example, "make examples/NAME the project's workload (params, dvc.yaml)", overrides)
    chosen.add_argument("name", nargs="?", help="the example (omit to list them)")
    return top


def main(argv: list[str] | None = None) -> int:
    quiet_defaults()
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train-worker"]:  # its own options, all of them (argparse's REMAINDER would drop some)
        from flows.train_worker import main as worker_main

        return worker_main(argv[1:])
    args = parser().parse_args(argv)
    from kerasflow.config import ConfigError
    from kerasflow.errors import expected_message, is_expected

    try:
        return args.handler(args)
    except ConfigError as error:  # a bad param or a malformed --set: one line, exit 2
        sys.stderr.write(f"kerasflow: {error}\n")
        return 2
    except Exception as error:  # an expected failure no command caught (a read-only folder, a full disk): one line
        if not is_expected(error):
            raise
        sys.stderr.write(f"kerasflow: {expected_message(error)}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
