"""The evaluation run in MLflow: the only evaluation code that talks to the tracking store.

Each evaluation is its own MLflow run, a child of the training run, with the evaluate and paint params it used, the
sets it scored as dataset inputs, and every metric (`<set>.<scorer>.<metric>`, e.g. `val.net.psnr_mean`) tied to
its set's dataset; the behavioural shares are tied to val, which they are measured on. A re-evaluation adds a run,
never overwrites. The package stage puts the model's own metrics (net and painted) on the logged model
(serving.package.link_evaluation), so the registry and the promotion gates read them there.
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from polycolor.config.base import flatten
from polycolor.config.params import Config
from polycolor.errors import PolycolorError, first_line
from polycolor.evaluation.names import VAL, metric_set
from polycolor.evaluation.sets import EvalSet
from polycolor.paths import repo_path
from polycolor.tracking.datasets import dvc_dataset, generated_dataset, log_datasets
from polycolor.tracking.eval_runs import EVAL_DIGEST_TAG, file_sha256
from polycolor.tracking.lineage import PARENT_RUN_TAG, dvc_experiment_name, git_info, read_run_info
from polycolor.tracking.store import configure, describe_failure, run_status_for, with_retry


def check_run(run_info_path: Path) -> str:
    """The training run's id from the run-info file, after checking that it exists in the tracking store."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    run_id = read_run_info(run_info_path)["run_id"]
    uri = configure()
    try:
        run = with_retry(MlflowClient().get_run, run_id)
    except MlflowException as e:
        first = first_line(e)
        raise PolycolorError(describe_failure(e, uri)
                             or f"MLflow run {run_id} (from {run_info_path}) not found in {uri}: {first}") from None
    if run.info.lifecycle_stage == "deleted":
        raise PolycolorError(f"MLflow run {run_id} (from {run_info_path}) is deleted in {uri}")
    return run_id


def set_datasets(cfg: Config, data_dir: Path, sets: list[EvalSet]) -> dict[str, Any]:
    """{set name: MLflow dataset}: val and the extra sets are folders (DVC hash, path and commit); sets generated in
    memory are digested from their arrays and say what generated them."""
    out = {}
    for s in sets:
        if s.name == VAL:
            out[s.name] = dvc_dataset(s.name, data_dir)
        elif s.name in cfg.evaluate.extra_sets:
            out[s.name] = dvc_dataset(s.name, repo_path(cfg.evaluate.extra_sets[s.name].path))
        else:
            h = hashlib.sha256()
            for part in (s.arrays.inputs, s.arrays.targets, "\n".join(s.arrays.colours).encode()):
                h.update(part.tobytes() if isinstance(part, np.ndarray) else part)
            recipe = {"generator": f"polycolor.evaluation.sets ({s.name})", "seed": str(cfg.seed),
                      "git_commit": git_info(Path.cwd())["git_commit"]}
            out[s.name] = generated_dataset(s.name, h.hexdigest()[:32], recipe)
    return out


def flat_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """{"val.net.psnr_mean": ..., "behaviour.painted.shift": ...}: every finite number of a nested metrics dict,
    keys joined with dots (under `prefix` when given); skipped sets are left out."""
    return {k: float(v) for k, v in flatten(metrics, prefix).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def metric_dataset(key: str, datasets: dict[str, Any]) -> Any | None:
    """The dataset a metric key `<set>.<scorer>.<metric>` was computed on: its set's; val's for the behavioural
    shares; None when the set has none."""
    return datasets.get(metric_set(key))


def log_to_mlflow(train_run_id: str, cfg: Config, datasets: dict[str, Any], metrics: dict[str, dict[str, Any]],
                  grid_path: Path, tables_dir: Path, metrics_path: Path, headline_path: Path | None = None) -> str:
    """Open a new evaluation run under the training run: evaluate and paint params, the sets as datasets (context
    evaluation), the metrics, the grid, eval.json (and headline.json) and the tables under eval/. Returns the
    evaluation run's id."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient()
    train = with_retry(client.get_run, train_run_id)
    tags = {PARENT_RUN_TAG: train_run_id, "stage": "evaluate", **git_info(Path.cwd()),
            "dvc_exp_name": dvc_experiment_name(),
            EVAL_DIGEST_TAG: file_sha256(metrics_path)}
    run = with_retry(client.create_run, train.info.experiment_id, tags=tags,
                     run_name=f"{train.info.run_name}-eval-{time.strftime('%m%d-%H%M%S')}")
    run_id = run.info.run_id
    try:
        params = {"seed": cfg.seed, **flatten(cfg.evaluate, "evaluate"), **flatten(cfg.paint, "paint")}
        with_retry(client.log_batch, run_id, params=[Param(k, str(v)) for k, v in params.items()])
        log_datasets(run_id, [(ds, "evaluation") for ds in datasets.values()])
        now = int(time.time() * 1000)
        batch = []
        for key, value in flat_metrics(metrics).items():
            ds = metric_dataset(key, datasets)
            batch.append(Metric(key, value, now, 0, dataset_name=ds.name if ds else None,
                                dataset_digest=ds.digest if ds else None))
        for start in range(0, len(batch), 1000):  # log_batch takes at most 1000 metrics per call
            with_retry(client.log_batch, run_id, metrics=batch[start:start + 1000])
        for path in (grid_path, metrics_path, headline_path):
            if path is not None:
                with_retry(client.log_artifact, run_id, str(path), "eval")
        with_retry(client.log_artifacts, run_id, str(tables_dir), "eval/tables")
    except BaseException as e:
        with_retry(client.set_terminated, run_id, run_status_for(e))
        raise
    with_retry(client.set_terminated, run_id, "FINISHED")
    return run_id
