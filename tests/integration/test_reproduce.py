"""`kerasflow reproduce`: a registered version rebuilt from its record alone (commit, data hash, params) in a
temporary worktree, matching exactly on the CPU; data that no cache holds is named by its hash."""

from __future__ import annotations

import shutil

import pytest
import yaml

from tests.conftest import use_store
from tests.integration.servers import BIN, clone_project, project_env, run

pytestmark = pytest.mark.integration

MODEL = "kerasflow-digits-cnn"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A git + DVC project whose `dvc repro` registered version 1 (default params: deterministic on the CPU),
    then committed."""
    root = tmp_path_factory.mktemp("p")
    env = project_env(root)
    clone_project(root, env)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["epochs"] = 3
    params["register"].update(thresholds={}, require_beat_baseline=False)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "commit", "-qam", "a short training"], root, env)
    run(["dvc", "repro"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "the run's lock file and reports"], root, env)
    return root, env


def test_a_registered_version_rebuilds_exactly_from_its_record(recorded):
    root, env = recorded
    result = run([str(BIN / "kerasflow"), "reproduce", f"models:/{MODEL}/1"], root, env, check=False)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert "match within 1e-06: metrics differ by at most 0," in result.stdout
    assert "accuracy" in result.stdout and "predictions" in result.stdout
    assert "warning" not in result.stdout  # recorded from a clean tree

    client = use_store(root / "mlflow.db")
    (version,) = client.search_model_versions(f"name = '{MODEL}'")  # the registry is as it was
    assert (
        client.get_run(version.run_id)
        .data.tags["reproduced"]
        .endswith("match within 1e-06: metrics differ by at most 0, predictions by at most 0")
    )
    # The workspace is as it was: no stray worktree, nothing changed.
    assert run(["git", "status", "--porcelain"], root, env).stdout == ""
    assert len(run(["git", "worktree", "list"], root, env).stdout.strip().splitlines()) == 1


def test_data_no_cache_holds_is_named_by_its_hash(recorded):
    root, env = recorded
    client = use_store(root / "mlflow.db")
    (version,) = client.search_model_versions(f"name = '{MODEL}'")
    md5 = client.get_run(version.run_id).data.tags["data.md5"]
    cache = root / ".dvc" / "cache"
    shutil.move(cache, root / "cache-elsewhere")
    try:
        result = run([str(BIN / "kerasflow"), "reproduce", f"models:/{MODEL}@champion"], root, env, check=False)
    finally:
        shutil.move(root / "cache-elsewhere", cache)
    assert result.returncode == 2
    assert f"the raw dataset with md5 {md5} is in none of" in result.stderr and "DVC cache" in result.stderr
    assert len(run(["git", "worktree", "list"], root, env).stdout.strip().splitlines()) == 1
