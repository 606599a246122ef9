"""DVC stage `train`: fit the conditional UNet, checkpoint every epoch, export models/model.pt, track in MLflow.

With train.nproc > 1 this process becomes the torchrun launcher and runs this same script as nproc DDP ranks
(`python -m torch.distributed.run --standalone --nproc-per-node N stages/train.py ...`, in-process); the stage's
command in dvc.yaml stays the same for any nproc.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from polycolor import signals
from polycolor.config.training import TrainingParams
from polycolor.errors import run_guarded
from polycolor.training import distributed
from polycolor.training.train import run_training
from polycolor.training.trainer import resolve_device, set_torch_globals


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
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
    return run_guarded(lambda: run(args, argv))


def run(args: argparse.Namespace, argv: list[str]) -> None:
    cfg = TrainingParams.load(args.params)
    # Never outlive DVC (or, for a rank, the launcher): a signal or a vanished parent stops training with the last
    # checkpoint kept and the MLflow run closed as KILLED.
    with distributed.exit_with_parent(), signals.stop_signals():
        try:
            device = resolve_device(cfg.train.device)  # cuda:LOCAL_RANK in a rank on CUDA
            if cfg.train.nproc > 1 and not distributed.in_worker():
                distributed.launch(cfg.train.nproc, __file__, argv, device)
                return
            set_torch_globals(cfg.train)
            with distributed.process_group(device):
                run_training(cfg, train_dir=Path(args.train), val_dir=Path(args.val),
                             checkpoint_dir=Path(args.checkpoints), model_path=Path(args.model),
                             metrics_path=Path(args.metrics), curve_path=Path(args.curve),
                             run_info_path=Path(args.run_info))
        except signals.Terminated as e:  # reported like Ctrl-C: "error: interrupted", exit 130
            raise KeyboardInterrupt from e


if __name__ == "__main__":
    sys.exit(main())
