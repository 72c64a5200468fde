"""What the repository carries: committed pipeline outputs that the current code would write, and no path of the
machine that made them."""

from __future__ import annotations

import json
import re
import subprocess

from tests.conftest import REPO_ROOT

MACHINE_PATHS = re.compile(r"sqlite:////|file:///|(?<![\w.])/(?:home|root|tmp|work|Users|var)/")


def tracked(*folders: str) -> list[str]:
    listed = subprocess.run(["git", "ls-files", *folders], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return [name for name in listed.stdout.splitlines() if name]


def test_no_committed_output_carries_an_absolute_path_of_the_machine_that_made_it():
    found = []
    for name in tracked("reports", "data", "dvc.lock", "params.yaml", "dvc.yaml", "prefect.yaml"):
        path = REPO_ROOT / name
        if path.suffix in (".json", ".csv", ".txt", ".yaml", ".lock") and path.is_file():
            found += [f"{name}: {match}" for match in MACHINE_PATHS.findall(path.read_text())]
    assert not found, found


def test_committed_reports_are_what_the_current_stages_write():
    """The run file names the logged model and its files' digest, the metrics carry what register reads, the
    schema its source: a stale report from an earlier pipeline fails register or reproduce."""
    run = json.loads((REPO_ROOT / "reports" / "mlflow_run.json").read_text())
    assert {"run_id", "model_uri", "model_id", "artifacts_sha256", "tracking_uri"} <= set(run)
    metrics = json.loads((REPO_ROOT / "reports" / "metrics.json").read_text())
    assert {"test", "baseline", "primary_metric", "champion_rescored", "test_rows", "baseline_rows"} <= set(metrics)
    from kerasflow.records import Evaluation, TrainingResult

    assert TrainingResult.read(REPO_ROOT / "reports" / "mlflow_run.json").to_dict() == run
    assert Evaluation.read(REPO_ROOT / "reports" / "metrics.json").to_dict() == metrics  # the typed record reads it
    schema = json.loads((REPO_ROOT / "data" / "schema.json").read_text())
    assert schema["source"] == "sklearn:digits"


def test_the_work_modules_leave_mlflow_to_the_tracking_module():
    """tasks/ does the work; every MLflow call it needs goes through kerasflow.tracking."""
    import ast

    importing = []
    for name in tracked("tasks"):
        if name.endswith(".py"):
            tree = ast.parse((REPO_ROOT / name).read_text())
            for node in ast.walk(tree):
                modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom):
                    modules = [node.module or ""]
                importing += [f"{name}: {module}" for module in modules if module.split(".")[0] == "mlflow"]
    assert not importing, importing


def test_the_readme_is_a_front_page_and_every_documentation_page_is_in_the_site():
    """The README stays a front page (the rest is in docs/, which `mkdocs build --strict` in scripts/test.sh
    checks for broken links); every page in docs/ is reachable from the site's navigation, and every page the
    README links to exists."""
    import yaml

    readme = (REPO_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    assert readme.index("bash scripts/run.sh") < readme.index("bash scripts/test.sh")  # the first two commands
    site = yaml.safe_load((REPO_ROOT / "mkdocs.yml").read_text())

    def pages(nav: list) -> set[str]:
        found: set[str] = set()
        for entry in nav:
            for value in entry.values() if isinstance(entry, dict) else [entry]:
                found |= pages(value) if isinstance(value, list) else {value}
        return found

    assert pages(site["nav"]) == {path.name for path in (REPO_ROOT / "docs").glob("*.md")}
    for link in re.findall(r"\]\(((?:docs|tests|bench)/[^)#]+)", readme):
        assert (REPO_ROOT / link).is_file(), f"README.md links to {link}, which does not exist"
