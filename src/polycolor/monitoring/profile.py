"""The reference profile stored with every model version: the descriptors and embeddings of the data it was trained
and validated on, and the projection that turns the net's pooled features into a few dozen numbers.

The package stage builds it (`build_reference`) and ships it as the pyfunc artifact `reference`, a folder:
  profile.parquet   one row per reference image: descriptors (monitoring.descriptors), colour, emb_0..emb_k-1;
  projection.npz    mean (C,) and components (k, C) of a PCA of the pooled features (C = model.widths[-1]).
Every face projects its embeddings with the version's own projection, so the log and the reference share one space.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from polycolor.config.monitoring import MonitorConfig
from polycolor.config.paint import PaintConfig
from polycolor.data.ayna import SplitArrays
from polycolor.errors import PolycolorError
from polycolor.monitoring.observe import EMB_PREFIX, PROJECTION, ModelIdentity, Projection, captured, colour_kind, record
from polycolor.nn import modelio

PROFILE = "profile.parquet"
EMBEDDING_DIMS = 16  # Evidently's embedding drift is slow and once refused wide embeddings: a few dozen at most
REFERENCE_ARTIFACT = "reference"  # the pyfunc artifact key (serving.package)


def fit_projection(emb: np.ndarray, dims: int = EMBEDDING_DIMS) -> Projection:
    """A PCA (scikit-learn) of (n, C) pooled features to at most `dims` components."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=min(dims, *emb.shape), svd_solver="full").fit(emb)
    return Projection(pca.mean_, pca.components_)


def embedding_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith(EMB_PREFIX)]


def build_reference(loaded: modelio.LoadedModel, data: SplitArrays, cfg: PaintConfig, out_dir: Path) -> int:
    """Paint every image of `data` as serving paints it (the `painted` painter), describe it as the log does, fit
    the projection on the pooled features and write profile.parquet and projection.npz into `out_dir` (which
    exists). Returns the number of rows."""
    from polycolor.painting.painter import painter

    if len(data.inputs) == 0:
        raise PolycolorError("the reference profile needs at least one image")
    identity = ModelIdentity("", "", "")
    rows, pooled = [], []
    predict = painter("painted", loaded, cfg)
    for image, colour in zip(data.inputs, data.colours):
        with captured(loaded.model) as cap:
            (painted,) = predict(image[None], [colour])
        rows.append(record(image, painted, cap, colour, 0.0, face="reference", identity=identity, projection=None))
        pooled.append(np.concatenate(cap.embeddings).mean(axis=0))
    emb = np.stack(pooled)  # (n, C)
    projection = fit_projection(emb)
    frame = pd.DataFrame(rows).drop(columns=["time", "face", "model", "version", "model_sha256", "latency_ms"])
    frame["colour"] = [colour_kind(c) for c in data.colours]
    frame = pd.concat([frame, pd.DataFrame(projection.columns(emb))], axis=1)
    frame.to_parquet(out_dir / PROFILE, index=False)
    projection.save(out_dir / PROJECTION)
    return len(frame)


def sample_reference(train: SplitArrays, val: SplitArrays, n_train: int, seed: int) -> SplitArrays:
    """A seeded sample of `n_train` training pairs (all when fewer) and every validation pair."""
    rng = np.random.default_rng([seed, 0x90F11E])
    keep = np.sort(rng.choice(len(train.inputs), size=min(n_train, len(train.inputs)), replace=False))
    pick = lambda a, k: [a[i] for i in k]  # noqa: E731
    return SplitArrays(
        inputs=np.concatenate([train.inputs[keep], val.inputs]),
        targets=np.concatenate([train.targets[keep], val.targets]),
        colours=pick(train.colours, keep) + list(val.colours),
        rgb=np.concatenate([train.rgb[keep], val.rgb]),
        shapes=pick(train.shapes, keep) + list(val.shapes),
    )


def profile_dataset(model_path: Path, data_dir: Path, paint: PaintConfig, cfg: MonitorConfig, seed: int,
                    out_dir: Path) -> int:
    """The package stage's reference: monitor.reference_samples training pairs of `data_dir` and all its validation
    pairs, profiled with the model file at `model_path` (build_reference) into `out_dir`."""
    from polycolor.data.ayna import load_split
    from polycolor.data.ingest import SPLITS

    loaded = modelio.load_model(model_path)
    train, val = SPLITS
    data = sample_reference(load_split(data_dir / train), load_split(data_dir / val),
                            cfg.reference_samples, seed)
    return build_reference(loaded, data, paint, out_dir)


def load_reference(folder: Path, where: str) -> tuple[pd.DataFrame, Projection]:
    """The profile and projection in `folder`; a one-line PolycolorError naming `where` when it has none."""
    if not (folder / PROFILE).is_file() or not (folder / PROJECTION).is_file():
        raise PolycolorError(f"{where} has no reference profile (packaged before monitoring): repackage it with "
                             "`dvc repro package` to monitor it")
    return pd.read_parquet(folder / PROFILE), Projection.load(folder / PROJECTION)
