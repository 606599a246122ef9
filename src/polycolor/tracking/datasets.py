"""What a run read, as MLflow datasets named after their role, digested the way DVC hashes them."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from polycolor.errors import PolycolorError
from polycolor.tracking.lineage import git_info
from polycolor.tracking.store import with_retry

CONTEXT_TAG = "mlflow.data.context"  # dataset input tag: training / validation / evaluation


def dvc_hash(path: str | Path) -> str:
    """The content hash DVC records for `path` in dvc.lock: the md5 of a file, or for a folder the md5 of its file
    list ('<md5>.dir'), computed with DVC's own tree object so the two always agree."""
    import hashlib

    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.meta import Meta
    from dvc_data.hashfile.tree import Tree

    p = Path(path)
    if p.is_file():
        return hashlib.md5(p.read_bytes()).hexdigest()
    if not p.is_dir():
        raise PolycolorError(f"cannot hash {p}: no such file or folder")
    tree = Tree()
    for f in sorted(p.rglob("*")):
        if f.is_file():
            tree.add(f.relative_to(p).parts, Meta(size=f.stat().st_size),
                     HashInfo("md5", hashlib.md5(f.read_bytes()).hexdigest()))
    tree.digest()
    return str(tree.hash_info.value)


@functools.cache
def _dvc_source_class() -> type:
    """mlflow DatasetSource for data DVC tracks: {"path": repo-relative path, "git_commit": the commit it was read
    at}. Built on first use so that importing tracking does not import mlflow."""
    from mlflow.data.dataset_source import DatasetSource

    class DVCDatasetSource(DatasetSource):
        def __init__(self, path: str, git_commit: str):
            self.path, self.git_commit = path, git_commit

        @staticmethod
        def _get_source_type() -> str:
            return "dvc"

        def load(self) -> str:  # the data is where DVC put it: `dvc checkout` at git_commit restores it
            return self.path

        @staticmethod
        def _can_resolve(raw_source: Any) -> bool:
            return False

        @classmethod
        def _resolve(cls, raw_source: Any) -> "DVCDatasetSource":
            raise NotImplementedError

        def to_dict(self) -> dict[str, Any]:
            return {"path": self.path, "git_commit": self.git_commit}

        @classmethod
        def from_dict(cls, source_dict: dict[Any, Any]) -> "DVCDatasetSource":
            return cls(str(source_dict["path"]), str(source_dict.get("git_commit", "")))

    return DVCDatasetSource


def _display_path(path: Path, root: Path) -> str:
    """`path` relative to `root` when inside it (data/dataset/validation), else as an absolute path."""
    p = path.resolve()
    try:
        return str(p.relative_to(root.resolve()))
    except ValueError:
        return str(p)


def dvc_dataset(name: str, path: str | Path, root: Path | None = None) -> Any:
    """An MLflow dataset (MetaDataset: metadata only, nothing loaded) for the folder or file `path`: digest = its DVC
    hash, source = DVCDatasetSource(path relative to the repo, git commit)."""
    from mlflow.data.meta_dataset import MetaDataset

    root = root or Path.cwd()
    source = _dvc_source_class()(_display_path(Path(path), root), git_info(root)["git_commit"])
    return MetaDataset(source, name=name, digest=dvc_hash(path))


def generated_dataset(name: str, digest: str, recipe: dict[str, str]) -> Any:
    """An MLflow dataset for data generated in memory (no file): MLflow's CodeDatasetSource, whose tags say what
    made it (`recipe`, e.g. generator and params); `digest` identifies the content."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    return MetaDataset(CodeDatasetSource(tags={k: str(v) for k, v in recipe.items()}), name=name, digest=digest)


def log_datasets(run_id: str, datasets: list[tuple[Any, str]]) -> None:
    """Log (dataset, context) pairs as the run's dataset inputs (mlflow.data.context = training / validation /
    evaluation), where the run page's Datasets panel shows them."""
    import mlflow
    from mlflow.entities import DatasetInput, InputTag

    inputs = [DatasetInput(ds._to_mlflow_entity(), tags=[InputTag(CONTEXT_TAG, context)]) for ds, context in datasets]
    with_retry(mlflow.MlflowClient().log_inputs, run_id, datasets=inputs)


def log_training_data(run_id: str, train_dir: Path, val_dir: Path) -> None:
    """The train stage's inputs as datasets `train` (context training) and `val` (context validation)."""
    log_datasets(run_id, [(dvc_dataset("train", train_dir), "training"), (dvc_dataset("val", val_dir), "validation")])
