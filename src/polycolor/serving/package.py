"""The deployment package: an MLflow pyfunc model (models from code) with a signature, an input example, its
requirements and a model card; logged to the training run and registered as a new version with alias `candidate`.

The pyfunc is serving/pyfunc.py (its entry file serving/pyfunc_entry.py is the `python_model`), the weights travel as the artifact `model`
(the self-describing models/model.pt) and are read back with torch.load(weights_only=True): nothing is unpickled.
The package needs the polycolor package installed where it runs (MLflow copies pyfunc_entry.py, which imports polycolor);
`mlflow models serve --env-manager local` in the project's environment is the supported way to serve it.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd

from polycolor.config.monitoring import MonitorConfig
from polycolor.config.paint import PAINTERS, PaintConfig
from polycolor.monitoring.profile import REFERENCE_ARTIFACT
from polycolor.errors import PolycolorError
from polycolor.evaluation.names import BEHAVIOUR, MODEL_SCORERS, metric_set
from polycolor.nn import modelio
from polycolor.nn.model import count_parameters
from polycolor.serving import pyfunc, registry

# The models-from-code file MLflow copies into the package and executes on load (read as a file, never imported).
PYFUNC_ENTRY = registry.PYFUNC_ENTRY
LOGGED_MODEL_NAME = "model"  # name of the logged model within the training run
CARD_JSON = "model_card.json"
CARD_MD = "MODEL_CARD.md"
# MLflow's model_versions.description column is String(5000); PostgreSQL enforces it (sqlite does not), and the
# default model's card is longer (issue 19). The description is the card cut to whole sections under this, with a
# margin, plus where the full card is.
DESCRIPTION_MAX = 4500
CARD_METRICS = ("psnr_mean", "psnr_min", "iou", "colour_accuracy", "bleeding")  # columns of the card table

INTENDED_USE = (
    "Fill the outline of a single polygon (black outline on a white background, as in the Ayna dataset) with a "
    "requested colour: one of the 8 Ayna colour names, another CSS colour name or #rrggbb (the rgb colour "
    "encoding accepts any colour; the embedding encoding only its vocabulary). For demos and experiments with "
    "conditional image-to-image models."
)
KNOWN_LIMITS = (
    "Trained on synthetic polygons (the 8 Ayna shapes and novel ones, gaps, wobbly, JPEG-compressed, "
    "anti-aliased and downscaled outlines, limited scale, rotation and offset); poses beyond the training "
    "ranges are scored separately as `ood` in the metrics.",
    "The network sees the model's image size: a larger input is shrunk by a min pool (the darkest pixel of each "
    "window) and its mask resized back; the painter's post-processing (the `paint` params stored with the "
    "package: canonical form, snapping to the outline) makes that exact at the input's size. Both are scored "
    "apart in the metrics: `net` (the network alone) and `painted` (what this package outputs).",
    "One polygon per image; several shapes, text, photos or filled shapes are outside what it was trained on.",
    "The output holds exactly white and the requested colour (composite head); anti-aliasing is not reproduced.",
    "Serving needs the polycolor package installed (pyfunc_entry.py imports it); use --env-manager local in the "
    "project's environment.",
)


@dataclass(frozen=True)
class PackageResult:
    """What the package stage produced; `registry_info()` is what metrics/registry.json holds."""

    name: str
    version: str
    run_id: str
    model_uri: str  # models:/<name>/<version>
    logged_model_uri: str  # models:/<logged model id> within the run

    def registry_info(self) -> dict[str, str]:
        return asdict(self)


def pip_requirements(dist: str = "polycolor") -> list[str]:
    """The installed `dist`'s own dependencies (its extras left out), as pip requirement strings."""
    try:
        reqs = importlib_metadata.requires(dist) or []
    except importlib_metadata.PackageNotFoundError:
        raise PolycolorError(f"the {dist} package is not installed (pip install -e .), cannot list its requirements")
    return [r for r in reqs if not re.search(r"\bextra\s*==", r)]


def example_outline(size: int) -> np.ndarray:
    """A square's black 2-px outline on white: uint8 (size, size, 3), the shape of the data the model expects."""
    img = np.full((size, size, 3), 255, dtype=np.uint8)
    lo, hi = size // 4, size - size // 4
    t = max(1, size // 64)  # outline thickness grows with the image, 2 px at 128
    img[lo:hi, lo:lo + t + 1] = 0
    img[lo:hi, hi - t - 1:hi] = 0
    img[lo:lo + t + 1, lo:hi] = 0
    img[hi - t - 1:hi, lo:hi] = 0
    return img


def input_example(image_size: int) -> pd.DataFrame:
    """One request row: a square outline at the model's size, to be painted red."""
    return pd.DataFrame({"image": [pyfunc.encode_png(example_outline(image_size))], "colour": ["red"]})


def model_signature() -> Any:
    """image (base64 PNG) + colour (string) in; image (base64 PNG) out; the param `painter` ("painted", the
    default, or "net": the network's own output)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "image"), ColSpec("string", "colour")]),
        outputs=Schema([ColSpec("string", "image")]),
        params=ParamSchema([ParamSpec(pyfunc.PAINTER_PARAM, "string", pyfunc.DEFAULT_PAINTER)]),
    )


def model_card(loaded: modelio.LoadedModel, *, name: str, run_info: dict[str, Any], run_params: dict[str, str],
               eval_metrics: dict[str, Any], max_pixels: int = pyfunc.MAX_PIXELS_DEFAULT,
               paint: PaintConfig = PaintConfig()) -> dict[str, Any]:
    """The model card as plain JSON data: what the model is, where it came from, how well it does, what it is for.

    No timestamps, so an unchanged model gives an unchanged card.
    """
    return {
        "name": name,
        "model": {
            "architecture": "conditional UNet",
            "config": asdict(loaded.config),
            "image_size": loaded.image_size,
            "colour_vocab": list(loaded.vocab),
            "parameters": count_parameters(loaded.model),
            "format_version": modelio.MODEL_FORMAT_VERSION,
            "meta": loaded.meta,
        },
        "lineage": {
            "run_id": run_info.get("run_id", ""),
            "experiment_id": run_info.get("experiment_id", ""),
            "run_name": run_info.get("run_name", ""),
            "dvc_exp_name": run_info.get("dvc_exp_name", ""),
            "git_commit": run_info.get("git_commit", ""),
            "data_hash": run_info.get("data_hash", ""),
        },
        "params": dict(sorted(run_params.items())),
        "metrics": eval_metrics,
        "intended_use": INTENDED_USE,
        "known_limits": list(KNOWN_LIMITS),
        "interface": {
            "input": "DataFrame: image (base64-encoded PNG, any size and mode), colour (name or #rrggbb)",
            "output": "DataFrame: image (base64-encoded RGB PNG, the input's size)",
            "max_pixels": max_pixels,  # serving.max_pixels: a larger image is refused (HTTP 400) before decoding
            "painters": list(PAINTERS),  # the predict param `painter`; "painted" paints with `paint`
            "paint": asdict(paint),  # params `paint`: the post-processing evaluation measured, stored with the model
        },
    }


def card_markdown(card: dict[str, Any]) -> str:
    """The model card as Markdown (the same content as the JSON, for people)."""
    m, lin = card["model"], card["lineage"]
    lines = [
        f"# Model card: {card['name']}",
        "",
        "## Intended use",
        card["intended_use"],
        "",
        "## Model",
        f"- architecture: {m['architecture']}, {m['parameters']:,} parameters, {m['image_size']} px",
        f"- config: {json.dumps(m['config'], sort_keys=True)}",
        f"- colour vocabulary: {', '.join(m['colour_vocab']) or '(none)'}",
        "",
        "## Lineage",
        "| key | value |",
        "|---|---|",
        *(f"| {k} | {v or '-'} |" for k, v in lin.items()),
        "",
        "## Metrics",
    ]
    blocks = {k: v for k, v in card["metrics"].items() if isinstance(v, dict) and k != BEHAVIOUR}
    if blocks:
        lines += ["| set | scorer | " + " | ".join(CARD_METRICS) + " |", "|---" * (len(CARD_METRICS) + 2) + "|"]
        for block, scorers in blocks.items():
            if "skipped" in scorers:
                lines.append(f"| {block} | skipped: {scorers['skipped']} |" + " |" * len(CARD_METRICS))
                continue
            for scorer, values in scorers.items():
                cells = [_fmt(values.get(k)) for k in CARD_METRICS]
                lines.append(f"| {block} | {scorer} | " + " | ".join(cells) + " |")
    else:
        lines.append("(no metrics)")
    behaviour = card["metrics"].get(BEHAVIOUR, {})
    if behaviour and "skipped" not in behaviour:
        lines += ["", "Behaviour (1 = holds everywhere; see polycolor.evaluation.behaviour): " + "; ".join(
            f"{scorer} " + ", ".join(f"{k} {_fmt(v)}" for k, v in values.items() if not k.endswith("_exact"))
            for scorer, values in behaviour.items())]
    lines += ["", "## Known limits", *(f"- {x}" for x in card["known_limits"]), "", "## Params"]
    lines += [f"- `{k}`: {v}" for k, v in card["params"].items()] or ["(none recorded)"]
    lines += ["", "## Interface", f"- input: {card['interface']['input']}",
              f"- output: {card['interface']['output']}",
              f"- largest image: {card['interface'].get('max_pixels', '-')} px (width x height; more is refused)",
              f"- painters (param `painter`): {', '.join(card['interface'].get('painters', ['painted']))}",
              f"- paint: {json.dumps(card['interface'].get('paint', {}), sort_keys=True)}", ""]
    return "\n".join(lines)


def card_summary(markdown: str, full_card_uri: str, limit: int = DESCRIPTION_MAX) -> str:
    """The registered version's description: the card's Markdown `markdown` up to the last whole `## ` section
    that fits in `limit` characters, the names of the sections left out, and a link to the full card
    (`full_card_uri`, the MODEL_CARD.md artifact of the version's logged model)."""
    link = f"Full model card: `{full_card_uri}` (also model_card.json beside it)."
    if len(markdown) + len(link) + 2 <= limit:
        return f"{markdown.rstrip()}\n\n{link}\n"
    head, *sections = re.split(r"(?m)^(?=## )", markdown)
    kept, left = [head], []
    for sec in sections:
        title = sec.splitlines()[0].removeprefix("## ").strip()
        if sum(map(len, kept)) + len(sec) + len(link) + 200 > limit:
            left.append(title)
        else:
            kept.append(sec)
    note = f"Left out here (too long for the registry's description): {', '.join(left)}. {link}"
    text = f"{''.join(kept).rstrip()}\n\n{note}\n"
    if len(text) > limit:  # a single section too long: cut inside it, never past the column limit
        text = f"{text[:limit - len(note) - 8].rstrip()}\n...\n\n{note}\n"
    return text


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "-"
    if isinstance(v, (int, float)):
        return f"{v:.4g}"
    return str(v)


def write_card(card: dict[str, Any], folder: Path) -> dict[str, Path]:
    """Write model_card.json and MODEL_CARD.md into `folder`; returns them keyed by pyfunc artifact name."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CARD_JSON).write_text(json.dumps(card, indent=2, sort_keys=True, default=str) + "\n")
    (folder / CARD_MD).write_text(card_markdown(card))
    return {"model_card_json": folder / CARD_JSON, "model_card_md": folder / CARD_MD}


@dataclass(frozen=True)
class Watching:
    """What a package carries for monitoring: the registered name its records give, the monitor section (what the
    log keeps) and the reference profile folder (monitoring.profile), None to package without one."""

    name: str = ""
    monitor: MonitorConfig = MonitorConfig()
    reference: Path | None = None


def pyfunc_spec(model_path: Path, card_files: dict[str, Path], image_size: int, max_pixels: int,
                paint: PaintConfig, watching: Watching = Watching()) -> dict[str, Any]:
    """The keyword arguments shared by mlflow.pyfunc.save_model (package/) and log_model (the run). The pixel
    limit, the paint section and the monitor section travel as the model_config, read by the pyfunc's
    load_context and by predict (predict.stored_paint): serving never reads params.yaml. The reference profile is
    the artifact `reference`."""
    reference = {REFERENCE_ARTIFACT: str(watching.reference)} if watching.reference is not None else {}
    return {
        "python_model": str(PYFUNC_ENTRY),
        "model_config": {pyfunc.MAX_PIXELS_KEY: int(max_pixels), registry.PAINT_KEY: asdict(paint),
                         pyfunc.NAME_KEY: watching.name, pyfunc.MONITOR_KEY: asdict(watching.monitor)},
        "artifacts": {pyfunc.MODEL_ARTIFACT: str(model_path), **{k: str(v) for k, v in card_files.items()},
                      **reference},
        "signature": model_signature(),
        "input_example": input_example(image_size),
        "pip_requirements": pip_requirements(),
    }


def check_package(path: Path, image_size: int) -> None:
    """Load the saved package through MLflow and paint the input example: the package must load and answer."""
    import mlflow

    from polycolor.monitoring.log import ENV, OFF

    # The check's painting is not a prediction anyone asked for: it is not logged (the variable is restored after).
    with mock.patch.dict(os.environ, {ENV: OFF, registry.UNREGISTERED_ENV: "1"}):  # not registered yet
        model = mlflow.pyfunc.load_model(str(path))
        example = input_example(image_size)
        out = model.predict(example)
    if list(out.columns) != [pyfunc.OUTPUT_COLUMN] or len(out) != len(example):
        raise PolycolorError(f"package {path}: the pyfunc answered columns {list(out.columns)} x {len(out)} rows")


def save_package(out_dir: Path, model_path: Path, card: dict[str, Any], image_size: int,
                 max_pixels: int = pyfunc.MAX_PIXELS_DEFAULT, paint: PaintConfig = PaintConfig(),
                 watching: Watching = Watching()) -> None:
    """mlflow.pyfunc.save_model into `out_dir` (must not exist yet), the card also at its top level, then check it."""
    import mlflow

    # MLflow loads the model to check its input example: a package not registered yet
    with tempfile.TemporaryDirectory(prefix="polycolor-card-") as tmp, \
            mock.patch.dict(os.environ, {registry.UNREGISTERED_ENV: "1"}):
        card_files = write_card(card, Path(tmp))
        mlflow.pyfunc.save_model(path=str(out_dir), **pyfunc_spec(model_path, card_files, image_size, max_pixels,
                                                                    paint, watching))
    write_card(card, out_dir)  # beside MLmodel, where people look first
    check_package(out_dir, image_size)


def log_to_run(run: Any, model_path: Path, card: dict[str, Any], image_size: int, max_pixels: int,
               paint: PaintConfig = PaintConfig(), watching: Watching = Watching()) -> Any:
    """Log the pyfunc as logged model `model` of the training run `run`; returns MLflow's ModelInfo (model_id,
    model_uri = models:/<model id>).

    The logged model is created in the run's experiment with the run as its source, then filled by Model.log with
    run_id: the run is not reopened, so its status stays as training left it (mlflow.pyfunc.log_model only logs
    to an active run, and without one MLflow would file the model under the active - Default - experiment).
    """
    import mlflow
    from mlflow.models import Model

    from polycolor.tracking.store import with_retry

    logged = with_retry(mlflow.initialize_logged_model, name=LOGGED_MODEL_NAME, source_run_id=run.info.run_id,
                        experiment_id=run.info.experiment_id, params=dict(run.data.params))
    # MLflow loads the model to check its input example: a package not registered yet
    with tempfile.TemporaryDirectory(prefix="polycolor-card-") as tmp, \
            mock.patch.dict(os.environ, {registry.UNREGISTERED_ENV: "1"}):
        card_files = write_card(card, Path(tmp))
        info = with_retry(Model.log, artifact_path=None, name=LOGGED_MODEL_NAME, flavor=mlflow.pyfunc,
                          run_id=run.info.run_id, model_id=logged.model_id,
                          **pyfunc_spec(model_path, card_files, image_size, max_pixels, paint, watching))
    return info


def link_evaluation(eval_run: Any, model_id: str) -> dict[str, float]:
    """Put the evaluation run's metrics of the model's own scorers (`<set>.net.*`, `<set>.painted.*`, the
    behavioural shares `behaviour.net.*` included) on the logged model `model_id`, each tied to the dataset it was
    computed on (the behavioural shares to val's), with mlflow.log_metrics(model_id=..., dataset=...) recorded
    against the evaluation run, which thereby gets the model as an input. The flood fill's figures stay on the run
    only: they score another method. Returns the linked {key: value}."""
    import mlflow

    from polycolor.tracking.store import with_retry

    datasets = {i.dataset.name: i.dataset for i in eval_run.inputs.dataset_inputs}
    by_set: dict[str | None, dict[str, float]] = {}
    for key, value in eval_run.data.metrics.items():
        scorer = (key.split(".") + [""])[1]
        if scorer not in MODEL_SCORERS:
            continue
        ds_name = metric_set(key)
        by_set.setdefault(ds_name if ds_name in datasets else None, {})[key] = value
    for name, values in sorted(by_set.items(), key=lambda kv: kv[0] or ""):
        with_retry(mlflow.log_metrics, values, run_id=eval_run.info.run_id, model_id=model_id,
                   dataset=datasets[name] if name else None)
    return {k: v for values in by_set.values() for k, v in values.items()}


def package_model(*, model_path: Path, out_dir: Path, run_info: dict[str, Any], eval_path: Path,
                  name: str, max_pixels: int = pyfunc.MAX_PIXELS_DEFAULT,
                  paint: PaintConfig = PaintConfig(), watching: Watching = Watching()) -> PackageResult:
    """The package stage's work: build `out_dir`, log the model to the training run, put the metrics of the
    evaluation run that wrote `eval_path` (metrics/eval.json) on it, register a new version of `name` (lineage tags,
    the model card cut to fit as description, card_summary) and point the alias `candidate` at it.

    Idempotent on the package's content: when a version with the same content hash (weights, model config,
    vocabulary, image size, paint section: registry.package_digest) is registered already, that version is
    re-tagged and made `candidate` instead, and nothing is logged again, so a re-run after a fix does not add a
    duplicate version.
    `out_dir` must not exist (main passes fileio.atomic_output's temporary); MLflow must be configured.
    """
    import mlflow

    from polycolor.tracking.eval_runs import find_evaluation_run
    from polycolor.tracking.store import with_retry

    eval_metrics = read_eval_metrics(eval_path)
    payload = modelio.load_payload(model_path)
    loaded = modelio.model_from_payload(payload, str(model_path))
    run_id = str(run_info["run_id"])
    client = mlflow.MlflowClient()
    run = with_retry(client.get_run, run_id)
    card = model_card(loaded, name=name, run_info=run_info, run_params=dict(run.data.params),
                      eval_metrics=eval_metrics, max_pixels=max_pixels, paint=paint)
    save_package(out_dir, model_path, card, loaded.image_size, max_pixels, paint, watching)
    eval_run = find_evaluation_run(run, eval_path)
    digest = registry.package_digest(payload, asdict(paint))
    tags = registry.lineage_tags(run_info) | {registry.EVAL_RUN_TAG: eval_run.info.run_id, registry.CONTENT_TAG: digest}
    existing = registry.find_by_content(name, digest)
    if existing is not None:  # the same model again: re-tag its version, link this evaluation to its logged model
        mv = registry.retag_version(name, str(existing.version), tags=tags)
        logged_uri = str(existing.source)
    else:
        logged_uri = log_to_run(run, model_path, card, loaded.image_size, max_pixels, paint, watching).model_uri
        logged = with_retry(client.get_logged_model, logged_uri.removeprefix("models:/"))
        description = card_summary(card_markdown(card), f"{logged.artifact_location}/artifacts/{CARD_MD}")
        mv = registry.register_version(name, logged_uri, tags=tags, description=description)
        if mv.source != logged_uri:  # another process registered the same content first: its version is ours
            with_retry(client.delete_logged_model, logged_uri.removeprefix("models:/"))
            logged_uri = str(mv.source)
    link_evaluation(eval_run, logged_uri.removeprefix("models:/"))
    with_retry(client.set_tag, run_id, "polycolor.registered_version", f"{name}/{mv.version}")
    return PackageResult(name=name, version=str(mv.version), run_id=run_id,
                         model_uri=f"models:/{name}/{mv.version}", logged_model_uri=logged_uri)


def read_eval_metrics(path: Path) -> dict[str, Any]:
    """metrics/eval.json as a dict; missing or malformed is a one-line PolycolorError."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PolycolorError(f"metrics file not found: {path} (run the evaluate stage first)") from None
    except json.JSONDecodeError as e:
        raise PolycolorError(f"metrics file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise PolycolorError(f"metrics file {path} must hold a JSON object")
    return data
