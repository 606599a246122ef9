"""DVC stage `train`: fit the conditional UNet, checkpoint every epoch, export models/model.pt, track in MLflow."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from polycolor.config import load_params
from polycolor.errors import run_guarded
from polycolor.training.train import run_training


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--train", required=True, help="Ayna-layout training split (augmented)")
    ap.add_argument("--val", required=True, help="Ayna-layout validation split")
    ap.add_argument("--checkpoints", required=True, help="folder for last.pt / best.pt (DVC persist output)")
    ap.add_argument("--model", required=True, help="where the self-describing model file goes")
    ap.add_argument("--metrics", required=True, help="final training metrics (JSON)")
    ap.add_argument("--curve", required=True, help="per-epoch curve (CSV, a DVC plot)")
    ap.add_argument("--run-info", required=True, help="MLflow run id and lineage (JSON) for evaluate and package")
    args = ap.parse_args(argv)
    return run_guarded(lambda: run(args))


def run(args: argparse.Namespace) -> None:
    cfg = load_params(args.params)
    run_training(cfg, train_dir=Path(args.train), val_dir=Path(args.val), checkpoint_dir=Path(args.checkpoints),
                 model_path=Path(args.model), metrics_path=Path(args.metrics), curve_path=Path(args.curve),
                 run_info_path=Path(args.run_info))


if __name__ == "__main__":
    sys.exit(main())
