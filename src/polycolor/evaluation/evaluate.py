"""The evaluate stage: score the model and the classical reference on every evaluation set, the same way.

Sets: the validation split ("val"), each `evaluate.extra_sets` entry (e.g. "ayna_real", the real Ayna validation
data) and an out-of-distribution set generated in memory ("ood": wider scale and offset than training). Each set is
scored twice with polycolor.evaluation.metrics: the model's predictions (polycolor.nn.inference.paint) under the set's name, the
flood-fill reference (polycolor.evaluation.reference) under "<name>_reference" ("reference" for val).

Outputs (written by `write_outputs`, each atomically): metrics/eval.json ({block: {metric: value}}, a block per
set and scorer), the tables folder (samples.csv: one row per sample, set and scorer; per_colour.csv and
per_shape.csv: means per requested-colour label / shape; confusion.csv: requested,painted rows of the model on
val, a DVC confusion plot) and the qualitative grid PNG. The metrics, the grid and the tables also go into MLflow as
a new evaluation run under the training run (`check_run`, `set_datasets` and `log_to_mlflow`, the only MLflow code
here).
"""

from __future__ import annotations

import functools
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from polycolor import tracking
from polycolor.config import Config, EvaluateConfig, IngestConfig
from polycolor.data.ayna import SplitArrays, load_split, write_png
from polycolor.data.synth import generate
from polycolor.errors import PolycolorError
from polycolor.evaluation import metrics as M
from polycolor.evaluation.behaviour import behaviour_shares
from polycolor.evaluation.reference import reference_fill
from polycolor.fileio import atomic_output
from polycolor.nn.colour import paintable
from polycolor.nn.modelio import LoadedModel, load_model
from polycolor.painting.painter import paint
from polycolor.paths import repo_path

VAL = "val"
SET_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
OOD = "ood"
OOD_SEED_STREAM = 0x00D  # the OOD set's own random stream under `seed`, apart from ingest's draws
UNSEEN = "unseen_colours"
UNSEEN_SEED_STREAM = 0x0C0  # likewise for the unseen-colour set
ROBUST_SETS = ("gappy", "hand_drawn", "thick_thin", "novel_shapes")  # and native_<size>; see robust_arrays
ROBUST_SEED_STREAMS = {"gappy": 0x6A9, "hand_drawn": 0x4D0, "thick_thin": 0x771, "novel_shapes": 0x5E7, "native": 0x256}
ROBUST_GRID_ROWS = 3  # grid rows per robustness set
BEHAVIOUR = "behaviour"  # eval.json block of the behavioural shares (the reference's: behaviour_reference)
BEHAVIOUR_SEED_STREAM = 0xBE  # draws the shifts of the behavioural test
LATENCY_SAMPLES = 5  # images timed one by one for latency_ms_p50
GRID_COLUMNS = ("input", "target", "prediction", "|error|")


@dataclass
class EvalSet:
    name: str  # the eval.json block of the model's scores; the reference's is reference_block(name)
    arrays: SplitArrays


class GridRow(NamedTuple):
    label: str  # e.g. "val #3 red"
    input: np.ndarray  # (H, W, 3) uint8
    target: np.ndarray  # (H, W, 3) uint8
    prediction: np.ndarray  # (H, W, 3) uint8


@dataclass
class Evaluation:
    """What evaluate computes; write_outputs puts it on disk."""

    metrics: dict[str, dict[str, Any]]  # eval.json content: block -> {metric: value} or {"skipped": reason}
    samples: pd.DataFrame  # per-sample rows of every scored block ("set" column)
    grid: np.ndarray  # (H, W, 3) uint8 qualitative grid
    notes: list[str] = field(default_factory=list)  # one-line warnings for the user (samples left out)

    def tables(self) -> dict[str, pd.DataFrame]:
        """The CSV tables by file name."""
        model_val = self.samples[self.samples["set"] == VAL].dropna(subset=["painted"])
        return {
            "samples.csv": self.samples,
            "per_colour.csv": M.breakdown(self.samples, ["set", "requested"]),
            "per_shape.csv": M.breakdown(self.samples, ["set", "shape"]),
            "confusion.csv": model_val[["requested", "painted"]].reset_index(drop=True),
        }


def reference_block(name: str) -> str:
    """eval.json block of the reference's scores on set `name`: "reference" for val, else "<name>_reference"."""
    return "reference" if name == VAL else f"{name}_reference"


def ood_arrays(cfg: Config, image_size: int) -> SplitArrays:
    """evaluate.ood_samples fresh pairs at image_size px: the plain training geometry (plain_geometry: ingest's
    shapes, colours and outline widths, no gaps or other variation, so the set isolates the pose) at
    evaluate.ood_scale and evaluate.ood_offset, full rotation, named colours only; deterministic in `seed` (its own
    stream, apart from ingest's)."""
    e = cfg.evaluate
    geometry = replace(plain_geometry(cfg.ingest, image_size), random_colour_fraction=0.0, scale=e.ood_scale,
                       rotation=(0.0, 360.0), offset=e.ood_offset)
    return generate(geometry, e.ood_samples, np.random.default_rng([cfg.seed, OOD_SEED_STREAM]))


def unseen_colour_arrays(cfg: Config, image_size: int) -> SplitArrays:
    """evaluate.unseen_colour_samples fresh pairs at the plain training geometry, every one painted a random #rrggbb
    (never near white): colours no training sample had, so only the rgb encoding can paint them."""
    geometry = replace(plain_geometry(cfg.ingest, image_size), random_colour_fraction=1.0)
    return generate(geometry, cfg.evaluate.unseen_colour_samples,
                    np.random.default_rng([cfg.seed, UNSEEN_SEED_STREAM]))


def plain_geometry(ingest: IngestConfig, image_size: int) -> IngestConfig:
    """The training geometry at image_size px with every variation share off: the Ayna shapes at the training poses,
    outline widths and colours."""
    return replace(ingest, image_size=image_size, gap_fraction=0.0, wobble_fraction=0.0, novel_shape_fraction=0.0,
                   wide_pose_fraction=0.0)


def concat(parts: list[SplitArrays]) -> SplitArrays:
    """The samples of every part, in order (same image size)."""
    return SplitArrays(inputs=np.concatenate([p.inputs for p in parts]),
                       targets=np.concatenate([p.targets for p in parts]),
                       colours=[c for p in parts for c in p.colours], rgb=np.concatenate([p.rgb for p in parts]),
                       shapes=[s for p in parts for s in p.shapes])


def robust_arrays(cfg: Config, image_size: int) -> dict[str, SplitArrays]:
    """The robustness sets, evaluate.robust_samples pairs each, every one from its own random stream under `seed`.
    Each is the plain training geometry (plain_geometry) with one thing changed:

      gappy          every outline has ingest.gap_count gaps of ingest.gap_length px (target: the polygon closed);
      hand_drawn     every edge wobbles by up to ingest.wobble_amplitude px;
      thick_thin     half the outlines evaluate.thick_thin_width[0] px thin, half [1] px thick;
      novel_shapes   every shape is one of synth.NOVEL_KINDS (N-gons, stars, random polygons, crosses, arrows);
      native_<size>  drawn at evaluate.native_size px, outline widths scaled with the size (not resized).
    """
    e = cfg.evaluate
    n = e.robust_samples
    plain = plain_geometry(cfg.ingest, image_size)

    def rng(name: str) -> np.random.Generator:
        return np.random.default_rng([cfg.seed, ROBUST_SEED_STREAMS[name]])

    thin, thick = e.thick_thin_width
    tt_rng = rng("thick_thin")
    f = e.native_size / image_size
    w0, w1 = plain.outline_width
    native = replace(plain, image_size=e.native_size, outline_width=(max(1, round(w0 * f)), max(1, round(w1 * f))))
    return {
        "gappy": generate(replace(plain, gap_fraction=1.0), n, rng("gappy")),
        "hand_drawn": generate(replace(plain, wobble_fraction=1.0), n, rng("hand_drawn")),
        "thick_thin": concat([generate(replace(plain, outline_width=(thin, thin)), n // 2, tt_rng),
                              generate(replace(plain, outline_width=(thick, thick)), n - n // 2, tt_rng)]),
        "novel_shapes": generate(replace(plain, novel_shape_fraction=1.0), n, rng("novel_shapes")),
        native_name(e): generate(native, n, rng("native")),
    }


def native_name(e: EvaluateConfig) -> str:
    """The eval.json block of the native-size set: native_256 for evaluate.native_size 256."""
    return f"native_{e.native_size}"


def generated_names(e: EvaluateConfig) -> tuple[str, ...]:
    """Names of the sets evaluate generates itself (not on disk)."""
    return (OOD, UNSEEN, *ROBUST_SETS, native_name(e))


def load_sets(cfg: Config, data_dir: str | Path) -> tuple[list[EvalSet], dict[str, str]]:
    """The sets to score, val first, and {name: reason} for optional extra sets that are missing.

    A missing val folder or a missing required extra set is a PolycolorError; a malformed set is one too, required
    or not (only absence is forgiven).
    """
    for name in cfg.evaluate.extra_sets:
        if not SET_NAME.match(name):
            raise PolycolorError(f"evaluate.extra_sets: name {name!r} must be letters, digits, _ or - "
                                 "(it becomes an eval.json key and an MLflow metric name)")
        if name in (VAL, BEHAVIOUR, "reference", *generated_names(cfg.evaluate)) or name.endswith("_reference") \
                or name.startswith("native_"):
            raise PolycolorError(f"evaluate.extra_sets: name {name!r} is reserved, choose another")
    val = load_split(data_dir, None)
    sets = [EvalSet(VAL, val)]
    skipped: dict[str, str] = {}
    for name, extra in cfg.evaluate.extra_sets.items():
        path = repo_path(extra.path)
        if not path.exists():
            if extra.required:
                raise PolycolorError(f"evaluate.extra_sets.{name}: required set {path} does not exist")
            skipped[name] = f"{path} does not exist"
            continue
        sets.append(EvalSet(name, load_split(path, None)))
    if cfg.evaluate.ood_samples > 0:
        sets.append(EvalSet(OOD, ood_arrays(cfg, val.inputs.shape[1])))
    else:
        skipped[OOD] = "evaluate.ood_samples is 0"
    if cfg.evaluate.unseen_colour_samples > 0:
        sets.append(EvalSet(UNSEEN, unseen_colour_arrays(cfg, val.inputs.shape[1])))
    else:
        skipped[UNSEEN] = "evaluate.unseen_colour_samples is 0"
    if cfg.evaluate.robust_samples > 0:
        sets += [EvalSet(name, arrays) for name, arrays in robust_arrays(cfg, val.inputs.shape[1]).items()]
    else:
        skipped.update({name: "evaluate.robust_samples is 0" for name in (*ROBUST_SETS, native_name(cfg.evaluate))})
    return sets, skipped


def subset(arrays: SplitArrays, keep: np.ndarray) -> SplitArrays:
    """The samples at indices `keep` (1-D int array)."""
    return SplitArrays(inputs=arrays.inputs[keep], targets=arrays.targets[keep],
                       colours=[arrays.colours[i] for i in keep], rgb=arrays.rgb[keep],
                       shapes=[arrays.shapes[i] for i in keep])


def score_set(predict: M.Predictor, arrays: SplitArrays) -> tuple[dict[str, Any], pd.DataFrame, np.ndarray]:
    """(summary block, per-sample rows, predictions (N, H, W, 3) uint8) of one predictor on one set."""
    preds = predict(arrays.inputs, arrays.colours)
    rows = M.score(arrays.targets, preds, arrays.colours, arrays.shapes)
    block = {**M.summarise(rows),
             "latency_ms_p50": M.latency_ms_p50(predict, arrays.inputs, arrays.colours, LATENCY_SAMPLES),
             "n": len(arrays)}
    return block, rows, preds


def evaluate_model(loaded: LoadedModel, sets: list[EvalSet], cfg: EvaluateConfig,
                   skipped: dict[str, str] | None = None, seed: int = 0) -> Evaluation:
    """Score the model and the reference on every set, and both behaviourally on the first
    cfg.behaviour_samples of val (sets[0]; shifts drawn from `seed`'s own stream). No file I/O, no MLflow."""
    predict_model = functools.partial(paint, loaded, batch_size=cfg.batch_size)
    metrics: dict[str, dict[str, Any]] = {}
    frames: list[pd.DataFrame] = []
    grid_rows: list[GridRow] = []
    notes: list[str] = []
    for s in sets:
        keep = paintable(s.arrays.colours, loaded.vocab, loaded.config.colour_encoding)
        if len(keep) == 0:
            reason = "no sample has a colour from the model's vocabulary (embedding encoding)"
            metrics[s.name] = metrics[reference_block(s.name)] = {"skipped": reason}
            notes.append(f"{s.name}: skipped, {reason}")
            continue
        if len(keep) < len(s.arrays):
            notes.append(f"{s.name}: {len(s.arrays) - len(keep)} sample(s) in colours outside the model's "
                         "vocabulary left out (embedding encoding)")
        arrays = subset(s.arrays, keep)
        for block, predict in ((s.name, predict_model), (reference_block(s.name), reference_fill)):
            summary, rows, preds = score_set(predict, arrays)
            metrics[block] = summary
            rows.insert(0, "set", block)
            rows["index"] = keep[rows["index"].to_numpy()]  # index into the set as loaded
            frames.append(rows)
            # the grid: the model on val and the extra sets, and a few rows of each robustness set at val's size
            rows = cfg.grid_samples if s.name not in generated_names(cfg) else ROBUST_GRID_ROWS
            if block == s.name and (s.name not in generated_names(cfg) or s.name in ROBUST_SETS):
                for i in range(min(rows, len(arrays))):
                    grid_rows.append(GridRow(f"{s.name} #{keep[i]} {arrays.colours[i]}", arrays.inputs[i],
                                             arrays.targets[i], preds[i]))
    if cfg.behaviour_samples > 0 and sets:
        keep = paintable(sets[0].arrays.colours, loaded.vocab, loaded.config.colour_encoding)[:cfg.behaviour_samples]
        sample = subset(sets[0].arrays, keep)
        for block, predict in ((BEHAVIOUR, predict_model), (reference_block(BEHAVIOUR), reference_fill)):
            metrics[block] = behaviour_shares(predict, sample, np.random.default_rng([seed, BEHAVIOUR_SEED_STREAM]))
    for name, reason in (skipped or {}).items():
        metrics[name] = {"skipped": reason}
    samples = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["set", *M.SAMPLE_COLUMNS])
    return Evaluation(metrics=metrics, samples=samples, grid=labelled_grid(grid_rows), notes=notes)


def error_map(target: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 grey image of max-over-channels |target - pred|: black = exact, white = off by 255."""
    err = np.abs(target.astype(np.int16) - pred.astype(np.int16)).max(axis=-1).astype(np.uint8)  # (H, W)
    return np.repeat(err[..., None], 3, axis=-1)


def labelled_grid(rows: list[GridRow], gap: int = 2, label: int = 12) -> np.ndarray:
    """(H, W, 3) uint8 grid: a header naming the columns, then per row a label line and the tiles
    input | target | prediction | |error|.

    Cells are as large as the largest image; smaller images are scaled up with NEAREST.
    """
    cell = max((r.input.shape[0] for r in rows), default=32)
    step = label + cell + gap  # height of one row with its label line
    width = len(GRID_COLUMNS) * (cell + gap) + gap
    canvas = Image.new("RGB", (width, label + len(rows) * step + gap), (160, 160, 160))
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(GRID_COLUMNS):
        draw.text((gap + c * (cell + gap) + 2, 0), title, fill=(0, 0, 0))
    for r, row in enumerate(rows):
        top = label + r * step
        draw.text((gap + 2, top + 1), row.label, fill=(255, 255, 255))
        for c, tile in enumerate((row.input, row.target, row.prediction, error_map(row.target, row.prediction))):
            im = Image.fromarray(tile, "RGB")
            if im.size != (cell, cell):
                im = im.resize((cell, cell), Image.Resampling.NEAREST)
            canvas.paste(im, (gap + c * (cell + gap), top + label))
    return np.asarray(canvas, dtype=np.uint8).copy()


def flat_metrics(metrics: dict[str, dict[str, Any]], prefix: str = "eval") -> dict[str, float]:
    """{"eval.val.psnr_mean": ..., "eval.ayna_real.iou": ...} ({"val.psnr_mean": ...} with prefix ""): every finite
    number; skipped blocks are left out."""
    out = {}
    for block, values in metrics.items():
        for key, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out[f"{prefix}.{block}.{key}" if prefix else f"{block}.{key}"] = float(v)
    return out


def write_outputs(ev: Evaluation, metrics_path: Path, tables_dir: Path, grid_path: Path) -> None:
    """eval.json, the tables folder and the grid PNG; all three are written to temporaries and then moved in place,
    so a failure leaves every old output as it was."""
    with atomic_output(metrics_path) as m_tmp, atomic_output(tables_dir) as t_tmp, atomic_output(grid_path) as g_tmp:
        Path(m_tmp).write_text(json.dumps(ev.metrics, indent=2) + "\n")
        Path(t_tmp).mkdir()
        for name, table in ev.tables().items():
            table.to_csv(Path(t_tmp) / name, index=False, float_format="%.6g")
        write_png(g_tmp, ev.grid)


# ---- MLflow: the only functions here that talk to the tracking store ------------------------------------------------
# Each evaluation is its own MLflow run, a child of the training run, with the evaluate params it used, the sets it
# scored as dataset inputs, and every metric tied to its set's dataset; a re-evaluation adds a run, never overwrites.

def check_run(run_info_path: Path) -> str:
    """The training run's id from the run-info file, after checking that it exists in the tracking store."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    run_id = tracking.read_run_info(run_info_path)["run_id"]
    uri = tracking.configure()
    try:
        run = tracking.with_retry(MlflowClient().get_run, run_id)
    except MlflowException as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PolycolorError(f"MLflow run {run_id} (from {run_info_path}) not found in {uri}: {first}") from None
    if run.info.lifecycle_stage == "deleted":
        raise PolycolorError(f"MLflow run {run_id} (from {run_info_path}) is deleted in {uri}")
    return run_id


def set_datasets(cfg: Config, data_dir: Path, sets: list[EvalSet]) -> dict[str, Any]:
    """{set name: MLflow dataset}: val and the extra sets are folders (DVC hash, path and commit); sets generated in
    memory (ood, unseen_colours) are digested from their arrays and say what generated them."""
    import hashlib

    out = {}
    for s in sets:
        if s.name == VAL:
            out[s.name] = tracking.dvc_dataset(s.name, data_dir)
        elif s.name in cfg.evaluate.extra_sets:
            out[s.name] = tracking.dvc_dataset(s.name, repo_path(cfg.evaluate.extra_sets[s.name].path))
        else:
            h = hashlib.sha256()
            for part in (s.arrays.inputs, s.arrays.targets, "\n".join(s.arrays.colours).encode()):
                h.update(part.tobytes() if isinstance(part, np.ndarray) else part)
            recipe = {"generator": f"polycolor.evaluation.evaluate ({s.name})", "seed": str(cfg.seed),
                      "git_commit": tracking.git_info(Path.cwd())["git_commit"]}
            out[s.name] = tracking.generated_dataset(s.name, h.hexdigest()[:32], recipe)
    return out


def log_to_mlflow(train_run_id: str, cfg: Config, datasets: dict[str, Any], metrics: dict[str, dict[str, Any]],
                  grid_path: Path, tables_dir: Path, metrics_path: Path) -> str:
    """Open a new evaluation run under the training run: evaluate params, the sets as datasets (context evaluation),
    the metrics (`val.psnr_mean`, `reference.iou`, ...), the grid, eval.json and the tables under eval/. Returns the
    evaluation run's id.

    Each metric names its set's dataset; MLflow keeps that link for metrics of a logged model, which the package
    stage creates afterwards and links to this run (serving.package.link_evaluation)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    from polycolor.config import flatten

    client = MlflowClient()
    train = tracking.with_retry(client.get_run, train_run_id)
    tags = {tracking.PARENT_RUN_TAG: train_run_id, "stage": "evaluate", **tracking.git_info(Path.cwd()),
            "dvc_exp_name": tracking.dvc_experiment_name(), tracking.EVAL_DIGEST_TAG: tracking.file_sha256(metrics_path)}
    run = tracking.with_retry(client.create_run, train.info.experiment_id, tags=tags,
                              run_name=f"{train.info.run_name}-eval-{time.strftime('%m%d-%H%M%S')}")
    run_id = run.info.run_id
    try:
        params = {"seed": cfg.seed, **flatten(cfg.evaluate, "evaluate")}
        tracking.with_retry(client.log_batch, run_id, params=[Param(k, str(v)) for k, v in params.items()])
        tracking.log_datasets(run_id, [(ds, "evaluation") for ds in datasets.values()])
        set_of = {**{n: n for n in datasets}, **{reference_block(n): n for n in datasets}}  # block -> its set
        now = int(time.time() * 1000)
        batch = []
        for block, values in metrics.items():
            ds = datasets.get(set_of.get(block, ""))
            for key, value in flat_metrics({block: values}, prefix="").items():
                batch.append(Metric(key, value, now, 0, dataset_name=ds.name if ds else None,
                                    dataset_digest=ds.digest if ds else None))
        for start in range(0, len(batch), 1000):  # log_batch takes at most 1000 metrics per call
            tracking.with_retry(client.log_batch, run_id, metrics=batch[start:start + 1000])
        tracking.with_retry(client.log_artifact, run_id, str(grid_path), "eval")
        tracking.with_retry(client.log_artifact, run_id, str(metrics_path), "eval")
        tracking.with_retry(client.log_artifacts, run_id, str(tables_dir), "eval/tables")
    except BaseException as e:
        tracking.with_retry(client.set_terminated, run_id, tracking.run_status_for(e))
        raise
    tracking.with_retry(client.set_terminated, run_id, "FINISHED")
    return run_id


def run_evaluation(cfg: Config, *, model_path: Path, data_dir: Path, run_info_path: Path, metrics_path: Path,
                   tables_dir: Path, grid_path: Path) -> Evaluation:
    """The stage: load the model and the sets, check the run, score, write the outputs, log them into the run.

    Every input is checked before the scoring starts, so a bad one fails in seconds and writes nothing.
    """
    loaded = load_model(model_path)
    sets, skipped = load_sets(cfg, data_dir)
    run_id = check_run(run_info_path)
    for name, reason in skipped.items():
        if name not in generated_names(cfg.evaluate):  # a 0 sample count is a choice, not a problem
            print(f"warning: evaluate.extra_sets.{name} skipped: {reason}", file=sys.stderr)
    ev = evaluate_model(loaded, sets, cfg.evaluate, skipped, seed=cfg.seed)
    for note in ev.notes:
        print(f"warning: {note}", file=sys.stderr)
    write_outputs(ev, metrics_path, tables_dir, grid_path)
    log_to_mlflow(run_id, cfg, set_datasets(cfg, data_dir, sets), ev.metrics, grid_path, tables_dir, metrics_path)
    return ev
