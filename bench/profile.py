"""Where each stage's seconds go, on the default workload (`python -m bench.profile`).

Each stage runs as `dvc repro` runs it, one process of its own (`python -m flows.dvc_stage NAME`), twice:
under `-X importtime` for what its imports cost (TensorFlow, MLflow, Prefect, pandas, scikit-learn, ...), and under
cProfile for what its own steps cost (the functions of kerasflow/, tasks/ and flows/ by cumulative time: opening
the run, loading the model, scoring, plotting, logging and exporting the model, the round-trip check,
registering). Results: bench/results/profile.md and .json.
"""

from __future__ import annotations

import argparse
import json
import pstats
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.__main__ import RESULTS, STAGES, machine, make_project, run

# The imports a stage may pay for, by top-level package.
PACKAGES = ("tensorflow", "keras", "mlflow", "prefect", "pandas", "sklearn", "matplotlib", "pyarrow", "scipy", "dvc")
OWN = ("/kerasflow/", "/tasks/", "/flows/")


def import_seconds(stderr: str) -> dict[str, float]:
    """Each top-level package's cumulative import time (s) from `-X importtime` lines (`import time: self |
    cumulative | name`); a package counts once, at its outermost import."""
    found: dict[str, float] = {}
    for line in stderr.splitlines():
        parts = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if not parts:
            continue
        name = parts.group(4).split(".")[0]
        if name in PACKAGES and "." not in parts.group(4):
            found[name] = max(found.get(name, 0.0), int(parts.group(2)) / 1e6)
    return found


def own_steps(profile: Path, top: int) -> list[tuple[str, float]]:
    """The project's functions with the most cumulative time (s), the stage's `run` left out (it is the total)."""
    stats = pstats.Stats(str(profile))
    rows = []
    for (file, _line, name), (_, _, _, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        if any(part in file for part in OWN) and not (name == "run" and "/stages/" in file):
            module = file.split("/work/", 1)[-1].split("site-packages/", 1)[-1]
            module = re.sub(r"^.*?/(kerasflow|tasks|flows)/", r"\1/", module)
            rows.append((f"{module}:{name}", cumulative))
    return sorted(rows, key=lambda item: -item[1])[:top]


def profile_stages(folder: Path, top: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    before = folder.with_name(folder.name + "-before-stage")
    for name in STAGES:
        # The stage under cProfile first, then once more under -X importtime (its outputs are the ones the next
        # stage reads). Register goes back to the project as it was before the first: a second register would
        # find the first one's version as the champion and re-score it (loading TensorFlow), which a pipeline's
        # register with no champion does not. (The other stages' second runs are those of a repeated `dvc repro`.)
        if name == "register":
            shutil.copytree(folder, before, symlinks=True)
        started = time.perf_counter()
        run([sys.executable, "-m", "cProfile", "-o", str(folder.parent / f"{name}.prof"), "-m", "flows.dvc_stage",
             name], folder)  # fmt: skip
        profiled = time.perf_counter() - started
        if name == "register":
            shutil.rmtree(folder)
            before.rename(folder)
        seconds, output = run([sys.executable, "-X", "importtime", "-m", "flows.dvc_stage", name], folder)
        results[name] = {
            "seconds": seconds,
            "profiled_seconds": profiled,
            "imports": import_seconds(output),
            "steps": own_steps(folder.parent / f"{name}.prof", top),
        }
        sys.stderr.write(f"profile: {name} {seconds:.1f} s\n")
    return results


def markdown(results: dict[str, Any], date: str) -> str:
    lines = [
        f"# Where each stage's time goes (default workload, {date})",
        "",
        "`python -m bench.profile`: each stage as `dvc repro` runs it (one process), on the shipped params "
        "(digits CNN). `seconds` is the stage's wall time; imports are cumulative `-X importtime` figures of the "
        "outermost import of each package (a package imported inside another is counted there too); steps are "
        "kerasflow's own functions by cumulative cProfile time (nested: a step includes the steps it calls; "
        "cProfile slows Python code, not TensorFlow's kernels).",
        "",
        f"Machine: {machine()}.",
        "",
        "| stage | seconds | imports (s) |",
        "|---|---|---|",
    ]
    for name, entry in results.items():
        ranked = sorted(entry["imports"].items(), key=lambda item: -item[1])
        imports = ", ".join(f"{package} {value:.1f}" for package, value in ranked)
        lines.append(f"| {name} | {entry['seconds']:.1f} | {imports} |")
    for name, entry in results.items():
        lines += ["", f"## {name} ({entry['seconds']:.1f} s; {entry['profiled_seconds']:.1f} s profiled)", ""]
        lines += ["| step | cumulative s |", "|---|---|"]
        lines += [f"| `{step}` | {value:.2f} |" for step, value in entry["steps"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--top", type=int, default=12, help="own functions listed per stage")
    parser.add_argument("--output", default=str(RESULTS / "profile"), help="results path, without suffix")
    args = parser.parse_args(argv)
    date = time.strftime("%Y-%m-%d %H:%M")
    with tempfile.TemporaryDirectory(prefix="kerasflow-profile-") as name:
        folder = make_project(Path(name) / "project", {})
        results = profile_stages(folder, args.top)
    output = Path(args.output)
    output.with_suffix(".json").write_text(json.dumps({"date": date, "machine": machine(), **results}, indent=2))
    output.with_suffix(".md").write_text(markdown(results, date) + "\n")
    sys.stdout.write(markdown(results, date) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
