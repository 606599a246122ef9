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
    from polycolor import tracking

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
        tracking.configure()
    return db
