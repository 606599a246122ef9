"""Watching the served model (issue 27): the descriptors, the prediction log under faults and concurrent writers,
`polycolor monitor`'s verdicts, and drift found from real requests to a real `mlflow models serve`."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from polycolor.config.monitoring import MonitorConfig
from polycolor.config.params import load_params
from polycolor.config.training import ModelConfig
from polycolor.data.synth import jpeg
from polycolor.monitoring import log as plog
from polycolor import monitor as pmon
from polycolor.monitoring.descriptors import blockiness, describe_input
from polycolor.monitoring.observe import ModelIdentity, Watch
from polycolor.monitoring.profile import build_reference
from polycolor.monitoring.traffic import traffic
from polycolor.nn import modelio
from polycolor.nn.model import ConditionalUNet
from polycolor.serving.pyfunc import encode_png
from polycolor.stack import free_port

REPO = Path(__file__).parents[1]
CFG = load_params(REPO / "params.yaml")
WINDOW, SHIFTED = 250, 100  # the drift test's window and its shifted predictions
# The drift test's shifts: a new input format and a new geometry (all four: polycolor bench --monitor)
TESTED_SHIFTS = ("jpeg", "large")


def outline(size: int = 128, width: int = 3, closed: bool = True) -> np.ndarray:
    im = Image.new("RGB", (size, size), "white")
    from PIL import ImageDraw

    d = ImageDraw.Draw(im)
    box = [size // 4, size // 4, 3 * size // 4, 3 * size // 4]
    if closed:
        d.rectangle(box, outline="black", width=width)
    else:
        d.line([box[0], box[1], box[2], box[1], box[2], box[3]], fill="black", width=width)
    return np.asarray(im).copy()


def tiny_model(path: Path) -> Path:
    torch.manual_seed(0)
    model = ConditionalUNet(ModelConfig(widths=(4, 8), colour_encoding="rgb"), ("red",), 32)
    modelio.save_model(path, model, meta={})
    return path


# ---------------------------------------------------------------------------------------- descriptors


def test_descriptors_say_what_a_person_sees():
    clean = describe_input(outline(width=3))
    assert clean["closed"] == 1.0 and clean["drawings"] == 1.0
    assert 2.0 <= clean["line_width"] <= 4.5, clean["line_width"]
    assert clean["page_grey"] == 0.0 and clean["near_white"] == 0.0 and clean["blockiness"] == pytest.approx(1.0,
                                                                                                               abs=0.3)
    assert describe_input(outline(closed=False))["closed"] == 0.0
    thick = describe_input(outline(width=12))
    assert thick["line_width"] > 2 * clean["line_width"] and thick["ink_share"] > 2 * clean["ink_share"]
    compressed = describe_input(jpeg(outline(width=3), 60))
    assert compressed["near_white"] > 0.01 and blockiness(outline(width=3).min(axis=-1)) == 1.0
    big = describe_input(outline(size=512, width=12))
    assert (big["height"], big["width"]) == (512.0, 512.0) and 9.0 <= big["line_width"] <= 16.0


# ---------------------------------------------------------------------------------------- the log


def make_record(i: int) -> dict:
    return {"time": f"2026-12-07T10:00:{i % 60:02d}.000+00:00", "model_sha256": "abc", "i": i, "x": float("nan")}


def test_the_log_appends_rotates_and_skips_what_is_corrupt(tmp_path):
    log = plog.PredictionLog(tmp_path, MonitorConfig(rotate_mb=0.001))  # ~1 kB per file
    for i in range(40):
        log.append(lambda i=i: make_record(i))
    assert log.flush()
    assert len(plog.log_files(tmp_path)) > 2, "rotated by size"
    with open(tmp_path / plog.CURRENT, "a") as f:
        f.write('{"time": "2026-12-07T11:00:00", "model_sha256": "abc", "cut off')  # a crash mid-line
        f.write("\nnot json at all\n[1, 2]\n{\"no\": \"time\"}\n")
    read = plog.read_log(tmp_path)
    assert sorted(r["i"] for r in read.records) == list(range(40)), "every record, once"
    assert read.corrupt == 4 and read.records[0]["x"] is None  # NaN is written as null
    log.close()


def test_an_unwritable_log_is_reported_once_and_painting_goes_on(tmp_path, capfd):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the log folder should be")
    model = modelio.load_model(tiny_model(tmp_path / "m.pt"))
    log = plog.PredictionLog(blocker / "log")
    watch = Watch("test", ModelIdentity("polycolor", "", "abc"), None, log)
    images = [outline(64), outline(64, closed=False), outline(48)]
    out = watch.paint(model, images, ["red", "blue", "#00ff00"], CFG.paint, "painted")
    assert [o.shape for o in out] == [im.shape for im in images]
    assert log.flush()
    assert log.failed == 3 and log.written == 0
    err = capfd.readouterr().err
    assert err.count("prediction log") == 1 and "predictions go on" in err, err
    log.close()
    assert "3 prediction log record(s) lost" in capfd.readouterr().err


def _append_many(root: str, n: int, tag: int) -> None:
    log = plog.PredictionLog(root, MonitorConfig(rotate_mb=0.05))
    for i in range(n):
        log.append(lambda i=i: {**make_record(i), "writer": tag, "pad": "x" * 200})
    log.close()


def test_several_processes_write_one_log_without_losing_or_mixing_lines(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), 300, k)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    read = plog.read_log(tmp_path)
    assert read.corrupt == 0 and len(read.records) == 900
    for k in range(3):
        assert sorted(r["i"] for r in read.records if r["writer"] == k) == list(range(300))


# ---------------------------------------------------------------------------------------- verdicts


def run_monitor(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "polycolor.cli", "monitor", "--no-mlflow", "--workspace", "",
                           *args], cwd=REPO, capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=300)


def test_monitor_without_a_verdict_says_why_in_one_line(tmp_path):
    empty = run_monitor("--log", str(tmp_path / "none"), "--out", str(tmp_path / "out"))
    assert empty.returncode == 2 and "is empty" in empty.stderr and "Traceback" not in empty.stderr
    log = plog.PredictionLog(tmp_path / "log")
    for i in range(5):
        log.append(lambda i=i: make_record(i))
    log.close()
    few = run_monitor("--log", str(tmp_path / "log"), "--out", str(tmp_path / "out"))
    assert few.returncode == 2 and "fewer than monitor.min_records" in few.stderr, few.stderr
    (tmp_path / "p.yaml").write_text("monitor: {min_records: 5, window: 5}\n")
    unknown = run_monitor("--log", str(tmp_path / "log"), "--params", str(tmp_path / "p.yaml"),
                          "--package", str(tmp_path / "no-package"), "--out", str(tmp_path / "out"),
                          env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"})
    assert unknown.returncode == 2 and "no reference profile" in unknown.stderr, unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists(), "no verdict, no report"


# ---------------------------------------------------------------------------------------- a real scoring server


def send(url: str, images: list[np.ndarray], colours: list[str]) -> None:
    import urllib.request

    for start in range(0, len(images), 16):  # the pyfunc's rows per request
        rows = [[encode_png(im), c] for im, c in zip(images[start:start + 16], colours[start:start + 16])]
        req = urllib.request.Request(f"{url}/invocations", method="POST", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"dataframe_split": {"columns": ["image", "colour"],
                                                                          "data": rows}}).encode())
        with urllib.request.urlopen(req, timeout=120) as resp:
            assert resp.status == 200


def wait_for_records(root: Path, n: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(plog.read_log(root).records) >= n:
            return
        time.sleep(0.5)
    raise AssertionError(f"the log at {root} has {len(plog.read_log(root).records)} of {n} records")


@pytest.fixture
def watched_package(tmp_path) -> Path:
    """A package of a tiny model whose reference profile is 600 pairs drawn like the default training data."""
    from polycolor.data.synth import generate
    from polycolor.serving import package

    model_path = tiny_model(tmp_path / "model.pt")
    loaded = modelio.load_model(model_path)
    ref = tmp_path / "reference"
    ref.mkdir()
    build_reference(loaded, generate(CFG.ingest, 600, 7), CFG.paint, ref)
    card = package.model_card(loaded, name="polycolor", run_info={"run_id": "r"}, run_params={}, eval_metrics={})
    package.save_package(tmp_path / "package", model_path, card, loaded.image_size, paint=CFG.paint,
                         watching=package.Watching("polycolor", CFG.monitor, ref))
    return tmp_path / "package"


@pytest.mark.slow
def test_drift_is_found_from_real_requests_to_mlflow_models_serve(watched_package, tmp_path, browser, screenshots):
    from services import running

    log_root = tmp_path / "log"
    env = {**os.environ, "POLYCOLOR_PREDICTION_LOG": str(log_root), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db",
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    # The benchmark's windows (500, 200 shifted: polycolor bench --monitor) at half the size, the same shift share, so
    # the suite sends 750 requests, not 2,500
    params = tmp_path / "params.yaml"
    params.write_text(f"monitor: {{window: {WINDOW}, min_records: 100}}\n")
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(watched_package), "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port)]
    url = f"http://127.0.0.1:{port}"
    sent = 0
    verdicts = {}
    with running(cmd, f"{url}/ping", tmp_path / "serve.log", cwd=tmp_path, env=env, timeout=180):
        for i, kind in enumerate(["training", *TESTED_SHIFTS]):
            clean = traffic("training", WINDOW if kind == "training" else WINDOW - SHIFTED, CFG.ingest, seed=100 + i)
            shifted = ([], []) if kind == "training" else traffic(kind, SHIFTED, CFG.ingest, seed=200 + i)
            send(url, clean[0] + shifted[0], clean[1] + shifted[1])
            sent += len(clean[0]) + len(shifted[0])
            wait_for_records(log_root, sent)
            out = tmp_path / f"out-{kind}"
            args = ["--log", str(log_root), "--package", str(watched_package), "--out", str(out), "--params", str(params),
                    "--workspace", str(tmp_path / "workspace")]
            proc = subprocess.run([sys.executable, "-m", "polycolor.cli", "monitor", *args], cwd=REPO, env=env,
                                  capture_output=True, text=True, timeout=300)
            verdicts[kind] = (proc.returncode, proc.stdout + proc.stderr)
            assert (out / "report.html").is_file() and json.loads((out / "monitor.json").read_text())["records"] == WINDOW
    assert verdicts["training"][0] == 0, verdicts["training"][1]
    for kind in TESTED_SHIFTS:
        code, text = verdicts[kind]
        assert code == 1 and "DRIFT:" in text and "dvc exp run" in text, (kind, text)
    assert "JPEG" in verdicts["jpeg"][1] and "wider" in verdicts["large"][1]

    import mlflow

    runs = mlflow.MlflowClient(f"sqlite:///{tmp_path}/m.db").search_runs(
        [mlflow.MlflowClient(f"sqlite:///{tmp_path}/m.db").get_experiment_by_name("polycolor-monitoring")
         .experiment_id])
    assert len(runs) == 3 and {r.data.metrics["passed"] for r in runs} == {0.0, 1.0}
    from evidently.ui.workspace import Workspace

    ws = Workspace(str(tmp_path / "workspace"))
    (project,) = ws.search_project(pmon.PROJECT)
    assert len(ws.list_runs(project.id)) == 3

    # docs/monitoring.md's screenshots, in a real browser: the JPEG case's report, and `evidently ui` on the workspace
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto((tmp_path / "out-jpeg" / "report.html").as_uri())
    page.get_by_text("Dataset Drift is detected").first.wait_for(timeout=60_000)
    page.get_by_text("near_white").first.wait_for(timeout=30_000)
    page.screenshot(path=str(screenshots / "monitoring-report.png"))
    ui_port = free_port()
    ui = [sys.executable, "-m", "evidently.cli", "ui", "--workspace", str(tmp_path / "workspace"), "--host",
          "127.0.0.1", "--port", str(ui_port)]
    with running(ui, f"http://127.0.0.1:{ui_port}/api/projects", tmp_path / "ui.log", cwd=tmp_path,
                 env={**env, "EVIDENTLY_DISABLE_TELEMETRY": "1"}, timeout=120):
        page.goto(f"http://127.0.0.1:{ui_port}/projects/{project.id}")
        page.get_by_text("Drifted descriptors").first.wait_for(timeout=60_000)
        page.get_by_text("Embedding drift").first.wait_for(timeout=30_000)
        page.wait_for_timeout(2000)  # the plots draw after their titles
        page.screenshot(path=str(screenshots / "monitoring-ui.png"), full_page=True)
    records = pd.DataFrame(plog.read_log(log_root).records)
    assert set(records["face"]) == {"serve"} and records["emb_0"].notna().all()


@pytest.mark.slow
def test_several_machines_share_one_log_on_the_stacks_postgresql(team_stack, monkeypatch):
    """The team stack's log: a database beside MLflow's, written by several processes at once (as scoring servers on
    several machines would), read back whole by `polycolor monitor`'s reader."""
    url = team_stack.database_url("monitoring")
    monkeypatch.setenv("PGPASSFILE", str(team_stack.dir / "pgpass"))
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(url, 100, k)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert plog.read_log(url).records
    read = plog.read_log(url)
    assert read.corrupt == 0 and len(read.records) == 200
    for k in range(2):
        assert sorted(r["i"] for r in read.records if r["writer"] == k) == list(range(100))


def test_kept_inputs_stop_at_their_cap_and_export_as_an_ayna_split(tmp_path):
    from polycolor.data.ayna import read_split

    log = plog.PredictionLog(tmp_path / "log", MonitorConfig(sample_share=1.0, sample_cap_mb=0.0005))  # ~500 bytes
    for i in range(4):
        log.append(lambda i=i: make_record(i), image=outline(64, width=2 + i), colour=["red", "#00ff00"][i % 2])
    assert log.flush()
    log.close()
    kept = [r for r in plog.read_log(tmp_path / "log").records if r.get("sample")]
    assert 1 <= len(kept) < 4, "the cap stops keeping inputs"
    assert pmon.export_samples(tmp_path / "log", tmp_path / "monitored", "polycolor") == len(kept)
    split = read_split(tmp_path / "monitored")
    assert [s.colour for s in split] == [r["sample_colour"] for r in kept]
    with pytest.raises(pmon.PolycolorError, match="exists and is not empty"):
        pmon.export_samples(tmp_path / "log", tmp_path / "monitored", "polycolor")
