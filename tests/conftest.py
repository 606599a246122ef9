"""Shared fixtures: the real Ayna data beside the checkout, a tiny synthetic dataset, the stage scripts, throwaway
git copies of the project for end-to-end tests, and the team stack (PostgreSQL + S3 + MLflow server)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from polycolor.config.data import IngestConfig
from polycolor.data.ingest import ingest

REPO = Path(__file__).parents[1]
# Tests paint a lot and are not predictions anyone asked for: the prediction log is off unless a test (the
# monitoring tests) points it at a folder of its own. Set here, so every process a test starts inherits it.
os.environ["POLYCOLOR_PREDICTION_LOG"] = "off"
AYNA_DIR = REPO.parent / "shared" / "ayna-dataset"
AYNA_VAL = AYNA_DIR / "validation"
TINY_PRESET = yaml.safe_load((REPO / "presets" / "tiny.yaml").read_text())  # presets/tiny.yaml as a dict


def real_ayna(split: str | None = None) -> Path:
    """The real Ayna dataset beside the checkout (56 training + 5 validation pairs), or one split of it; read it,
    never write to it. Absent: the test skips here, and fails under CI=true, where it must be (fail_or_skip)."""
    splits = [split] if split else ["training", "validation"]
    missing = [s for s in splits if not (AYNA_DIR / s / "data.json").is_file()]
    if missing:
        fail_or_skip(f"the real Ayna dataset is not at {AYNA_DIR} (no {', '.join(missing)}/data.json); CI has it "
                     f"beside the checkout")
    return AYNA_DIR / split if split else AYNA_DIR


@pytest.fixture(scope="session")
def ayna_dir() -> Path:
    """The real Ayna dataset (real_ayna)."""
    return real_ayna()


@pytest.fixture(scope="session")
def ayna_val() -> Path:
    """The real Ayna validation split (real_ayna)."""
    return real_ayna("validation")


def tree_digest(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under root: compares outputs byte for byte."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


TINY = IngestConfig(image_size=32, train_samples=10, val_samples=4, scale=(0.25, 0.4), offset=0.05,
                    outline_width=(1, 2), random_colour_fraction=0.3)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic dataset written by ingest at 32 px (10 training, 4 validation pairs). Treat it as read-only."""
    out = tmp_path_factory.mktemp("tiny") / "dataset"
    ingest(TINY, 0, out)
    return out


@pytest.fixture(scope="session")
def stage():
    """Import a stage script by name (`stage("ingest").main([...])`), so tests call main() in-process."""
    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(f"stage_{name}", REPO / "stages" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load


@pytest.fixture
def small_source(tmp_path: Path) -> Path:
    """A fresh, writable Ayna-layout folder at 32 px (3 training, 2 validation pairs; two training entries share
    one input file, as in the real data), for tests that break it on purpose."""
    from polycolor.data import ayna, synth

    root = tmp_path / "source"
    for split, n, seed in (("training", 3, 1), ("validation", 2, 2)):
        a = synth.generate(IngestConfig(image_size=32, shapes=("square", "star")), n, seed)
        inputs, names = a.inputs.copy(), [f"{s}{i}.png" for i, s in enumerate(a.shapes)]
        if split == "training":  # entry 1 reuses entry 0's input (as red_star/blue_star share star.png)
            inputs[1], names[1] = inputs[0], names[0]
            a.targets[1] = a.targets[0]
        outs = [f"{c.lstrip('#')}_{names[i][:-4]}_{i}.png" for i, c in enumerate(a.colours)]
        ayna.write_split(root / split, inputs, a.targets, a.colours, names, outs)
    return root


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty sqlite MLflow store with its schema, made once per session (creating the schema takes seconds):
    tests copy it to get a fresh store of their own."""
    from polycolor.tracking.store import configure

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
        configure()
    return db


# ------------------------------------------------------------------------------------------- end-to-end helpers

def sh(args: list[str], cwd: Path, env: dict, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command; with `check`, a non-zero exit fails the test showing the command's output tails."""
    p = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def deep_update(base: dict, over: dict) -> dict:
    for k, v in over.items():
        base[k] = deep_update(dict(base.get(k) or {}), v) if isinstance(v, dict) else v
    return base


def new_project(root: Path, *, tiny: bool = True, ayna: bool = True, overrides: dict | None = None) -> dict[str, str]:
    """A git repo at `root` holding the project's files (tracked and new, as git sees them, no outputs), with the
    tiny preset written into params.yaml when `tiny`, then `overrides`, and the real Ayna validation split as an
    absolute extra set when `ayna` (real_ayna: without it the test skips, or fails under CI=true). Returns the
    environment to run its pipeline in (polycolor.bench.pipeline_env: no MLFLOW_/DVC_ settings, so its stores are its
    own)."""
    from polycolor.bench import copy_project, pipeline_env

    extra_sets = {"ayna_real": {"path": str(real_ayna("validation")), "required": True}} if ayna else {}
    copy_project(REPO, root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    if tiny:
        params = deep_update(params, TINY_PRESET)
    params = deep_update(params, overrides or {})
    params["evaluate"]["extra_sets"] = extra_sets
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = pipeline_env()
    # A local identity: DVC commits experiments to hidden refs, and CI machines may have no global git config.
    for args in (["git", "init", "-q", "-b", "main"], ["git", "config", "user.email", "ci@polycolor.invalid"],
                 ["git", "config", "user.name", "polycolor tests"], ["git", "add", "-A"],
                 ["git", "commit", "-qm", "tiny" if tiny else "project"]):
        sh(args, root, env)
    return env


def run_queue(root: Path, env: dict, experiments: list[list[str]], jobs: int = 2, timeout: float = 900) -> str:
    """Queue one `dvc exp run` per flag list, run the queue with `jobs` workers, wait until it is done and assert
    that every experiment succeeded. Returns the last `dvc queue status` text."""
    for flags in experiments:
        sh([sys.executable, "-m", "dvc", "exp", "run", "--queue", *flags], root, env)
    sh([sys.executable, "-m", "dvc", "queue", "start", "-j", str(jobs)], root, env)
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = sh([sys.executable, "-m", "dvc", "queue", "status"], root, env).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(5)
    else:
        raise AssertionError(f"queue did not finish:\n{status}")
    assert status.count("Success") == len(experiments), status
    return status

# ------------------------------------------------------------------------------------------- parallel workers

# `make test` runs the suite on pytest-xdist workers (`-n 2 --dist loadfile`): most of a serial run waits on
# processes and servers starting, not on the CPU. A test file runs whole on one worker, in order, since its module
# fixtures (a tiny project that has run the pipeline) serve tests that read what earlier ones left. The session's
# `team_stack` starts on each worker that runs a test on it, each on its own free ports and folder. (xdist's
# `--dist loadgroup` would keep those on one worker, but with pytest 9 it no longer groups: the node ids it
# rewrites are not the ones it schedules.)


# ------------------------------------------------------------------------------------------- the team stack

def require_stack() -> None:
    """Skip when this machine cannot start the team stack (no PostgreSQL, or the `stack` extra missing); with
    CI=true fail instead, so a broken install never turns green."""
    from polycolor import stack
    from polycolor.errors import PolycolorError

    missing = next((f"{m} is not installed (pip install -e '.[stack]')"
                    for m in ("moto", "boto3", "psycopg2", "flask_wtf") if importlib.util.find_spec(m) is None), None)
    if missing is None:
        try:
            stack.postgres_bindir()
        except PolycolorError as e:
            missing = str(e)
    if missing:
        fail_or_skip(f"the team stack cannot start here: {missing}")


@pytest.fixture(scope="session")
def team_stack():
    """PostgreSQL, moto's S3 server and `mlflow server` on free loopback ports (polycolor.stack, the code behind
    `polycolor stack up`), once per session, stopped by PID at the end (require_stack says when it skips)."""
    from polycolor import stack

    require_stack()
    # Outside pytest's private (0700) basetemp: as root, PostgreSQL runs as `nobody`, who must enter the folder.
    d = Path(tempfile.mkdtemp(prefix="polycolor-stack-"))
    started = stack.start(d)  # a failure names a log under d, which is then kept
    try:
        # The server wants a login (basic auth): this session's clients are the pipeline's, as after `stack up`.
        with pytest.MonkeyPatch.context() as mp:
            for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                mp.setenv(key, started.client_env()[key])
            yield started
    finally:
        stack.stop(d, purge=True)
        shutil.rmtree(d, ignore_errors=True)


# ---- a real headless browser: Debian's chromium driven by Playwright (never a browser Playwright downloads) ----------
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def fail_or_skip(reason: str) -> None:
    """In CI (CI=true) a missing service or tool fails the test; elsewhere it skips it."""

    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium (/usr/bin/chromium, `apt-get install chromium`) under Playwright, for the page tests."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        fail_or_skip("playwright is not installed: pip install -e '.[dev]'")
    if not CHROMIUM.is_file():
        fail_or_skip(f"no browser at {CHROMIUM}: apt-get install -y chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """Where page tests save screenshots: $POLYCOLOR_SCREENSHOTS (docs/, to refresh the README's) or a tmp folder."""

    folder = Path(os.environ.get("POLYCOLOR_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def log_evaluation(train_run_id: str, folder: Path, metrics: dict) -> Path:
    """Write folder/eval.json with `metrics` and log it as the evaluate stage does: an evaluation run under the
    training run, every block's set a dataset (the package stage links exactly this run). Returns eval.json's path."""
    import json

    from polycolor.config.params import load_params
    from polycolor.evaluation import logging
    from polycolor.tracking.datasets import generated_dataset

    eval_json = folder / "eval.json"
    eval_json.write_text(json.dumps(metrics))
    (folder / "grid.png").write_bytes(b"png")
    (folder / "tables").mkdir(exist_ok=True)
    sets = [b for b, v in metrics.items() if "skipped" not in v and b != "behaviour"]
    datasets = {n: generated_dataset(n, f"digest-{n}", {"generator": "test"}) for n in sets}
    logging.log_to_mlflow(train_run_id, load_params(REPO / "params.yaml"), datasets, metrics, folder / "grid.png",
                           folder / "tables", eval_json)
    return eval_json


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_mlflow_db: Path) -> str:
    """This test's own fresh sqlite MLflow store (a copy of the empty one) as MLFLOW_TRACKING_URI, outside any DVC
    experiment; returns its URI."""
    import shutil

    shutil.copy(empty_mlflow_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    return uri
