"""tracking's MLflow 3 pieces: experiments created as model-training experiments, the dataset digest equal to DVC's
hash, and git_dirty that counts code and params but not the files the pipeline writes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import yaml

from polycolor.tracking.datasets import dvc_hash
from polycolor.tracking.lineage import git_info
from polycolor.tracking.store import EXPERIMENT_KIND_TAG, configure, ensure_experiment


def test_dvc_hash_is_what_dvc_records(tiny_dataset, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(tiny_dataset / "validation", repo / "validation")
    (repo / "validation" / "sub").mkdir()
    (repo / "validation" / "sub" / "note.txt").write_text("nested files count too\n")
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=repo, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "add", "-q", "validation"], cwd=repo, check=True)
    recorded = yaml.safe_load((repo / "validation.dvc").read_text())["outs"][0]["md5"]
    assert dvc_hash(repo / "validation") == recorded
    assert dvc_hash(repo / "validation" / "sub" / "note.txt") != recorded


def test_experiments_are_created_as_model_training(mlflow_store):
    configure()
    client = mlflow.MlflowClient()
    exp = client.get_experiment(ensure_experiment("fresh"))
    assert exp.tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    old = client.create_experiment("made-before")  # a store from before: the kind is added on first use
    assert ensure_experiment("made-before") == old
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def test_git_dirty_counts_code_and_params_not_pipeline_outputs(tmp_path):
    root = tmp_path / "proj"
    for rel in ("src/polycolor/x.py", "params.yaml", "dvc.lock", "metrics/eval.json"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("v1\n")
    git(root, "init", "-q")
    git(root, "-c", "user.email=t@t.invalid", "-c", "user.name=t", "add", "-A")
    git(root, "-c", "user.email=t@t.invalid", "-c", "user.name=t", "commit", "-qm", "one")
    assert git_info(root)["git_dirty"] == "false"
    (root / "dvc.lock").write_text("rewritten by dvc repro\n")
    (root / "metrics" / "eval.json").write_text("{}\n")
    assert git_info(root)["git_dirty"] == "false", "the pipeline's own outputs are not what a run is made of"
    (root / "params.yaml").write_text("v2\n")
    assert git_info(root)["git_dirty"] == "true"
    git(root, "checkout", "params.yaml")
    (root / "src" / "polycolor" / "new.py").write_text("# a new, untracked module\n")
    assert git_info(root)["git_dirty"] == "true", "new code counts"
    assert git_info(tmp_path / "nowhere") == {"git_commit": "", "git_dirty": "false"}
