"""Training reproducibility, measured (docs/reproducibility.md): the real stages on a small config, trained and
evaluated under several CPU settings; prints each run's weight digest, final val loss and evaluation figures.

    PATH=.venv/bin:$PATH PYTHONPATH=src python docs/experiments/reproducibility.py OUT [--train-samples 200]

The config is params.yaml with presets/tiny.yaml over it and ingest.train_samples = --train-samples. ingest and
augment run once (their bytes do not depend on the CPU: tests/test_reproducibility.py); train and evaluate run once
per setting, each in a fresh folder under OUT, with an MLflow store of their own.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
# name: (environment, train.threads, torch.use_deterministic_algorithms); "machine" twice: same machine and threads.
SETTINGS = {
    "machine": ({}, 2, False),
    "machine_again": ({}, 2, False),
    "threads_1": ({}, 1, False),
    "aten_avx2": ({"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}, 2, False),
    "aten_default": ({"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}, 2, False),
    # An AVX2-only machine, oneDNN (convolutions) included: ATEN_CPU_CAPABILITY does not reach it.
    "avx2_onednn_avx2": ({"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}, 2, False),
    "deterministic_algorithms": ({}, 2, True),
}
# The train stage run with torch.use_deterministic_algorithms(True) set first.
DETERMINISTIC = ("import runpy, sys, torch; torch.use_deterministic_algorithms(True); sys.argv = sys.argv[1:]; "
                 "runpy.run_path(sys.argv[0], run_name='__main__')")
FIGURES = ("val.psnr_mean", "val.iou", "val.colour_accuracy", "gappy.psnr_mean", "behaviour.colour_change")


def params(train_samples: int, threads: int) -> dict:
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in yaml.safe_load((REPO / "presets" / "tiny.yaml").read_text()).items():
        p[section] = {**p.get(section, {}), **values}
    p["ingest"]["train_samples"] = train_samples
    p["train"]["threads"] = threads
    return p


def run(argv: list[str], env: dict[str, str]) -> None:
    r = subprocess.run([sys.executable, *argv], cwd=REPO, env=os.environ | env, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"{argv[0]} failed: {r.stderr[-2000:]}")


def weights_digest(model: Path) -> str:
    """sha256 over the state dict's tensors, in order (the file also holds the run id, which differs)."""
    state = torch.load(model, map_location="cpu", weights_only=True)["state_dict"]
    h = hashlib.sha256()
    for k, v in state.items():
        h.update(k.encode() + v.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out |= flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", type=Path)
    ap.add_argument("--train-samples", type=int, default=200)
    ap.add_argument("--settings", nargs="*", default=list(SETTINGS))
    args = ap.parse_args()
    out = args.out.resolve()
    data = out / "data"
    (out).mkdir(parents=True, exist_ok=True)
    (out / "params.yaml").write_text(yaml.safe_dump(params(args.train_samples, 2)))
    if not (data / "augmented").is_dir():
        run(["stages/ingest.py", "--params", str(out / "params.yaml"), "--out", str(data / "dataset")], {})
        run(["stages/augment.py", "--params", str(out / "params.yaml"), "--data", str(data / "dataset"),
             "--out", str(data / "augmented"), "--grid", str(out / "augment_grid.png")], {})
    print("setting | weights sha256[:16] | final val_loss | " + " | ".join(FIGURES) + " | train s")
    for name in args.settings:
        env, threads, deterministic = SETTINGS[name]
        d = out / name
        d.mkdir(exist_ok=True)
        p = params(args.train_samples, threads)
        (d / "params.yaml").write_text(yaml.safe_dump(p))
        env = env | {"MLFLOW_TRACKING_URI": f"sqlite:///{d}/mlflow.db"}
        start = time.perf_counter()
        run(["-c", DETERMINISTIC] * deterministic + [
            "stages/train.py", "--params", str(d / "params.yaml"), "--train", str(data / "augmented" / "training"),
            "--val", str(data / "dataset" / "validation"), "--checkpoints", str(d / "checkpoints"),
            "--model", str(d / "model.pt"), "--metrics", str(d / "train.json"), "--curve", str(d / "curve.csv"),
            "--run-info", str(d / "run.json")], env)
        seconds = time.perf_counter() - start
        run(["stages/evaluate.py", "--params", str(d / "params.yaml"), "--model", str(d / "model.pt"),
             "--data", str(data / "dataset" / "validation"), "--run-info", str(d / "run.json"),
             "--metrics", str(d / "eval.json"), "--tables", str(d / "eval"), "--grid", str(d / "eval_grid.png")], env)
        val_loss = float(pd.read_csv(d / "curve.csv")["val_loss"].iloc[-1])  # the last epoch's
        ev = flat(json.loads((d / "eval.json").read_text()))
        figures = " | ".join(f"{ev[f]:.6f}" if f in ev else "-" for f in FIGURES)
        print(f"{name} | {weights_digest(d / 'model.pt')} | {val_loss:.8f} | {figures} | {seconds:.1f}",
              flush=True)


if __name__ == "__main__":
    main()
