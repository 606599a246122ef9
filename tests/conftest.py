"""Shared fixtures: the real Ayna data beside the checkout, a tiny synthetic dataset, and the stage scripts."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from polycolor.config import IngestConfig
from polycolor.data.ingest import ingest

REPO = Path(__file__).parents[1]
AYNA_DIR = REPO.parent / "shared" / "ayna-dataset"


@pytest.fixture(scope="session")
def ayna_dir() -> Path:
    """The real Ayna dataset (56 training + 5 validation pairs); read it, never write to it."""
    if not (AYNA_DIR / "training" / "data.json").is_file():
        pytest.skip(f"the real Ayna dataset is not at {AYNA_DIR}")
    return AYNA_DIR


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
        a = synth.generate_arrays(n, image_size=32, shapes=("square", "star"), seed=seed)
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
    from polycolor import tracking

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
        tracking.configure()
    return db


# ---- a real headless browser: Debian's chromium driven by Playwright (never a browser Playwright downloads) ----------
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def fail_or_skip(reason: str) -> None:
    """In CI (CI=true) a missing service or tool fails the test; elsewhere it skips it."""
    import os

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
    import os

    folder = Path(os.environ.get("POLYCOLOR_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def log_evaluation(train_run_id: str, folder: Path, metrics: dict) -> Path:
    """Write folder/eval.json with `metrics` and log it as the evaluate stage does: an evaluation run under the
    training run, every block's set a dataset (the package stage links exactly this run). Returns eval.json's path."""
    import json

    from polycolor import tracking
    from polycolor.config import load_params
    from polycolor.evaluation import evaluate

    eval_json = folder / "eval.json"
    eval_json.write_text(json.dumps(metrics))
    (folder / "grid.png").write_bytes(b"png")
    (folder / "tables").mkdir(exist_ok=True)
    sets = [b for b, v in metrics.items() if "skipped" not in v and not b.endswith("reference")]
    datasets = {n: tracking.generated_dataset(n, f"digest-{n}", {"generator": "test"}) for n in sets}
    evaluate.log_to_mlflow(train_run_id, load_params(REPO / "params.yaml"), datasets, metrics, folder / "grid.png",
                           folder / "tables", eval_json)
    return eval_json
