"""`polycolor bench --monitor`: the monitoring figures, measured on this machine and printed.

- serving: p50 / p95 latency per image of a real `mlflow models serve` of the package, with the prediction log on and
  off (sequential single-image requests of training-like traffic, the same images both times);
- monitor: the time of `polycolor monitor` (reading, the Evidently report, HTML and JSON) over a log of 10,000
  predictions;
- drift: alarms in 20 windows of 500 predictions drawn like the training data (false alarms), and for each shift
  (monitoring.traffic.SHIFTS) whether a window of 300 such predictions and 200 shifted ones raises one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from polycolor.config.params import Config
from polycolor.errors import PolycolorError
from polycolor.monitoring import log as plog
from polycolor.monitoring.report import run_report
from polycolor.monitoring.traffic import SHIFTS, traffic
from polycolor.serving.pyfunc import encode_png
from polycolor.stack import answers, free_port, wait_ready

CLEAN_WINDOWS = 20
WINDOW = 500
SHIFTED = 200
LATENCY_REQUESTS = 200


def serving_latency(package: Path, images: list[np.ndarray], colours: list[str], log_root: Path | None,
                    workdir: Path) -> dict[str, float]:
    """p50 / p95 ms per single-image request to `mlflow models serve -m package`, logging to `log_root` (None:
    off). The first 10 requests warm up and are not counted."""
    port = free_port()
    env = {**os.environ, plog.ENV: str(log_root) if log_root else plog.OFF,
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    out = open(workdir / f"serve-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", str(package), "--env-manager",
                             "local", "-h", "127.0.0.1", "-p", str(port)], env=env, cwd=workdir, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready("mlflow models serve", proc, Path(out.name), lambda: answers(f"{url}/ping"), 180)
        times = []
        for image, colour in zip(images, colours):
            body = json.dumps({"dataframe_split": {"columns": ["image", "colour"],
                                                   "data": [[encode_png(image), colour]]}}).encode()
            req = urllib.request.Request(f"{url}/invocations", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
            start = time.perf_counter()
            urllib.request.urlopen(req, timeout=60).read()
            times.append((time.perf_counter() - start) * 1000.0)
        ms = np.array(times[10:])
        return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95))}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            proc.wait(30)
        out.close()


def logged_frame(package: Path, kind: str, n: int, cfg: Config, seed: int, root: Path) -> pd.DataFrame:
    """n predictions of traffic `kind` painted by the package's model with the package's paint section, logged
    into `root` as the faces log them; the records as a frame."""
    from polycolor.serving.predict import load_with_paint

    os.environ[plog.ENV] = str(root)
    served = load_with_paint(str(package), cfg.mlflow.registered_model, cfg.monitor, face="bench")
    if served.watch is None or served.watch.projection is None:
        raise PolycolorError(f"{package} has no reference profile: rebuild it with `dvc repro package`")
    images, colours = traffic(kind, n, cfg.ingest, seed)
    served.watch.paint(served.loaded, images, colours, served.paint or cfg.paint, "painted")
    served.watch.log.flush(600)
    return pd.DataFrame(plog.read_log(root).records)


def run_monitor_bench(cfg: Config, package: Path) -> dict[str, Any]:
    """Every figure of the module docstring."""
    from polycolor.monitor import monitor
    from polycolor.monitoring.profile import load_reference

    package = package.resolve()  # the scoring server runs in a scratch folder
    reference, _ = load_reference(package / "artifacts" / "reference", str(package))
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="polycolor-monitor-bench-") as tmp:
        work = Path(tmp)
        images, colours = traffic("training", LATENCY_REQUESTS, cfg.ingest, 1)
        off = serving_latency(package, images, colours, None, work)
        on = serving_latency(package, images, colours, work / "serve-log", work)
        figures["serving"] = {"off": off, "on": on, "added_p95_ms": on["p95_ms"] - off["p95_ms"],
                              "requests": LATENCY_REQUESTS - 10}
        clean = logged_frame(package, "training", CLEAN_WINDOWS * WINDOW, cfg, 2, work / "clean")
        start = time.perf_counter()
        code, _ = monitor(cfg.monitor, log_root=work / "clean", name=cfg.mlflow.registered_model, package=package,
                          out_dir=work / "report", workspace=None, log_to_mlflow=False)
        figures["monitor_10k"] = {"records": len(clean), "seconds": time.perf_counter() - start, "exit": code}
        alarms = []
        for w in range(CLEAN_WINDOWS):
            _, drift = run_report(clean.iloc[w * WINDOW:(w + 1) * WINDOW], reference, cfg.monitor)
            alarms.append({"window": w, "alarm": not drift.passed, "drifted": drift.drifted,
                           "max_drift": max(drift.scores.values()), "embedding": drift.embedding_score})
        figures["clean_windows"] = {"windows": CLEAN_WINDOWS, "alarms": sum(a["alarm"] for a in alarms),
                                    "max_drift": max(a["max_drift"] for a in alarms),
                                    "max_embedding": max(a["embedding"] for a in alarms), "each": alarms}
        figures["shifts"] = {}
        for i, kind in enumerate(SHIFTS):
            shifted = logged_frame(package, kind, SHIFTED, cfg, 10 + i, work / kind)
            window = pd.concat([clean.iloc[:WINDOW - SHIFTED], shifted], ignore_index=True)
            _, drift = run_report(window, reference, cfg.monitor)
            figures["shifts"][kind] = {"alarm": not drift.passed, "drifted": drift.drifted,
                                       "scores": {c: round(drift.scores[c], 3) for c in drift.drifted},
                                       "embedding": drift.embedding_score}
    return figures


def format_monitor(figures: dict[str, Any]) -> str:
    s, m, c = figures["serving"], figures["monitor_10k"], figures["clean_windows"]
    lines = [
        f"serving, log off: p50 {s['off']['p50_ms']:.1f} ms, p95 {s['off']['p95_ms']:.1f} ms per image "
        f"({s['requests']} requests)",
        f"serving, log on:  p50 {s['on']['p50_ms']:.1f} ms, p95 {s['on']['p95_ms']:.1f} ms; added at p95 "
        f"{s['added_p95_ms']:+.2f} ms (target <= 2)",
        f"polycolor monitor over {m['records']} logged predictions: {m['seconds']:.1f} s (target <= 30)",
        f"training-like traffic: {c['alarms']} alarm(s) in {c['windows']} windows of {WINDOW} "
        f"(largest descriptor drift {c['max_drift']:.3f}, embedding ROC AUC up to {c['max_embedding']:.3f})",
    ]
    for kind, f in figures["shifts"].items():
        lines.append(f"{SHIFTED} {kind} in {WINDOW}: {'ALARM' if f['alarm'] else 'no alarm'} "
                     f"({', '.join(f'{k} {v}' for k, v in f['scores'].items()) or 'nothing drifted'})")
    return "\n".join(lines)
