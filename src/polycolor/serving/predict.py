"""Painting image files and Ayna splits with a model given as a package folder, a .pt file or an MLflow URI.

Every model reference is resolved to a local model file (models/model.pt format) and loaded with
modelio.load_model; painting is painting.painter.paint. Images of any size and mode are read as ingest reads them
(ayna.load_image with size None) and come back at their own size; every output file is written atomically.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from polycolor.data.ayna import OUTPUTS, load_image, read_split, write_png
from polycolor.errors import PolycolorError
from polycolor.fileio import atomic_output
from polycolor.nn import modelio
from polycolor.painting.painter import paint

DEFAULT_PACKAGE = "package"  # the package stage's output, relative to the repo root
CHAMPION_URI = "models:/{name}@champion"
MODEL_ARTIFACT = "model"  # key of models/model.pt among the pyfunc's artifacts (see pyfunc.py)


def paint_images(loaded: modelio.LoadedModel, images: list[np.ndarray], colours: list[str]) -> list[np.ndarray]:
    """painter.paint over images of mixed sizes: each uint8 (H_i, W_i, 3) comes back at its own size.

    paint takes one (N, H, W, 3) batch, so images are grouped by size and put back in their order.
    """
    if len(images) != len(colours):
        raise PolycolorError(f"{len(images)} images but {len(colours)} colours")
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        by_size.setdefault(im.shape[:2], []).append(i)
    out: list[np.ndarray] = [np.empty(0, np.uint8)] * len(images)
    for rows in by_size.values():
        painted = paint(loaded, np.stack([images[i] for i in rows]), [colours[i] for i in rows])  # (n, H, W, 3)
        for i, im in zip(rows, painted):
            out[i] = im
    return out


# ----------------------------------------------------------------------------------- model references

def is_mlflow_uri(ref: str) -> bool:
    """models:/..., runs:/... and other scheme://... references (not local paths)."""
    return ref.startswith(("models:/", "runs:/")) or "://" in ref


def champion_uri(registered_model: str) -> str | None:
    """models:/<name>@champion when the tracking store exists and has that alias, else None."""
    from polycolor import tracking
    from polycolor.serving import registry

    if registry.missing_store() is not None:
        return None
    tracking.configure()
    try:
        has = registry.CHAMPION in registry.aliases(registered_model)
    except PolycolorError:  # no such registered model: there is no champion
        return None
    return CHAMPION_URI.format(name=registered_model) if has else None


def model_file_in_package(folder: Path) -> Path:
    """The model file inside an MLflow model folder written by the package stage (its pyfunc artifact `model`)."""
    import yaml

    mlmodel = folder / "MLmodel"
    if not mlmodel.is_file():
        raise PolycolorError(f"{folder} is not a model package (no MLmodel file)")
    try:
        conf = yaml.safe_load(mlmodel.read_text()) or {}
        rel = conf["flavors"]["python_function"]["artifacts"][MODEL_ARTIFACT]["path"]
    except (yaml.YAMLError, KeyError, TypeError):
        raise PolycolorError(f"{mlmodel} names no `{MODEL_ARTIFACT}` artifact: not a polycolor package") from None
    path = folder / rel
    if not path.is_file():
        raise PolycolorError(f"{folder}: model artifact {rel} is missing")
    return path


@contextmanager
def local_model_file(ref: str | None, registered_model: str = "polycolor") -> Iterator[Path]:
    """A local model file for `ref`: a package folder, a .pt file or an MLflow URI (downloaded to a temporary
    folder that lives as long as the context). None means the champion when the registry has one, else package/.
    """
    if ref is None:
        ref = champion_uri(registered_model)
        if ref is None:
            from polycolor.paths import repo_root

            pkg = repo_root() / DEFAULT_PACKAGE
            if not pkg.is_dir():
                raise PolycolorError(f"no model given, no @champion in the registry and no {pkg}: pass --model")
            ref = str(pkg)
    if is_mlflow_uri(ref):
        from polycolor import tracking
        from polycolor.serving import registry

        missing = registry.missing_store()
        if missing is not None:
            raise PolycolorError(f"cannot resolve {ref}: no MLflow store at {missing}")
        import mlflow
        from mlflow.exceptions import MlflowException

        tracking.configure()
        with tempfile.TemporaryDirectory(prefix="polycolor-model-") as tmp:
            try:
                local = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=tmp))
            except MlflowException as e:
                raise PolycolorError(f"cannot resolve {ref}: {_first_line(e)}") from None
            yield local if local.is_file() else model_file_in_package(local)
        return
    path = Path(ref)
    if path.is_dir():
        yield model_file_in_package(path)
    elif path.is_file():
        yield path
    else:
        raise PolycolorError(f"model not found: {ref} (a package folder, a .pt file or a models:/ URI)")


def load(ref: str | None, registered_model: str = "polycolor") -> modelio.LoadedModel:
    """Resolve `ref` (see local_model_file) and load the model on the CPU."""
    with local_model_file(ref, registered_model) as path:
        return modelio.load_model(path)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ----------------------------------------------------------------------------------- painting files

def paint_to_file(loaded: modelio.LoadedModel, image: np.ndarray, colour: str, output_path: Path) -> None:
    """Paint one uint8 (H, W, 3) image with `colour` and write the PNG to `output_path` (atomically), H x W."""
    (painted,) = paint_images(loaded, [image], [colour])
    with atomic_output(output_path) as tmp:
        write_png(tmp, painted)


def predict_split(loaded: modelio.LoadedModel, split_dir: Path, out_dir: Path,
                  max_pixels: int | None = None) -> list[Path]:
    """Paint every entry of an Ayna split (its data.json) and write one PNG per entry into `out_dir`, named as
    the entry's output_image; returns the written paths in data.json order. Inputs over `max_pixels` are refused
    before any is decoded in full."""
    samples = read_split(split_dir)
    cache: dict[Path, np.ndarray] = {}
    for s in samples:  # entries may share an input file; decode it once
        if s.input_path not in cache:
            cache[s.input_path] = load_image(s.input_path, None, max_pixels)
    painted = paint_images(loaded, [cache[s.input_path] for s in samples], [s.colour for s in samples])
    written = []
    for s, image in zip(samples, painted):
        target = out_dir / s.output_path.relative_to(Path(split_dir) / OUTPUTS)
        with atomic_output(target) as tmp:
            write_png(tmp, image)
        written.append(target)
    return written
