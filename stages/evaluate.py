"""DVC stage `evaluate`: score the network alone, the full painter and the flood-fill reference on every set."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from polycolor.config.params import load_params
from polycolor.errors import run_guarded
from polycolor.evaluation.evaluate import run_evaluation

SHOWN = ("psnr_mean", "psnr_min", "iou", "colour_accuracy", "bleeding", "latency_ms_p50", "n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", required=True, help="the model file written by train")
    ap.add_argument("--data", required=True, help="Ayna-layout validation split")
    ap.add_argument("--run-info", required=True, help="the training run's info (JSON) written by train")
    ap.add_argument("--metrics", required=True, help="eval.json: every figure (git-tracked, read by reports)")
    ap.add_argument("--headline", required=True, help="headline.json: the figures `dvc exp show` compares")
    ap.add_argument("--tables", required=True, help="folder for samples.csv, per_colour.csv, per_shape.csv, "
                                                    "confusion.csv")
    ap.add_argument("--grid", required=True, help="qualitative grid PNG")
    args = ap.parse_args(argv)
    return run_guarded(lambda: run(args))


def run(args: argparse.Namespace) -> None:
    cfg = load_params(args.params)
    ev = run_evaluation(cfg, model_path=Path(args.model), data_dir=Path(args.data),
                        run_info_path=Path(args.run_info), metrics_path=Path(args.metrics),
                        headline_path=Path(args.headline),
                        tables_dir=Path(args.tables), grid_path=Path(args.grid))
    print(f"{'set':<16}{'scorer':<12}" + "".join(f"{k:>16}" for k in SHOWN))
    for name, block in ev.metrics.items():
        if "skipped" in block:
            print(f"{name:<16}  skipped: {block['skipped']}")
            continue
        for scorer, values in block.items():
            if not set(values) & set(SHOWN[:-1]):  # the behavioural shares
                print(f"{name:<16}{scorer:<12}" + "  ".join(f"{k}={v:.4g}" for k, v in values.items()))
                continue
            cells = [values.get(k) for k in SHOWN]
            print(f"{name:<16}{scorer:<12}" + "".join(f"{'-' if v is None else f'{v:.4g}':>16}" for v in cells))


if __name__ == "__main__":
    sys.exit(main())
