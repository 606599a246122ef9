"""The check stage: a bad param or bad data fails before DVC deletes any stage's outputs.

DVC removes a stage's outputs before it runs the stage's command. The unit tests call stages/check.py in-process;
the slow one runs real `dvc repro`s on tiny params in a throwaway copy of the project and checks that a bad
`ingest.source` and `train.lr: "fast"` leave data/dataset, models/model.pt and the train metrics exactly as they were; then that a failure the check
cannot see (an unreadable MLflow store) is undone the way docs/reliability.md says. A tracking server that
refuses or never answers fails the check too (test_server_down.py has the fast cases).
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import new_project, sh

SECRET = "planted-secret-7d2e0b"


@pytest.mark.parametrize("params, words", [
    ({"train": {"lr": "fast"}}, "train.lr must be a number, got 'fast'"),
    ({"train": {"lr": float("inf")}}, "train.lr must be a finite number"),
    ({"ingest": {"source": "/nope"}}, "ingest.source '/nope' is neither"),
    ({"ingest": {"image_size": 36}}, "ingest.image_size must be divisible by 8"),
    ({"promote": {"gates": [{"metric": "val.net.psnr_mean", "minimum": 3}]}}, "promote.gates.minimum is not a known key"),
])
def test_check_refuses_bad_params_and_sources_in_one_line(stage, tmp_path, capsys, params, words):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(params))
    assert stage("check").main(["--params", str(p), "--out", str(tmp_path / "check.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and words in err, err
    assert not (tmp_path / "check.json").exists()


def test_check_reads_the_source_layout_and_data_json(stage, tmp_path, small_source, capsys):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"ingest": {"source": str(small_source), "image_size": 32}}))
    out = tmp_path / "check.json"
    assert stage("check").main(["--params", str(p), "--out", str(out)]) == 0
    first = out.read_bytes()
    (small_source / "validation" / "data.json").write_text("[]")
    assert stage("check").main(["--params", str(p), "--out", str(out)]) == 1
    assert "validation/data.json has no entries" in capsys.readouterr().err
    p.write_text(yaml.safe_dump({"ingest": {"image_size": 32}}))
    assert stage("check").main(["--params", str(p), "--out", str(out)]) == 0
    assert out.read_bytes() == first, "a passing check writes the same bytes, so ingest never reruns for it"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: train.device: cuda is usable")
def test_check_refuses_cuda_without_cuda(stage, tmp_path, capsys):
    p = tmp_path / "params.yaml"
    p.write_text("train:\n  device: cuda\n")
    assert stage("check").main(["--params", str(p), "--out", str(tmp_path / "check.json")]) == 1
    assert "train.device is cuda but this machine has no CUDA device" in capsys.readouterr().err


def outputs(root: Path) -> dict[str, str]:
    """{path: sha256} of every file DVC would delete before rerunning ingest or train (a missing one: absent)."""
    files = [*(root / "data" / "dataset").rglob("*"),
             *(root / f for f in ("models/model.pt", "metrics/run.json", "metrics/train.json",
                                  "metrics/train_curve.csv"))]
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()}


@pytest.mark.slow
def test_a_bad_param_or_source_under_dvc_repro_costs_no_output(tmp_path):
    root = tmp_path / "polycolor"
    env = new_project(root, ayna=False) | {"AWS_SECRET_ACCESS_KEY": SECRET}
    good = (root / "params.yaml").read_text()
    dvc = [sys.executable, "-m", "dvc"]
    sh([*dvc, "repro"], root, env)
    again = sh([*dvc, "repro"], root, env)
    assert "Data and pipelines are up to date" in again.stdout + again.stderr, "the check must not always run"
    sh(["git", "add", "-A"], root, env)
    sh(["git", "commit", "-qm", "tiny repro"], root, env)
    before = outputs(root)

    # One bad source and one bad param under real DVC (every message of the check: the unit tests above).
    bad = [("ingest", "source", "/nope", "ingest.source '/nope' is neither"),
           ("train", "lr", "fast", "train.lr must be a number, got 'fast'")]
    for section, key, value, words in bad:
        params = yaml.safe_load(good)
        params[section][key] = value
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        p = sh([*dvc, "repro"], root, env, check=False)
        assert p.returncode != 0, f"{section}.{key}={value!r} passed:\n{p.stdout}"
        assert words in p.stderr + p.stdout, p.stderr
        assert "Running stage 'ingest'" not in p.stdout and "Running stage 'train'" not in p.stdout, p.stdout
        assert outputs(root) == before, f"{section}.{key}={value!r} changed or removed an output"

    # A tracking server that refuses (nothing listens on the port) or never answers: check fails in seconds,
    # naming the URI, before DVC deletes train's outputs (issue 19; before, train failed after 254 s or hung).
    params = yaml.safe_load(good)
    params["train"]["epochs"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes the handshake; nobody ever reads or answers
    with silent, socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{closed.getsockname()[1]}"
        for uri in (refused, f"http://127.0.0.1:{silent.getsockname()[1]}"):
            p = sh([*dvc, "repro"], root, env | {"MLFLOW_TRACKING_URI": uri}, timeout=120, check=False)
            assert p.returncode != 0 and uri in p.stderr + p.stdout, p.stderr
            assert "Running stage 'train'" not in p.stdout, p.stdout
            assert outputs(root) == before, f"a dead server at {uri} cost an output"

    (root / "params.yaml").write_text(good)
    again = sh([*dvc, "repro"], root, env)
    ran = [line for line in again.stdout.splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'check':"], again.stdout
    assert outputs(root) == before

    # A failure the check cannot see: DVC has already deleted train's outputs when the stage fails. The way back
    # that docs/reliability.md gives: dvc checkout for cached outputs, git for the cache: false ones.
    store = root / "mlflow.db"
    shutil.copy(store, tmp_path / "mlflow.db.bak")
    store.write_bytes(b"not a database")
    params = yaml.safe_load(good)
    params["train"]["epochs"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    p = sh([*dvc, "repro"], root, env, check=False)
    assert p.returncode != 0 and "Running stage 'train'" in p.stdout, p.stdout
    assert not (root / "models" / "model.pt").exists(), "DVC removed the output before the stage failed"
    shutil.copy(tmp_path / "mlflow.db.bak", store)
    sh(["git", "checkout", "--", "params.yaml", "dvc.lock", "metrics/"], root, env)
    sh([*dvc, "checkout"], root, env)
    assert outputs(root) == before
    status = sh([*dvc, "status"], root, env)
    assert "up to date" in status.stdout, status.stdout

    leaks = [str(f) for d in ("mlflow.db", "mlartifacts", "package", "metrics", "models")
             for f in ([root / d] if (root / d).is_file() else (root / d).rglob("*"))
             if f.is_file() and SECRET.encode() in f.read_bytes()]
    assert not leaks, f"a secret from the environment was written to {leaks}"
