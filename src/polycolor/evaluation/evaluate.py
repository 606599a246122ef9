"""Scoring: every evaluation set (polycolor.evaluation.sets) scored by three painters, the same way, and the files
the evaluate stage writes.

Painters (SCORERS), each scored on every set with polycolor.evaluation.metrics, so a reader sees what each step adds
(as DeepLab reported "DeepLab" and "DeepLab-CRF" apart):
  net         the network alone at its own size (painting.painter.paint_net): resized in, thresholded, resized back;
  painted     the full painter, what predict, serve and the demo output (painting.painter.paint with the `paint`
              params: canonical form, snapping to the outline, each a switch);
  flood_fill  the classical reference (evaluation.reference), no learning at all.
Behavioural shares (evaluation.behaviour) are measured for all three on the first evaluate.behaviour_samples of val.

Files: eval.json ({set: {scorer: {metric: value}}, or {set: {"skipped": reason}}; the full record, which MLflow and
reports read), headline.json (the few figures people compare across experiments: the stage's DVC metrics, so
`dvc exp show` fits a terminal), the tables folder (samples.csv: a row per sample, set and scorer; per_colour.csv,
per_shape.csv: means per group; confusion.csv: requested,painted rows of the net on val, a DVC confusion plot) and
the grid PNG. Each is written to a temporary and moved into place.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from polycolor.config.evaluation import EvaluateConfig
from polycolor.config.paint import PaintConfig
from polycolor.config.params import Config
from polycolor.data.ayna import write_png
from polycolor.evaluation import logging
from polycolor.evaluation import metrics as M
from polycolor.evaluation.behaviour import BEHAVIOURS, behaviour_shares
from polycolor.evaluation.grid import GridRow, labelled_grid
from polycolor.evaluation.reference import reference_fill
from polycolor.evaluation.names import BEHAVIOUR, FLOOD_FILL, NET, PAINTED, SCORERS, VAL, WORST
from polycolor.evaluation.sets import EvalSet, generated_names, load_sets, subset
from polycolor.fileio import atomic_output
from polycolor.nn.colour import encode_colours, paintable
from polycolor.nn.modelio import LoadedModel, load_model
from polycolor.painting.painter import composited, net_masks, paint, painter

HEADLINE_NAMES = {"ayna_real": "ayna"}  # shorter column names in headline.json
GRID_SETS = ("gappy", "vertex_gaps", "jpeg", "antialiased", "hand_drawn", "paper")  # generated sets shown in the grid
GRID_ROWS_GENERATED = 2  # grid rows per generated set
BEHAVIOUR_SEED_STREAM = 0xBE  # draws the shifts of the behavioural test
LATENCY_SAMPLES = 3  # images timed one by one for latency_ms_p50


@dataclass
class Evaluation:
    """What evaluate computes; write_outputs puts it on disk."""

    metrics: dict[str, dict[str, Any]]  # eval.json content
    samples: pd.DataFrame  # per-sample rows of every scored set and scorer ("set", "scorer" columns)
    grid: np.ndarray  # (H, W, 3) uint8 qualitative grid
    notes: list[str] = field(default_factory=list)  # one-line warnings for the user (samples left out)

    def tables(self) -> dict[str, pd.DataFrame]:
        """The CSV tables by file name."""
        net_val = self.samples[(self.samples["set"] == VAL) & (self.samples["scorer"] == NET)]
        return {
            "samples.csv": self.samples,
            "per_colour.csv": M.breakdown(self.samples, ["set", "scorer", "requested"]),
            "per_shape.csv": M.breakdown(self.samples, ["set", "scorer", "shape"]),
            "confusion.csv": net_val.dropna(subset=["painted"])[["requested", "painted"]].reset_index(drop=True),
        }

    def headline(self) -> dict[str, Any]:
        return headline(self.metrics)


def predictors(loaded: LoadedModel, paint_cfg: PaintConfig, batch_size: int) -> dict[str, M.Predictor]:
    """{scorer: predictor} for SCORERS."""
    return {NET: painter(NET, loaded, paint_cfg, batch_size), PAINTED: painter(PAINTED, loaded, paint_cfg, batch_size),
            FLOOD_FILL: reference_fill}


def score_set(predict: M.Predictor, arrays: Any, first: M.Predictor | None = None
              ) -> tuple[dict[str, Any], pd.DataFrame, np.ndarray]:
    """(summary block, per-sample rows, predictions (N, H, W, 3) uint8) of one predictor on one set. `first`, when
    given, paints the set as `predict` would (the same bytes) from work already done; latency always times
    `predict` itself."""
    preds = (first or predict)(arrays.inputs, arrays.colours)  # also the latency's warm-up
    rows = M.score(arrays.targets, preds, arrays.colours, arrays.shapes)
    block = {**M.summarise(rows),
             "latency_ms_p50": M.latency_ms_p50(predict, arrays.inputs, arrays.colours, LATENCY_SAMPLES,
                                                warm_up=False),
             "n": len(arrays)}
    return block, rows, preds


def one_net_run(loaded: LoadedModel, arrays: Any, paint_cfg: PaintConfig, batch_size: int
                ) -> dict[str, M.Predictor] | None:
    """`net` and `painted` for one set from one run of the net (painter.net_masks), where the composite head paints
    masks: each gives the bytes its own painter would, so the network runs once per set, not twice."""
    if loaded.config.head != "composite":
        return None
    masks = net_masks(loaded, arrays.inputs, arrays.colours, batch_size)
    _, rgb = encode_colours(list(arrays.colours), loaded.vocab, loaded.config.colour_encoding)
    return {NET: lambda inputs, colours: composited(masks, rgb, batch_size),
            PAINTED: functools.partial(paint, loaded, cfg=paint_cfg, batch_size=batch_size, net_masks=masks)}


def evaluate_model(loaded: LoadedModel, sets: list[EvalSet], cfg: EvaluateConfig, paint_cfg: PaintConfig,
                   skipped: dict[str, str] | None = None, seed: int = 0) -> Evaluation:
    """Score every painter on every set, and each behaviourally on the first cfg.behaviour_samples of val (sets[0];
    shifts drawn from `seed`'s own stream). No file I/O, no MLflow."""
    predict = predictors(loaded, paint_cfg, cfg.batch_size)
    metrics: dict[str, dict[str, Any]] = {}
    frames: list[pd.DataFrame] = []
    grid_rows: list[GridRow] = []
    notes: list[str] = []
    generated = generated_names(cfg)
    for s in sets:
        keep = paintable(s.arrays.colours, loaded.vocab, loaded.config.colour_encoding)
        if len(keep) == 0:
            reason = "no sample has a colour from the model's vocabulary (embedding encoding)"
            metrics[s.name] = {"skipped": reason}
            notes.append(f"{s.name}: skipped, {reason}")
            continue
        if len(keep) < len(s.arrays):
            notes.append(f"{s.name}: {len(s.arrays) - len(keep)} sample(s) in colours outside the model's "
                         "vocabulary left out (embedding encoding)")
        arrays = subset(s.arrays, keep)
        shared = one_net_run(loaded, arrays, paint_cfg, cfg.batch_size)
        metrics[s.name], preds = {}, {}
        for scorer in SCORERS:
            metrics[s.name][scorer], rows, preds[scorer] = score_set(predict[scorer], arrays,
                                                                     shared.get(scorer) if shared else None)
            rows.insert(0, "scorer", scorer)
            rows.insert(0, "set", s.name)
            rows["index"] = keep[rows["index"].to_numpy()]  # index into the set as loaded
            frames.append(rows)
        # the grid: val and the extra sets, and a few rows of some generated sets at val's size
        if s.name not in generated or s.name in GRID_SETS:
            n_rows = GRID_ROWS_GENERATED if s.name in generated else cfg.grid_samples
            for i in range(min(n_rows, len(arrays))):
                grid_rows.append(GridRow(f"{s.name} #{keep[i]} {arrays.colours[i]}", arrays.inputs[i],
                                         arrays.targets[i], preds[NET][i], preds[PAINTED][i]))
    if cfg.behaviour_samples > 0 and sets:
        keep = paintable(sets[0].arrays.colours, loaded.vocab, loaded.config.colour_encoding)[:cfg.behaviour_samples]
        sample = subset(sets[0].arrays, keep)
        metrics[BEHAVIOUR] = {scorer: behaviour_shares(predict[scorer], sample,
                                                       np.random.default_rng([seed, BEHAVIOUR_SEED_STREAM]))
                              for scorer in SCORERS}
    if worst := worst_block(metrics, (VAL, *generated)):
        metrics[WORST] = worst
    for name, reason in (skipped or {}).items():
        metrics[name] = {"skipped": reason}
    samples = (pd.concat(frames, ignore_index=True) if frames
               else pd.DataFrame(columns=["set", "scorer", *M.SAMPLE_COLUMNS]))
    return Evaluation(metrics=metrics, samples=samples, grid=labelled_grid(grid_rows), notes=notes)


def worst_block(metrics: dict[str, dict[str, Any]], names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The `worst` block: for each scorer, the lowest psnr_mean and the lowest psnr_min over the scored sets among
    `names` (val and the generated sets, which every machine draws alike), and the sets they come from
    (psnr_mean_set, psnr_min_set). A model that trades one set for another shows it here."""
    out: dict[str, dict[str, Any]] = {}
    for scorer in SCORERS:
        blocks = {n: metrics[n][scorer] for n in names if scorer in metrics.get(n, {})}
        if not blocks:
            continue
        mean_set = min(blocks, key=lambda n: blocks[n]["psnr_mean"])
        min_set = min(blocks, key=lambda n: blocks[n]["psnr_min"])
        out[scorer] = {"psnr_mean": blocks[mean_set]["psnr_mean"], "psnr_min": blocks[min_set]["psnr_min"],
                       "psnr_mean_set": mean_set, "psnr_min_set": min_set}
    return out


def headline(metrics: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The figures people compare across experiments (headline.json, the stage's DVC metrics file), ten at most so
    that `dvc exp show --only-changed` fits a 200-column terminal with a couple of params beside them:
      net      PSNR mean and min on val and on the worst set (worst_block), mean on the real Ayna split: the
               network alone;
      painted  PSNR mean on val, mean and min on the worst set: the full painter;
      colour_acc  the net's colour accuracy on val; behaviour  the lowest of the net's behavioural shares.
    Sets that were not scored are left out. eval.json holds every figure."""
    def psnr(name: str, scorer: str, key: str) -> float | None:
        return _round(metrics.get(name, {}).get(scorer, {}).get(key))

    wanted = {NET: ((VAL, ""), (VAL, "_min"), (WORST, ""), (WORST, "_min"), ("ayna_real", "")),
              PAINTED: ((VAL, ""), (WORST, ""), (WORST, "_min"))}
    out: dict[str, Any] = {}
    for scorer, figures in wanted.items():
        values = {f"{HEADLINE_NAMES.get(name, name)}{suffix}": psnr(name, scorer, "psnr_min" if suffix else "psnr_mean")
                  for name, suffix in figures}
        out[scorer] = {k: v for k, v in values.items() if v is not None}
    if psnr(VAL, NET, "colour_accuracy") is not None:
        out["colour_acc"] = psnr(VAL, NET, "colour_accuracy")
    if NET in metrics.get(BEHAVIOUR, {}):
        out["behaviour"] = _round(min(metrics[BEHAVIOUR][NET][k] for k in BEHAVIOURS))
    return out


def _round(v: Any) -> Any:
    return round(v, 4) if isinstance(v, float) and math.isfinite(v) else v


def write_outputs(ev: Evaluation, metrics_path: Path, headline_path: Path, tables_dir: Path, grid_path: Path) -> None:
    """eval.json, headline.json, the tables folder and the grid PNG; all are written to temporaries and then moved
    in place, so a failure leaves every old output as it was."""
    with atomic_output(metrics_path) as m_tmp, atomic_output(headline_path) as h_tmp, \
            atomic_output(tables_dir) as t_tmp, atomic_output(grid_path) as g_tmp:
        Path(m_tmp).write_text(json.dumps(ev.metrics, indent=2) + "\n")
        Path(h_tmp).write_text(json.dumps(ev.headline(), indent=2) + "\n")
        Path(t_tmp).mkdir()
        for name, table in ev.tables().items():
            table.to_csv(Path(t_tmp) / name, index=False, float_format="%.6g")
        write_png(g_tmp, ev.grid)


def run_evaluation(cfg: Config, *, model_path: Path, data_dir: Path, run_info_path: Path, metrics_path: Path,
                   headline_path: Path, tables_dir: Path, grid_path: Path) -> Evaluation:
    """The stage: load the model and the sets, check the run, score, write the outputs, log them into the run.

    Every input is checked before the scoring starts, so a bad one fails in seconds and writes nothing.
    """
    loaded = load_model(model_path)
    sets, skipped = load_sets(cfg, data_dir)
    run_id = logging.check_run(run_info_path)
    for name, reason in skipped.items():
        if name not in generated_names(cfg.evaluate):  # a 0 sample count is a choice, not a problem
            print(f"warning: evaluate.extra_sets.{name} skipped: {reason}", file=sys.stderr)
    ev = evaluate_model(loaded, sets, cfg.evaluate, cfg.paint, skipped, seed=cfg.seed)
    for note in ev.notes:
        print(f"warning: {note}", file=sys.stderr)
    write_outputs(ev, metrics_path, headline_path, tables_dir, grid_path)
    logging.log_to_mlflow(run_id, cfg, logging.set_datasets(cfg, data_dir, sets), ev.metrics, grid_path, tables_dir,
                          metrics_path, headline_path)
    return ev
