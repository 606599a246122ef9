"""Painting image files and Ayna splits with a model given as a package folder, a .pt file or an MLflow URI.

Every model reference is resolved to a local model file (models/model.pt format) and loaded with
modelio.load_model, and, for a package, the `paint` section stored with it (the package stage's model_config);
painting is one of painting.painter's painters. Images of any size and mode are read as ingest reads them
(ayna.load_image with size None) and come back at their own size; every output file is written atomically.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from polycolor.config.monitoring import MonitorConfig
from polycolor.config.paint import PaintConfig, parse_paint
from polycolor.data.ayna import OUTPUTS, load_image, read_split, write_png
from polycolor.errors import ConfigError, PolycolorError, first_line
from polycolor.fileio import atomic_output
from polycolor.monitoring.observe import Watch
from polycolor.nn import modelio
from polycolor.painting.painter import painter
from polycolor.serving import registry

DEFAULT_PACKAGE = "package"  # the package stage's output, relative to the repo root
CHAMPION_URI = "models:/{name}@champion"
MODEL_ARTIFACT = "model"  # key of models/model.pt among the pyfunc's artifacts (see pyfunc.py)


def paint_images(loaded: modelio.LoadedModel, images: list[np.ndarray], colours: list[str],
                 cfg: PaintConfig = PaintConfig(), painter_name: str = "painted") -> list[np.ndarray]:
    """A painter (config.PAINTERS; "painted" paints as `cfg` says) over images of mixed sizes: each uint8
    (H_i, W_i, 3) comes back at its own size.

    A painter takes one (N, H, W, 3) batch, so images are grouped by size and put back in their order.
    """
    if len(images) != len(colours):
        raise PolycolorError(f"{len(images)} images but {len(colours)} colours")
    predict = painter(painter_name, loaded, cfg)
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        by_size.setdefault(im.shape[:2], []).append(i)
    out: list[np.ndarray] = [np.empty(0, np.uint8)] * len(images)
    for rows in by_size.values():
        painted = predict(np.stack([images[i] for i in rows]), [colours[i] for i in rows])  # (n, H, W, 3)
        for i, im in zip(rows, painted):
            out[i] = im
    return out


def watched(watch: Watch | None, loaded: modelio.LoadedModel, images: list[np.ndarray], colours: list[str],
            cfg: PaintConfig, painter_name: str) -> list[np.ndarray]:
    """paint_images, with one prediction-log record per image when `watch` is given (monitoring.observe)."""
    if watch is None:
        return paint_images(loaded, images, colours, cfg, painter_name)
    return watch.paint(loaded, images, colours, cfg, painter_name)


# ----------------------------------------------------------------------------------- model references

def is_mlflow_uri(ref: str) -> bool:
    """models:/..., runs:/... and other scheme://... references (not local paths)."""
    return ref.startswith(("models:/", "runs:/")) or "://" in ref


def champion_uri(registered_model: str) -> str | None:
    """models:/<name>@champion when the tracking store exists and has that alias, else None. A registry whose
    champion history names versions but which has no @champion lost it (its version was deleted): that is refused,
    since falling back to package/ would paint with another model than the one the team serves."""
    from polycolor.tracking.store import configure

    if registry.missing_store() is not None:
        return None
    configure()
    try:
        has = registry.CHAMPION in registry.aliases(registered_model)
    except PolycolorError:  # no such registered model: there is no champion
        return None
    history = [] if has else registry.champion_history(registered_model)
    if history:
        raise PolycolorError(f"registered model {registered_model!r} has no @champion, though version {history[-1]} "
                             "was its last (deleted, or the alias removed): restore the newest champion that exists "
                             "(polycolor promote --rollback), or pass --model package to paint with package/")
    return CHAMPION_URI.format(name=registered_model) if has else None


@dataclass(frozen=True)
class ModelSource:
    """A resolved model reference: the local model file, and the `paint` section stored with it (None for a bare
    model file, which stores none)."""

    path: Path
    paint: PaintConfig | None
    origin: str = ""  # what was resolved, as `predict` without --model names it: path or URI, version, content hash
    sha256: str = ""  # the registry's content hash (registry.package_digest; a bare file's modelio.content_hash)
    version: str = ""  # the registered version, where the reference names one
    reference: Path | None = None  # the package's reference profile folder (monitoring.profile), where it has one


@dataclass
class Served:
    """A model loaded to paint, with what it paints and logs with."""

    loaded: modelio.LoadedModel
    paint: PaintConfig | None  # the stored paint section; None for a bare model file
    origin: str
    watch: Watch | None  # the prediction log's view of this model; None when logging is off


def _mlmodel(folder: Path) -> dict:
    import yaml

    mlmodel = folder / "MLmodel"
    if not mlmodel.is_file():
        raise PolycolorError(f"{folder} is not a model package (no MLmodel file)")
    try:
        conf = yaml.safe_load(mlmodel.read_text()) or {}
        return conf["flavors"]["python_function"]
    except (yaml.YAMLError, KeyError, TypeError):
        raise PolycolorError(f"{mlmodel} has no python_function flavor: not a polycolor package") from None


def paint_from_model_config(config: Any, where: str) -> PaintConfig:
    """The `paint` section in a package's model_config (the pyfunc's context.model_config, MLmodel's
    python_function.config), validated; a package saved before paint was stored holds none and paints with
    the defaults. `where` names the package in errors."""
    try:
        return parse_paint(config.get(registry.PAINT_KEY) if isinstance(config, dict) else None)
    except ConfigError as e:
        raise PolycolorError(f"{where}: stored {e}") from None


def stored_paint(folder: Path) -> PaintConfig:
    """The `paint` section a package folder stores (paint_from_model_config)."""
    return paint_from_model_config(_mlmodel(folder).get("config"), str(folder))  # MLmodel's key for model_config


def package_identity(folder: Path) -> str:
    """The content hash the registry keys a package folder's version on (registry.package_digest)."""
    return registry.package_digest(modelio.load_payload(model_file_in_package(folder)),
                                   _mlmodel(folder).get("config", {}).get(registry.PAINT_KEY) or {})


def reference_in(folder: Path) -> Path | None:
    """A package folder's reference profile folder (its pyfunc artifact `reference`), None for an older package."""
    from polycolor.monitoring.profile import REFERENCE_ARTIFACT

    ref = folder / "artifacts" / REFERENCE_ARTIFACT
    return ref if ref.is_dir() else None


def model_file_in_package(folder: Path) -> Path:
    """The model file inside an MLflow model folder written by the package stage (its pyfunc artifact `model`)."""
    try:
        rel = _mlmodel(folder)["artifacts"][MODEL_ARTIFACT]["path"]
    except (KeyError, TypeError):
        raise PolycolorError(f"{folder / 'MLmodel'} names no `{MODEL_ARTIFACT}` artifact: "
                             "not a polycolor package") from None
    path = folder / rel
    if not path.is_file():
        raise PolycolorError(f"{folder}: model artifact {rel} is missing")
    return path


@contextmanager
def resolve(ref: str | None, registered_model: str = "polycolor") -> Iterator[ModelSource]:
    """The local model file for `ref`, with the paint section stored with it: a package folder, a .pt file or an
    MLflow URI (downloaded to a temporary folder that lives as long as the context). None means the champion when
    the registry has one, else package/.
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
        from polycolor.tracking.store import configure

        missing = registry.missing_store()
        if missing is not None:
            raise PolycolorError(f"cannot resolve {ref}: no MLflow store at {missing}")
        import mlflow
        from mlflow.exceptions import MlflowException

        configure()
        with tempfile.TemporaryDirectory(prefix="polycolor-model-") as tmp:
            try:
                local = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=tmp))
            except MlflowException as e:
                raise PolycolorError(f"cannot resolve {ref}: {first_line(e)}") from None
            version = registered_version(ref)
            if version is not None:  # the registry's own hash decides: swapped artifacts are refused
                registry.verify_download(version.name, version, local)
            origin = ref if version is None else (f"{ref} (version {version.version}, {registry.CONTENT_TAG} "
                                                  f"{(version.tags or {}).get(registry.CONTENT_TAG, 'not recorded')})")
            tag = "" if version is None else (version.tags or {}).get(registry.CONTENT_TAG, "")
            number = "" if version is None else str(version.version)
            if local.is_file():
                yield ModelSource(local, None, origin, tag or modelio.content_hash(modelio.load_payload(local)),
                                  number)
            else:
                yield ModelSource(model_file_in_package(local), stored_paint(local), origin,
                                  tag or package_identity(local), number, reference_in(local))
        return
    path = Path(ref)
    if path.is_dir():
        digest = package_identity(path)
        yield ModelSource(model_file_in_package(path), stored_paint(path),
                          f"{path.resolve()} ({registry.CONTENT_TAG} {digest})", digest, "", reference_in(path))
    elif path.is_file():
        yield ModelSource(path, None, str(path.resolve()), modelio.content_hash(modelio.load_payload(path)))
    else:
        raise PolycolorError(f"model not found: {ref} (a package folder, a .pt file or a models:/ URI)")


def registered_version(ref: str) -> Any | None:
    """The registered version a models:/NAME/VERSION or models:/NAME@ALIAS reference names (a one-line
    PolycolorError when it has none); None for any other reference (runs:/..., a logged model's models:/m-...)."""
    import re

    m = re.fullmatch(r"models:/([^/@]+)(?:/(\d+)|@([^/]+))", ref)
    if m is None or m.group(1).startswith("m-"):
        return None
    from polycolor.tracking.store import configure

    configure()
    return registry.get_version(m.group(1), m.group(2), m.group(3) or registry.CANDIDATE)


def load_with_paint(ref: str | None, registered_model: str = "polycolor", monitor: MonitorConfig | None = None,
                    face: str = "predict") -> Served:
    """Resolve `ref` (see resolve) and load the model on the CPU, with the paint section stored with it (a
    package's or a registered model's own, None for a bare model file: the caller falls back to its params), the
    source's origin (ModelSource.origin) and its Watch on the prediction log (monitoring.log.location(); None
    when logging is off). `monitor` is the package's monitor section where it stores one."""
    from polycolor.monitoring.observe import watch_for

    with resolve(ref, registered_model) as source:
        loaded = modelio.load_model(source.path)
        watch = watch_for(face, registered_model, source.version, source.sha256, source.reference, monitor)
    return Served(loaded, source.paint, source.origin, watch)


# ----------------------------------------------------------------------------------- painting files

def paint_to_file(loaded: modelio.LoadedModel, image: np.ndarray, colour: str, output_path: Path,
                  cfg: PaintConfig = PaintConfig(), painter_name: str = "painted", watch: Watch | None = None) -> None:
    """Paint one uint8 (H, W, 3) image with `colour` and write the PNG to `output_path` (atomically), H x W; logged
    when `watch` is given."""
    (painted,) = watched(watch, loaded, [image], [colour], cfg, painter_name)
    with atomic_output(output_path) as tmp:
        write_png(tmp, painted)


def predict_split(loaded: modelio.LoadedModel, split_dir: Path, out_dir: Path, max_pixels: int | None = None,
                  cfg: PaintConfig = PaintConfig(), painter_name: str = "painted",
                  watch: Watch | None = None) -> list[Path]:
    """Paint every entry of an Ayna split (its data.json) and write one PNG per entry into `out_dir`, named as
    the entry's output_image; returns the written paths in data.json order. Inputs over `max_pixels` are refused
    before any is decoded in full."""
    samples = read_split(split_dir)
    cache: dict[Path, np.ndarray] = {}
    for s in samples:  # entries may share an input file; decode it once
        if s.input_path not in cache:
            cache[s.input_path] = load_image(s.input_path, None, max_pixels)
    painted = watched(watch, loaded, [cache[s.input_path] for s in samples], [s.colour for s in samples], cfg,
                      painter_name)
    written = []
    for s, image in zip(samples, painted):
        target = out_dir / s.output_path.relative_to(Path(split_dir) / OUTPUTS)
        with atomic_output(target) as tmp:
            write_png(tmp, image)
        written.append(target)
    return written
