"""`polycolor tune` (polycolor.tuning): tune.yaml refused in one line before anything is queued; end to end on the
tiny preset with real DVC and real Optuna, a study of 2 trials in batches of one killed after its first batch and
continued (2 named experiments, none run twice, 2 training runs under one study run, --best agreeing with dvc exp
show), and a batch of two at -j 2 where the trial the check stage refuses is recorded FAIL while the other finishes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from conftest import REPO, new_project, sh

from polycolor.errors import ConfigError
from polycolor.tuning.space import parse_tune

BASE = yaml.safe_load((REPO / "params.yaml").read_text())
GOOD = {"study": "t", "objective": {"metric": "net.val", "direction": "maximize"}, "trials": 4, "parallel": 2,
        "sampler": "random", "seed": 0,
        "params": {"train.lr": {"type": "float", "low": 0.001, "high": 0.01, "log": True},
                   "loss.l2": {"type": "float", "low": 0.0, "high": 1.0}}}
METRICS = {"net.val", "net.val_min"}


def test_fixed_values_and_the_defaults_trial_parse():
    cfg = parse_tune({**GOOD, "fixed": {"train.epochs": 2}, "defaults_first": True}, BASE, METRICS)
    assert cfg.fixed == {"train.epochs": 2}
    assert cfg.defaults == {"train.lr": BASE["train"]["lr"], "loss.l2": BASE["loss"]["l2"]}
    assert cfg.values({"train.lr": 0.005}) == {"train.epochs": 2, "train.lr": 0.005}
    assert parse_tune(GOOD, BASE, METRICS).defaults == {}


def test_the_repo_tune_yaml_parses():
    data = yaml.safe_load((REPO / "tune.yaml").read_text())
    cfg = parse_tune(data, BASE, None)
    assert cfg.study and cfg.params and cfg.objective.metric == data["objective"]["metric"]


@pytest.mark.parametrize("change, said", [
    ({"params": {"train.lrr": {"type": "float", "low": 0.001, "high": 0.01}}}, "params.train.lrr is not a params"),
    ({"params": {"train.lr": {"type": "float", "low": 0.01, "high": 0.01}}}, "empty range"),
    ({"params": {"train.lr": {"type": "float", "low": 0.0, "high": 0.01, "log": True}}}, "> 0 on a log scale"),
    ({"params": {"model.head": {"type": "categorical", "choices": []}}}, "non-empty list"),
    ({"objective": {"metric": "val.psnr_meen"}}, "objective.metric is not in any DVC metrics file"),
    ({"objective": {"metric": "net.val", "direction": "up"}}, "maximize or minimize"),
    ({"parallel": 0}, "parallel must be an integer >= 1"),
    # corner values that params.yaml's rules (the check stage's) refuse
    ({"params": {"train.batch_size": {"type": "int", "low": 0, "high": 8}}}, "train.batch_size must be >= 1"),
    ({"params": {"model.head": {"type": "categorical", "choices": ["composite", "paint"]}}}, "model.head"),
    ({"params": {"train.batch_size": {"type": "float", "low": 4, "high": 8}}}, "must be an integer"),
    ({"fixed": {"train.epoch": 2}}, "fixed.train.epoch is not a params.yaml key"),
    ({"fixed": {"train.lr": 0.01}}, "fixed.train.lr is also searched"),
    ({"fixed": {"train.epochs": 0}}, "tune.yaml fixed values params.yaml's rules refuse"),
    ({"defaults_first": True, "params": {"train.lr": {"type": "float", "low": 0.01, "high": 0.1}}},
     "must hold params.yaml's value for defaults_first"),
])
def test_bad_tune_yaml_is_refused_in_one_line(change, said):
    with pytest.raises(ConfigError) as e:
        parse_tune({**GOOD, **change}, BASE, METRICS)
    assert said in str(e.value) and "\n" not in str(e.value), str(e.value)


# ------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune") / "polycolor"
    # The tiny preset without the evaluate stage's extra sets (several minutes of a trial on a busy 2-core machine).
    quick = {"evaluate": {"unseen_colour_samples": 0, "robust_samples": 0, "behaviour_samples": 0}}
    return root, new_project(root, ayna=False, overrides=quick)


def tune(root: Path, env: dict, config: dict, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    (root / f"{config['study']}.yaml").write_text(yaml.safe_dump(config))
    return sh([sys.executable, "-m", "polycolor.cli", "tune", "--config", f"{config['study']}.yaml", *extra],
              root, env, check=check)


def experiments(root: Path, env: dict) -> dict[str, dict]:
    """{name: {"state": ..., "params": params.yaml}} from `dvc exp show --json`."""
    shown = json.loads(sh([sys.executable, "-m", "dvc", "exp", "show", "--json"], root, env).stdout)
    return {e["name"]: {"state": e["executor"]["state"], "params": e["revs"][0]["data"]["params"]["params.yaml"]["data"]}
            for b in shown for e in b.get("experiments") or []}


@pytest.mark.slow
def test_bad_tune_yaml_queues_nothing(project):
    root, env = project
    p = tune(root, env, {**GOOD, "study": "bad", "params": {"train.lrr": {"type": "float", "low": 0.1, "high": 1}}},
             check=False)
    assert p.returncode == 1 and p.stderr.startswith("error: tune.yaml params.train.lrr"), p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not experiments(root, env)


@pytest.mark.slow
def test_study_killed_after_a_batch_continues_and_links_every_run(project):
    root, env = project
    # trial 0 is params.yaml's own lr and l2; the fixed weight decay goes to every trial
    config = {**GOOD, "study": "s", "trials": 2, "parallel": 1, "fixed": {"train.weight_decay": 0.0},
              "defaults_first": True}
    defaults = yaml.safe_load((root / "params.yaml").read_text())
    (root / "s.yaml").write_text(yaml.safe_dump(config))
    first = subprocess.Popen([sys.executable, "-m", "polycolor.cli", "tune", "--config", "s.yaml"], cwd=root, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen = []
    for line in first.stdout:
        seen.append(line)
        if line.startswith("batch 1:"):
            os.killpg(first.pid, signal.SIGKILL)  # tune and the dvc command it may be running: a hard kill
            break
    first.wait(timeout=60)
    assert any(s.startswith("batch 1:") for s in seen), "".join(seen)
    again = tune(root, env, config)
    assert "batch" in again.stdout and "2 trials (2 complete, 0 failed)" in again.stdout, again.stdout

    study = optuna.load_study(study_name="s", storage=f"sqlite:///{root / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 2, "2 trials in all, none asked twice"
    assert study.trials[0].params == {"train.lr": defaults["train"]["lr"], "loss.l2": defaults["loss"]["l2"]}
    exps = experiments(root, env)
    assert sorted(exps) == ["s-0", "s-1"] and {e["state"] for e in exps.values()} == {"success"}
    assert {e["params"]["train"]["weight_decay"] for e in exps.values()} == {0.0}
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp_id = client.get_experiment_by_name("polycolor").experiment_id
    (study_run,) = client.search_runs([exp_id], "tags.`polycolor.role` = 'study'")
    assert study_run.info.status == "FINISHED"
    runs = client.search_runs([exp_id], "tags.stage = 'train'")
    assert sorted(r.data.tags["dvc_exp_name"] for r in runs) == sorted(exps), "one training per experiment"
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {study_run.info.run_id}
    assert {(r.data.tags["dvc_exp_name"], r.data.tags["polycolor.trial"]) for r in runs} == {
        (f"s-{n}", str(n)) for n in range(2)}
    assert study_run.data.tags["best.experiment"] == f"s-{study.best_trial.number}"
    assert study_run.data.metrics["best_value"] == pytest.approx(study.best_value)
    record = json.loads((root / "metrics" / "tune.json").read_text())  # what `polycolor report` renders
    assert [t["number"] for t in record["trials"]] == [0, 1] and record["best"] == study.best_trial.number
    assert record["trials"][0]["defaults"] and record["fixed"] == {"train.weight_decay": 0.0}
    assert all(t["metrics"]["net.val"] == pytest.approx(t["value"]) for t in record["trials"])
    plots = {a.path for a in client.list_artifacts(study_run.info.run_id, "plots")}
    assert {"plots/optimization_history.png", "plots/parallel_coordinate.png"} <= plots, plots

    best = tune(root, env, config, "--best").stdout
    name = f"s-{study.best_trial.number}"
    assert f"dvc exp apply {name}" in best and "train.weight_decay: 0.0 (fixed)" in best, best
    assert "`dvc exp run -S " in best and f"-S train.lr={study.best_params['train.lr']!r}" in best, best
    shown = exps[name]["params"]
    assert shown["train"]["lr"] == pytest.approx(study.best_params["train.lr"], rel=1e-12)
    assert shown["loss"]["l2"] == pytest.approx(study.best_params["loss.l2"], rel=1e-12, abs=1e-15)


@pytest.mark.slow
def test_a_trial_the_check_stage_refuses_fails_and_the_other_finishes(project):
    root, env = project
    # parse_config accepts any path for ingest.source; the check stage refuses one that does not exist. The random
    # sampler's seed 0 draws the missing path first, then synthetic.
    config = {**GOOD, "study": "f", "trials": 2, "params": {
        "ingest.source": {"type": "categorical", "choices": ["synthetic", "/nonexistent-polycolor-source"]}}}
    out = tune(root, env, config).stdout
    study = optuna.load_study(study_name="f", storage=f"sqlite:///{root / 'optuna.db'}")
    states = {t.params["ingest.source"]: t for t in study.trials}
    assert set(states) == {"synthetic", "/nonexistent-polycolor-source"}, "seed 0 should draw both choices"
    failed = states["/nonexistent-polycolor-source"]
    assert failed.state.name == "FAIL" and failed.user_attrs["error"].startswith("error: ingest.source"), \
        failed.user_attrs
    assert states["synthetic"].state.name == "COMPLETE", out
    assert "FAIL error: ingest.source" in out and "2 trials (1 complete, 1 failed)" in out, out


@pytest.mark.slow
def test_the_team_stack_holds_the_study_in_its_own_postgres_database(team_stack, tmp_path, monkeypatch):
    from polycolor.tuning.study import study_storage

    (tmp_path / ".stack").symlink_to(team_stack.dir)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team_stack.tracking_uri)
    monkeypatch.delenv("PGPASSFILE", raising=False)
    url = study_storage(tmp_path, None)
    assert url.startswith("postgresql+psycopg2://") and url.endswith("/optuna") and "@" in url, url
    assert ":" not in url.split("//", 1)[1].split("@")[0], "no password in the URL"
    optuna.create_study(study_name="pg", storage=url).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    again = optuna.load_study(study_name="pg", storage=study_storage(tmp_path, None))  # the database exists now
    assert len(again.trials) == 2
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # another server: the default file
    assert study_storage(tmp_path, None) == f"sqlite:///{tmp_path / 'optuna.db'}"


def test_a_corrupt_or_locked_study_storage_is_one_line(tmp_path, capsys):
    """Issue 28: `polycolor tune` on a corrupt or a locked optuna.db says so in one line with the way back."""
    import sqlite3

    from polycolor.cli import main

    corrupt = tmp_path / "optuna.db"
    corrupt.write_bytes(b"this is not sqlite" * 100)
    assert main(["tune", "--best", "--storage", f"sqlite:///{corrupt}"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(corrupt) in err and "move it aside" in err, err

    locked = tmp_path / "locked.db"
    optuna.create_study(study_name="tune", storage=f"sqlite:///{locked}")
    holder = sqlite3.connect(locked, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        assert main(["tune", "--best", "--storage", f"sqlite:///{locked}?timeout=0.2"]) == 1
    finally:
        holder.close()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(locked) in err and "wait for the other" in err, err


def test_the_best_trial_is_called_better_than_the_defaults_only_beyond_min_delta():


    from polycolor.tuning import study as S

    for min_delta, verdict in ((0.5, "beyond"), (2.0, "within")):
        cfg = parse_tune({**GOOD, "objective": {**GOOD["objective"], "min_delta": min_delta}}, BASE, METRICS)
        st = optuna.create_study(direction="maximize")
        st.enqueue_trial({"train.lr": 0.003}, user_attrs={"defaults": True})
        st.optimize(lambda t: 40.0 if t.user_attrs.get("defaults") else (t.suggest_float("train.lr", 1e-3, 1e-2),
                                                                            41.0)[1], n_trials=2)
        text = S.best_report(st, cfg)
        assert f"against the defaults trial 0: +1, {verdict} objective.min_delta {min_delta:g}" in text, text
    with pytest.raises(ConfigError, match="objective.min_delta"):
        parse_tune({**GOOD, "objective": {**GOOD["objective"], "min_delta": -1}}, BASE, METRICS)


def test_preset_flags_and_trial_flags_write_values_one_way(tmp_path):
    """`polycolor preset` and the tuner's queued trials write `-S key=VALUE` with the same function: text as it is,
    anything else as JSON without spaces."""
    from polycolor.cli import preset_flags
    from polycolor.tuning.dvcexp import flag_value

    assert [flag_value(v) for v in ("cuda", True, 8, 0.003, [16, 32])] == ["cuda", "true", "8", "0.003", "[16,32]"]
    preset = tmp_path / "p.yaml"
    preset.write_text("train:\n  lr: 0.003\n  amp: true\n  device: cpu\n")
    assert preset_flags(preset) == ["-S", "train.lr=0.003", "-S", "train.amp=true", "-S", "train.device=cpu"]


@pytest.mark.parametrize("uri, reads_stack", [("http://127.0.0.1:5000", True), ("https://mlflow.example", True),
                                              ("file:///tmp/mlruns", False), ("sqlite:///mlflow.db", False)])
def test_the_study_reads_the_stack_only_for_a_tracking_server(tmp_path, monkeypatch, uri, reads_stack):
    """study_storage asks tracking.store.is_server, the one http-URI check, before it reads .stack."""
    from polycolor.tuning import study

    (tmp_path / ".stack").mkdir()
    (tmp_path / ".stack" / "stack.json").write_text("{}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    read: list[Path] = []
    from polycolor import stack

    monkeypatch.setattr(stack, "load", lambda d: read.append(d) or type("T", (), {"tracking_uri": "http://other"})())
    assert study.study_storage(tmp_path, None) == f"sqlite:///{tmp_path / 'optuna.db'}"
    assert bool(read) == reads_stack
