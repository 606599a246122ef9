"""What each post-processing step adds, measured on its own: the evaluate stage's sets scored by the network alone
and by the painter under several `paint` settings (each step on or off), PSNR mean / min and IoU per set.

    PYTHONPATH=src python docs/experiments/paint_steps.py [--model models/model.pt] [--n 64]

A step whose row is below the `net` row on some set costs quality there; the default `paint` section keeps only
steps that never do (docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from polycolor.config.params import load_params
from polycolor.evaluation import metrics as M
from polycolor.evaluation.sets import load_sets, subset
from polycolor.nn.modelio import load_model
from polycolor.painting.painter import paint, paint_net

SETTINGS = {
    "canonical + snap always": dict(canonical="always", snap="always"),
    "canonical + snap resized": dict(canonical="always", snap="resized"),
    "canonical only": dict(canonical="always", snap="off"),
    "snap always only": dict(canonical="off", snap="always"),
    "snap resized only": dict(canonical="off", snap="resized"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", default="models/model.pt")
    ap.add_argument("--data", default="data/dataset/validation")
    ap.add_argument("--n", type=int, default=64, help="samples per set (the first n)")
    ap.add_argument("--sets", nargs="*", default=None, help="only these sets")
    args = ap.parse_args()
    cfg = load_params(args.params)
    loaded = load_model(args.model)
    sets, _ = load_sets(cfg, args.data)
    painters = {"net": lambda x, c: paint_net(loaded, x, c)}
    for name, over in SETTINGS.items():
        painters[name] = (lambda p: lambda x, c: paint(loaded, x, c, p))(dataclasses.replace(cfg.paint, **over))
    print(f"{'set':<16}{'painter':<28}{'mean':>8}{'min':>8}{'IoU':>8}{'s':>7}")
    for s in sets:
        if args.sets and s.name not in args.sets:
            continue
        arrays = subset(s.arrays, np.arange(min(args.n, len(s.arrays))))
        for name, predict in painters.items():
            t = time.perf_counter()
            rows = M.score(arrays.targets, predict(arrays.inputs, arrays.colours), arrays.colours, arrays.shapes)
            summary = M.summarise(rows)
            print(f"{s.name:<16}{name:<28}{summary['psnr_mean']:>8.2f}{summary['psnr_min']:>8.2f}"
                  f"{summary['iou']:>8.4f}{time.perf_counter() - t:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
