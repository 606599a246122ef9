"""The study loop of `polycolor tune`: Optuna asks, DVC runs, MLflow records.

Each batch: ask Optuna for up to `parallel` trials (ask-and-tell), queue each as the named DVC experiment
<study>-<trial number>, `dvc queue start -j parallel`, wait, read each experiment's metrics back through
`dvc exp show`, tell Optuna. Batches, because DVC's queue takes no new experiments into a run that has started.

The study lives in Optuna's RDB storage (study_storage), so a killed `polycolor tune` run again continues it:
finished trials stay finished; a trial asked but not told (RUNNING) is adopted, and its experiment, if DVC already
has it, is waited for or read back rather than queued again. The MLflow study run is the parent of every trial's
training run: the train stage tags its run with the DVC experiment name (dvc_exp_name), and each trial's run is
found by it and linked (mlflow.parentRunId, polycolor.study, polycolor.trial) as soon as its experiment ends.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polycolor import signals
from polycolor.config.params import parse_config
from polycolor.errors import ConfigError, PolycolorError, first_line
from polycolor.fileio import atomic_output
from polycolor.tracking.lineage import PARENT_RUN_TAG, git_info
from polycolor.tracking.store import (configure, ensure_experiment, is_server, run_status_for, tracking_uri,
                                      with_retry)
from polycolor.tuning import dvcexp
from polycolor.tuning.space import TuneConfig, load_yaml, with_overrides

STUDY_TAG = "polycolor.study"    # on the study run and on every trial's training run
TRIAL_TAG = "polycolor.trial"    # trial number, on its training run
ROLE_TAG = "polycolor.role"      # "study" on the parent run
RUN_ATTR = "mlflow_run_id"       # study user attr: the MLflow study run, reopened by a rerun
WALL_ATTR = "wall_s"             # study user attr: seconds spent in batches over every run of the study
STARTED_ATTR = "started"         # trial user attr: when the queue that runs its experiment started (epoch s)
POLL_S = 10.0                    # seconds between two `dvc exp show` polls while a batch runs
STORAGE_FILE = "optuna.db"       # the default storage: sqlite in the repo root (gitignored)
RECORD_FILE = "metrics/tune.json"  # the study as `polycolor report` renders it (its tune and tune_best blocks)


# ------------------------------------------------------------------------------------------- storage

def study_storage(root: Path, explicit: str | None) -> str:
    """--storage when given; the team stack's PostgreSQL (database `optuna` beside MLflow's) when
    MLFLOW_TRACKING_URI is the server of the stack recorded in <root>/.stack; else sqlite <root>/optuna.db."""
    if explicit:
        return explicit
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if is_server(uri) and (root / ".stack" / "stack.json").is_file():
        from polycolor import stack

        team = stack.load(root / ".stack")
        if team.tracking_uri.rstrip("/") == uri.rstrip("/"):
            return stack_storage(team)
    return f"sqlite:///{root / STORAGE_FILE}"


def stack_storage(team: Any) -> str:
    """The team stack's PostgreSQL as Optuna storage: its own database `optuna` (Optuna's and MLflow's schemas
    both keep an alembic_version table, so they cannot share one), created on first use (stack.Stack.database_url)."""
    return team.database_url("optuna")


@contextmanager
def storage_errors(storage: str) -> Iterator[None]:
    """A corrupt or locked study storage as one PolycolorError line that names it and the way back, not
    SQLAlchemy's traceback (OperationalError, "database is locked", is a DatabaseError too)."""
    import sqlalchemy.exc

    try:
        yield
    except sqlalchemy.exc.DatabaseError as e:
        where = storage.removeprefix("sqlite:///").split("?")[0]
        said = first_line(getattr(e, "orig", None) or e)
        if "locked" in said:
            raise PolycolorError(f"study storage {where} is locked ({said}): wait for the other polycolor tune to "
                                 f"finish, or stop it; if none runs, remove the stale lock ({where}-journal)") from None
        if "not a database" in said or "malformed" in said:
            raise PolycolorError(f"study storage {where} is corrupt ({said}): move it aside (mv {where} "
                                 f"{where}.bad) and run polycolor tune again to start the study afresh") from None
        raise PolycolorError(f"study storage {where} failed: {said}") from None


def open_study(cfg: TuneConfig, storage: str, *, create: bool) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not create:
        try:
            return optuna.load_study(study_name=cfg.study, storage=storage)
        except KeyError:
            raise PolycolorError(f"no study {cfg.study!r} in {storage}: run polycolor tune first") from None
    study = optuna.create_study(study_name=cfg.study, storage=storage, direction=cfg.objective.direction,
                                load_if_exists=True)
    if study.direction.name.lower() != cfg.objective.direction:
        raise ConfigError(f"study {cfg.study!r} in {storage} was made to {study.direction.name.lower()}, tune.yaml "
                          f"says {cfg.objective.direction}: rename the study")
    # Reseeded past the trials already made, so a continued study does not replay the first run's draws.
    seed = cfg.seed + len(study.trials)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # constant_liar, stable since 2.8
        study.sampler = (optuna.samplers.RandomSampler(seed=seed) if cfg.sampler == "random" else
                         optuna.samplers.TPESampler(seed=seed, constant_liar=True))  # liar: a batch spreads out
    return study


def experiment_name(cfg: TuneConfig, number: int) -> str:
    return f"{cfg.study}-{number}"


# ------------------------------------------------------------------------------------------- MLflow

def open_study_run(study: Any, cfg: TuneConfig, experiment: str, storage: str) -> str:
    """Start (or, for a continued study, reopen) the MLflow study run; returns its id."""
    import mlflow
    from mlflow.exceptions import MlflowException

    configure()
    exp_id = ensure_experiment(experiment)
    run_id = study.user_attrs.get(RUN_ATTR)
    if run_id:
        try:
            with_retry(mlflow.start_run, run_id=run_id)
            return run_id
        except MlflowException:
            print(f"the study's MLflow run {run_id} is not in {tracking_uri()}: a new one", flush=True)
    run = with_retry(mlflow.start_run, experiment_id=exp_id, run_name=f"study {cfg.study}",
                     tags={ROLE_TAG: "study", STUDY_TAG: cfg.study},
                     description=f"Optuna study {cfg.study}: {cfg.trials} trials, {cfg.parallel} per batch")
    with_retry(mlflow.log_params, {
        **{f"space.{k}": v for k, v in cfg.space().items()}, "objective": cfg.objective.metric,
        "direction": cfg.objective.direction, "trials": cfg.trials, "parallel": cfg.parallel,
        "sampler": cfg.sampler, "seed": cfg.seed, "storage": storage,
        **{f"fixed.{k}": v for k, v in cfg.fixed.items()}, "defaults_first": bool(cfg.defaults)})
    study.set_user_attr(RUN_ATTR, run.info.run_id)
    return run.info.run_id


def link_trial_run(exp_id: str, study_run: str, cfg: TuneConfig, number: int) -> None:
    """Tag the training run of trial `number`'s experiment as a child of the study run (none when the experiment
    failed before training)."""
    import mlflow

    client = mlflow.MlflowClient()
    name = experiment_name(cfg, number)
    for run in with_retry(client.search_runs, [exp_id],
                          f"tags.dvc_exp_name = '{name}' and tags.stage = 'train'"):
        for key, value in ((PARENT_RUN_TAG, study_run), (STUDY_TAG, cfg.study), (TRIAL_TAG, str(number))):
            with_retry(client.set_tag, run.info.run_id, key, value)


def log_progress(study: Any, cfg: TuneConfig, run_id: str) -> None:
    """The best value and params so far (metric best_value per finished trial, tags best.*) and Optuna's plots."""
    import mlflow

    client = mlflow.MlflowClient()
    finished = [t for t in study.trials if t.state.is_finished()]
    complete = [t for t in finished if t.state.name == "COMPLETE"]
    if complete:
        best = study.best_trial
        with_retry(client.log_metric, run_id, "best_value", best.value, step=len(finished))
        tags = {"best.trial": str(best.number), "best.experiment": experiment_name(cfg, best.number),
                **{f"best.{k}": str(v) for k, v in best.params.items()}}
        for k, v in tags.items():
            with_retry(client.set_tag, run_id, k, v)
    with tempfile.TemporaryDirectory() as d:
        for name, path in save_plots(study, Path(d)).items():
            with_retry(client.log_artifact, run_id, str(path), "plots")


def save_plots(study: Any, folder: Path) -> dict[str, Path]:
    """Optuna's optimisation history, parameter importances and parallel coordinates as PNGs (matplotlib); a plot
    Optuna cannot draw yet (importances need two finished trials that differ) is left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis

    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
        for name, plot in (("optimization_history", vis.plot_optimization_history),
                           ("param_importances", vis.plot_param_importances),
                           ("parallel_coordinate", vis.plot_parallel_coordinate)):
            try:
                ax = plot(study)
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            out[name] = folder / f"{name}.png"
            fig.savefig(out[name], dpi=100, bbox_inches="tight")
            plt.close(fig)
    return out


# ------------------------------------------------------------------------------------------- the loop

@dataclass
class Batch:
    """One batch under way: the trials (by number) and when its queue started."""
    trials: dict[int, Any]     # number -> optuna.trial.Trial
    started: float = 0.0


def _finish(study: Any, cfg: TuneConfig, root: Path, batch: Batch, exp: dvcexp.Experiment,
            metric_known: bool) -> None:
    """Tell Optuna how trial `exp` ended and print one line: its value or its error's first line, and its time."""
    import optuna

    number = int(exp.name.rsplit("-", 1)[1])
    trial = batch.trials[number]
    wall = max(0.0, dvcexp.finished_at(exp) - trial.user_attrs.get(STARTED_ATTR, batch.started))
    trial.set_user_attr("wall_s", round(wall, 1))
    value = exp.metrics.get(cfg.objective.metric) if exp.state == "success" else None
    if exp.state != "success":
        error = dvcexp.error_line(root, exp)
    elif not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        error = f"{cfg.objective.metric} is {value!r} in {exp.name}'s metrics, not a finite number"
    else:
        study.tell(number, float(value))
        print(f"trial {number} {exp.name}: {cfg.objective.metric} {value:.4g} ({wall:.0f} s)", flush=True)
        return
    trial.set_user_attr("error", error)
    study.tell(number, state=optuna.trial.TrialState.FAIL)
    print(f"trial {number} {exp.name}: FAIL {error} ({wall:.0f} s)", flush=True)
    if exp.state == "success" and not metric_known and value is None:
        raise PolycolorError(f"tune.yaml objective.metric {cfg.objective.metric!r} is in no metrics file of "
                             f"experiment {exp.name} (its keys: {', '.join(sorted(exp.metrics)[:8])})")


def _next_batch(study: Any, cfg: TuneConfig, root: Path, base: dict, head: str) -> Batch:
    """The trials to run now: the study's RUNNING ones (asked by a run that was killed) and new ones up to
    `parallel`. A new trial whose params the check stage would refuse is told FAIL here and never queued."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    done = sum(t.state.is_finished() for t in trials)
    batch = {t.number: optuna.trial.Trial(study, t._trial_id) for t in trials
             if t.state == optuna.trial.TrialState.RUNNING}
    space = {p.key: p.distribution() for p in cfg.params}
    while len(batch) < cfg.parallel and done + len(batch) < cfg.trials:
        trial = study.ask(space)
        trial.set_user_attr("experiment", experiment_name(cfg, trial.number))
        trial.set_user_attr("baseline", head)
        try:
            parse_config(with_overrides(base, cfg.values(trial.params)))
        except ConfigError as e:
            trial.set_user_attr("error", str(e))
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            print(f"trial {trial.number}: FAIL before queueing: {e}", flush=True)
            done += 1
            continue
        batch[trial.number] = trial
    return Batch(batch)


def run_study(cfg: TuneConfig, root: Path, storage: str, *, metric_known: bool) -> Any:
    """Run batches until the study holds cfg.trials finished trials; returns the study."""
    import mlflow

    base = load_yaml(root / "params.yaml", "params file") or {}
    experiment = parse_config(base).mlflow.experiment
    study = open_study(cfg, storage, create=True)
    if cfg.defaults and not study.trials:  # asked first; a rerun finds it WAITING or done, never enqueues twice
        study.enqueue_trial(cfg.defaults, user_attrs={"defaults": True})
    head = git_info(root)["git_commit"]
    revs = {head} | {t.user_attrs.get("baseline", head) for t in study.trials}
    taken = sorted(set(dvcexp.experiments(root, revs)) & {experiment_name(cfg, n) for n in
                                                           range(len(study.trials), len(study.trials) + cfg.trials)})
    if taken:
        raise PolycolorError(f"DVC experiment {taken[0]} exists but study {cfg.study!r} in {storage} has no such "
                             f"trial: remove it (dvc exp remove {' '.join(taken)}) or rename the study")
    finished = sum(t.state.is_finished() for t in study.trials)
    running = sum(t.state.name == "RUNNING" for t in study.trials)  # asked by a killed run (not the WAITING defaults)
    print(f"study {cfg.study}: {finished} of {cfg.trials} trials finished, {running} to continue; storage {storage}",
          flush=True)
    run_id = open_study_run(study, cfg, experiment, storage)
    exp_id = with_retry(mlflow.get_run, run_id).info.experiment_id
    t_run, n_batches = time.perf_counter(), 0
    with signals.stop_signals():
        try:
            while True:
                batch = _next_batch(study, cfg, root, base, head)
                if not batch.trials:
                    break
                n_batches += 1
                t0 = time.perf_counter()
                _run_batch(study, cfg, root, batch, revs, exp_id, run_id, metric_known)
                took = time.perf_counter() - t0
                study.set_user_attr(WALL_ATTR, round(study.user_attrs.get(WALL_ATTR, 0.0) + took, 1))
                log_progress(study, cfg, run_id)
                print(f"batch {n_batches}: {len(batch.trials)} trial(s) in {took:.0f} s", flush=True)
        except BaseException as e:
            with_retry(mlflow.end_run, status=run_status_for(e))
            raise
    with_retry(mlflow.end_run, status="FINISHED")
    # Written once the batches are done: a file in the workspace while trials are queued would ride into them.
    write_record(root / RECORD_FILE, study, cfg, dvcexp.experiments(root, revs))
    print(summary(study, cfg, this_run_s=time.perf_counter() - t_run), flush=True)
    print(f"wrote {RECORD_FILE}", flush=True)
    return study


def _run_batch(study: Any, cfg: TuneConfig, root: Path, batch: Batch, revs: set[str], exp_id: str, run_id: str,
               metric_known: bool) -> None:
    names = {experiment_name(cfg, n): n for n in batch.trials}
    existing = dvcexp.experiments(root, revs)
    for name, number in names.items():
        if name not in existing:  # an adopted trial whose experiment DVC has is never queued twice
            dvcexp.queue(root, name, cfg.values(batch.trials[number].params))
    batch.started = time.time()
    for name, number in names.items():  # an experiment a killed run started keeps its own start time
        if name not in existing or STARTED_ATTR not in batch.trials[number].user_attrs:
            batch.trials[number].set_user_attr(STARTED_ATTR, batch.started)
    if any(not existing[n].finished for n in names if n in existing) or set(names) - set(existing):
        dvcexp.start(root, cfg.parallel)

    def finish(exp: dvcexp.Experiment) -> None:
        _finish(study, cfg, root, batch, exp, metric_known)
        link_trial_run(exp_id, run_id, cfg, names[exp.name])

    dvcexp.wait(root, set(names), revs, POLL_S, finish)


# ------------------------------------------------------------------------------------------- reports

def record(study: Any, cfg: TuneConfig, exps: dict[str, dvcexp.Experiment]) -> dict[str, Any]:
    """The study as data: settings, every trial (params, objective, wall time, state, the headline figures its
    experiment's metrics files hold) and the best trial."""
    trials = []
    for t in study.trials:
        name = t.user_attrs.get("experiment", experiment_name(cfg, t.number))
        exp = exps.get(name)
        trials.append({"number": t.number, "experiment": name, "state": t.state.name, "params": t.params,
                       "value": t.value, "wall_s": t.user_attrs.get("wall_s"), "error": t.user_attrs.get("error"),
                       "defaults": bool(t.user_attrs.get("defaults")),
                       "metrics": exp.metrics if exp is not None and exp.state == "success" else {}})
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    return {"study": cfg.study, "objective": cfg.objective.metric, "direction": cfg.objective.direction,
            "space": cfg.space(), "fixed": cfg.fixed, "sampler": cfg.sampler, "seed": cfg.seed,
            "parallel": cfg.parallel, "wall_s": study.user_attrs.get(WALL_ATTR, 0.0),
            "best": study.best_trial.number if complete else None, "trials": trials}


def write_record(path: Path, study: Any, cfg: TuneConfig, exps: dict[str, dvcexp.Experiment]) -> None:
    with atomic_output(path) as tmp:
        Path(tmp).write_text(json.dumps(record(study, cfg, exps), indent=2) + "\n")


def summary(study: Any, cfg: TuneConfig, this_run_s: float) -> str:
    finished = [t for t in study.trials if t.state.is_finished()]
    failed = sum(t.state.name == "FAIL" for t in finished)
    lines = [f"study {cfg.study}: {len(finished)} trials ({len(finished) - failed} complete, {failed} failed); "
             f"this run {this_run_s:.0f} s, the study's batches {study.user_attrs.get(WALL_ATTR, 0.0):.0f} s in all"]
    if len(finished) > failed:
        lines.append(best_report(study, cfg))
    return "\n".join(lines)


def best_report(study: Any, cfg: TuneConfig) -> str:
    """The best trial: its value, params and DVC experiment, and how to restore it."""
    try:
        best = study.best_trial
    except ValueError:
        raise PolycolorError(f"study {cfg.study!r} has no complete trial yet") from None
    name = best.user_attrs.get("experiment", experiment_name(cfg, best.number))
    lines = [f"best trial {best.number}: {cfg.objective.metric} {best.value:.6g} ({study.direction.name.lower()})"]
    lines += [f"  {k}: {v}" for k, v in best.params.items()]
    lines += [f"  {k}: {v} (fixed)" for k, v in cfg.fixed.items()]
    lines.append(f"experiment {name}: restore it with `dvc exp apply {name}`")
    base = next((t for t in study.trials if t.user_attrs.get("defaults") and t.value is not None), None)
    if base is not None and base.number != best.number:
        gain = (best.value - base.value) * (1 if study.direction.name.lower() == "maximize" else -1)
        beyond = gain > cfg.objective.min_delta
        lines.append(f"against the defaults trial {base.number}: {gain:+.4g}, {'beyond' if beyond else 'within'} "
                     f"objective.min_delta {cfg.objective.min_delta:g}"
                     + ("" if beyond else ": not told from seed-to-seed luck, keep the defaults"))
    if cfg.fixed:  # the study ran at its own budget: these params at params.yaml's
        flags = " ".join(f"-S {k}={dvcexp.flag_value(v)}" for k, v in best.params.items())
        lines.append(f"without the fixed values (params.yaml's budget): `dvc exp run {flags}`")
    return "\n".join(lines)
