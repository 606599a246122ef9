"""The train stage's edge: load the splits, run the Trainer inside one MLflow run, write the stage's outputs."""

from __future__ import annotations

import contextlib
import json
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from polycolor import signals
from polycolor.config.base import flatten
from polycolor.config.training import TrainingParams
from polycolor.data.ayna import load_split
from polycolor.errors import PolycolorError, one_line
from polycolor.fileio import atomic_output, folder_digest, write_json_atomic
from polycolor.nn.colour import paintable
from polycolor.nn.model import count_parameters
from polycolor.nn.modelio import save_model
from polycolor.tracking.datasets import log_training_data
from polycolor.tracking.lineage import dvc_experiment_name, git_info, platform_info, write_run_info
from polycolor.tracking.outage import MAX_OUTAGE_S, TrackingBuffer, quick_requests
from polycolor.tracking.store import configure, ensure_experiment, run_status_for, with_retry
from polycolor.training import distributed as dist
from polycolor.training.trainer import (
    TensorData,
    Trainer,
    TrainResult,
    UnreadableCheckpoint,
    build_vocab,
    steps_per_epoch,
    to_tensor_data,
)


def prepare_data(cfg: TrainingParams, train_dir: Path,
                 val_dir: Path) -> tuple[TensorData, TensorData, tuple[str, ...], int]:
    train = load_split(train_dir, None)
    val = load_split(val_dir, train.inputs.shape[1])
    size = train.inputs.shape[1]
    vocab = build_vocab(train.colours)
    keep = paintable(val.colours, vocab, cfg.model.colour_encoding)  # an embedding knows only training colours
    if len(keep) < len(val.colours):
        if dist.is_main_process():
            print(f"validation: {len(val.colours) - len(keep)} pair(s) in colours outside the embedding "
                  "vocabulary left out of the validation loss")
        if len(keep) == 0:
            raise PolycolorError("no validation pair has a colour from the training vocabulary")
    enc = cfg.model.colour_encoding
    train_t = to_tensor_data(train.inputs, train.targets, train.colours, vocab, enc)
    val_t = to_tensor_data(val.inputs[keep], val.targets[keep], [val.colours[i] for i in keep], vocab, enc)
    return train_t, val_t, vocab, size


def default_run_name(cfg: TrainingParams) -> str:
    m = cfg.model
    return f"{m.conditioning}-{m.colour_encoding}-{m.head}-lr{cfg.train.lr:g}-{time.strftime('%m%d-%H%M%S')}"


def run_training(cfg: TrainingParams, *, train_dir: Path, val_dir: Path, checkpoint_dir: Path, model_path: Path,
                 metrics_path: Path, curve_path: Path, run_info_path: Path,
                 max_outage_s: float = MAX_OUTAGE_S) -> TrainResult:
    """Train on every rank; on rank 0 (the only process when train.nproc is 1) inside one MLflow run: the run
    stored in a resumable checkpoint is continued (one training, one run, one unbroken curve), a run that cannot
    be continued is closed as KILLED, and the stage's outputs are written. What the run logs during and after
    training goes through a TrackingBuffer: a tracking server away for less than `max_outage_s` costs nothing,
    a longer outage stops the stage (checkpoint kept, the next start continues the run)."""
    train_t, val_t, vocab, size = prepare_data(cfg, train_dir, val_dir)
    data_id = folder_digest(train_dir, val_dir)
    trainer = Trainer(cfg.model, cfg.loss, cfg.train, vocab=vocab, image_size=size, data_id=data_id,
                      steps_per_epoch=steps_per_epoch(len(train_t), cfg.train.batch_size),
                      checkpoint_dir=checkpoint_dir)
    try:
        stored_run_id, resumed = trainer.resume()
    except UnreadableCheckpoint as e:
        if e.run_id and dist.is_main_process():  # the run of that training stops here: never leave it RUNNING
            configure()
            close_if_running(e.run_id)
        raise
    if not dist.is_main_process():
        return trainer.fit(train_t, val_t)
    import mlflow

    with signals.stop_signals():  # Ctrl-C / SIGTERM land between MLflow calls, never inside one
        cwd = Path.cwd()
        lineage = {**git_info(cwd), "dvc_exp_name": dvc_experiment_name(),
                   "data_hash": data_id}
        run_name = lineage["dvc_exp_name"] or default_run_name(cfg)
        uri = configure()
        exp_id = ensure_experiment(cfg.mlflow.experiment)
        description = (f"{cfg.model.conditioning} conditioning, {cfg.model.colour_encoding} colour encoding, "
                       f"{cfg.model.head} head, widths {list(cfg.model.widths)}; lr {cfg.train.lr:g}, "
                       f"batch {cfg.train.batch_size}, {cfg.train.epochs} epochs; {len(train_t)} training images "
                       f"at {size} px")
        run = continue_run(stored_run_id) if resumed else None
        if stored_run_id and run is None:
            close_if_running(stored_run_id)  # its training cannot go on: never leave it RUNNING
        continued = run is not None
        run = run or with_retry(mlflow.start_run, experiment_id=exp_id, run_name=run_name,
                                description=description, log_system_metrics=True)
        run_id = trainer.run_id = run.info.run_id
        try:
            with_retry(mlflow.set_tags, {
       "git_commit": lineage["git_commit"], "git_dirty": lineage["git_dirty"],
       "dvc_exp_name": lineage["dvc_exp_name"], "data_hash": lineage["data_hash"], "stage": "train",
       **platform_info()})  # which CPU kernels ran: tells two machines' figures apart
            # TrainingParams holds only the sections training reads: evaluate.* and paint.* go on each evaluation
            # run, promote.* and monitor.* are read later, so none of them goes stale on this run
            log_params_once(run, {k: str(v) for k, v in flatten(cfg).items()})
            log_training_data(run_id, train_dir, val_dir)

            buffer = TrackingBuffer(uri, max_outage_s)

            def log(metrics: dict[str, float], step: int) -> None:
                # timestamped now, when measured, not when a blink of the server let them through
                buffer.submit(mlflow.log_metrics, metrics, step=step, timestamp=int(time.time() * 1000))

            def log_image(grid: np.ndarray, step: int) -> None:
                buffer.submit(mlflow.log_image, grid, key="samples", step=step)

            trainer.log, trainer.log_image = log, log_image
            # The run gets every epoch the checkpoint holds that it has not logged yet: all of them for a new run of
            # a resumed checkpoint (its curves start at epoch 1 too); for a continued run, the epoch whose checkpoint
            # was written just before a kill stopped its logging (a checkpoint is saved before its epoch is logged).
            logged = ({m.step for m in with_retry(mlflow.MlflowClient().get_metric_history, run_id,
                                                  "val_loss")} if continued else set())
            for row in trainer.history:
                if int(row["epoch"]) not in logged:
                    log({k: float(v) for k, v in row.items() if k != "epoch"}, int(row["epoch"]))
            result = trainer.fit(train_t, val_t)
            write_outputs(cfg, result, vocab=vocab, image_size=size, lineage=lineage, run_id=run_id,
                          exp_id=exp_id, uri=uri, run_name=run.info.run_name, model_path=model_path,
                          metrics_path=metrics_path, curve_path=curve_path, run_info_path=run_info_path)
            summary = json.loads(metrics_path.read_text())
            buffer.call(mlflow.log_metrics, {f"final_{k}": float(v) for k, v in summary.items()
                                             if isinstance(v, (int, float)) and not isinstance(v, bool)})
            buffer.call(mlflow.log_artifact, str(curve_path))
            buffer.call(mlflow.MlflowClient().set_terminated, run_id, "FINISHED")
        except BaseException as e:
            end_failed_run(run_id, e)
            raise
        with quick_requests(), contextlib.suppress(Exception):
            mlflow.end_run("FINISHED")  # closed above; this ends the local run and its system-metrics thread
        return result


def end_failed_run(run_id: str, exc: BaseException) -> None:
    """Close the run as KILLED or FAILED. When the store cannot take even that (its disk is the full one, or its
    server is gone) say so in one line and let the training's own error through: the checkpoint names the run,
    and the next start of this training continues it or closes it."""
    import mlflow

    try:
        with quick_requests():  # one attempt: a server that is away already cost the training its bound
            with_retry(mlflow.MlflowClient().set_terminated, run_id, run_status_for(exc))
    except Exception as e:
        print(f"MLflow run {run_id} could not be closed ({one_line(e)[:160]}): the next start of this training "
              "continues or closes it", flush=True)
    with quick_requests(), contextlib.suppress(Exception):
        mlflow.end_run(run_status_for(exc))  # the local run and its system-metrics thread


def continue_run(run_id: str) -> Any:
    """Reopen the MLflow run of an interrupted training whose checkpoint was resumed (RUNNING after a SIGKILL,
    KILLED after a signal, FAILED), so one training is one run; None for a FINISHED run (a finished training
    given more epochs, possibly by several queued experiments at once, gets a run of its own) or a run this store
    does not have."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        if with_retry(mlflow.MlflowClient().get_run, run_id).info.status == "FINISHED":
            return None
        with_retry(mlflow.start_run, run_id=run_id, log_system_metrics=True)
    except MlflowException as e:
        print(f"checkpoint's MLflow run {run_id} cannot be continued here ({e.error_code}): a new run", flush=True)
        return None
    print(f"continuing MLflow run {run_id}", flush=True)
    return mlflow.get_run(run_id)


def close_if_running(run_id: str) -> None:
    """Close a run left RUNNING by a killed training whose checkpoint is not resumed, as KILLED."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        status = with_retry(client.get_run, run_id).info.status
    except MlflowException:  # not in this store
        return
    if status == "RUNNING":
        with_retry(client.set_terminated, run_id, status="KILLED")
        print(f"MLflow run {run_id} of a training that cannot be resumed closed as KILLED", flush=True)


def log_params_once(run: Any, params: dict[str, str]) -> None:
    """Log params on a new or continued run. MLflow refuses to change a logged param: a continued run keeps its
    values, and the resumable keys that changed (train.epochs, ...) are recorded in the tag `resumed_with`."""
    import mlflow

    old = run.data.params
    new = {k: v for k, v in params.items() if k not in old}
    changed = [f"{k}: {old[k]} -> {v}" for k, v in params.items() if k in old and old[k] != v]
    if new:
        with_retry(mlflow.log_params, new)
    if changed:
        with_retry(mlflow.set_tag, "resumed_with", "; ".join(changed))


def write_outputs(cfg: TrainingParams, result: TrainResult, *, vocab: tuple[str, ...], image_size: int,
                  lineage: dict[str, str], run_id: str, exp_id: str, uri: str, run_name: str, model_path: Path,
                  metrics_path: Path, curve_path: Path, run_info_path: Path) -> None:
    last = result.history[-1] if result.history else {}
    best = next((r for r in result.history if r["epoch"] == result.best_epoch), last)
    meta: dict[str, Any] = {
        "run_id": run_id, "run_name": run_name, **lineage,
        "epochs": len(result.history), "best_epoch": result.best_epoch,
        "val_loss": best.get("val_loss"), "val_psnr": best.get("val_psnr"),
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    save_model(model_path, result.model, meta=meta)
    metrics = {
        "epochs": len(result.history), "best_epoch": result.best_epoch,
        "best_val_loss": result.best_val_loss, "val_psnr": best.get("val_psnr"),
        "last_val_psnr": last.get("val_psnr"), "parameters": count_parameters(result.model),
        "images_per_s": result.images_per_s, "stopped_early": result.stopped_early,
        "resumed_from_epoch": result.resumed_from, "train_wall_s": result.wall_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # ru_maxrss is KiB on Linux
    }
    write_json_atomic(metrics_path, metrics)
    with atomic_output(curve_path) as tmp:
        pd.DataFrame(result.history).to_csv(tmp, index=False)
    write_run_info(run_info_path, {
        "run_id": run_id, "experiment_id": exp_id, "tracking_uri": uri, "run_name": run_name,
        "dvc_exp_name": lineage["dvc_exp_name"], "data_hash": lineage["data_hash"],
        "git_commit": lineage["git_commit"],
    })
