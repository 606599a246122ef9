"""Ingest + augment wall time against the number of worker processes (ingest.workers, augment.workers), at
params.yaml's data settings, each run into a fresh scratch folder, and whether every run wrote the same bytes.

    PYTHONPATH=src python docs/experiments/data_workers.py [--workers 1 2 4 8] [--repeats 2]

Prints one line per worker count: ingest s, augment s, their sum (the best of --repeats), the speed-up over the
first count, and the digest of both outputs (the same for every count, or the line says so).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

from polycolor.config.params import load_params
from polycolor.data.augment import augment_dataset
from polycolor.data.ingest import ingest
from polycolor.data.workers import available_cores
from polycolor.fileio import folder_digest


def one_run(cfg, workers: int, scratch: Path) -> tuple[float, float, str]:
    data, aug = scratch / "dataset", scratch / "augmented"
    t0 = time.perf_counter()
    ingest(dataclasses.replace(cfg.ingest, workers=workers), cfg.seed, data)
    t1 = time.perf_counter()
    augment_dataset(data, aug, dataclasses.replace(cfg.augment, workers=workers), cfg.seed)
    t2 = time.perf_counter()
    out = folder_digest(data, aug)
    shutil.rmtree(data)
    shutil.rmtree(aug)
    return t1 - t0, t2 - t1, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    cfg = load_params(args.params)
    print(f"{cfg.ingest.train_samples} + {cfg.ingest.val_samples} pairs at {cfg.ingest.image_size} px, "
          f"{cfg.augment.copies} augmented copy per training pair; {available_cores()} cores available")
    first, first_digest = None, None
    with tempfile.TemporaryDirectory(prefix="polycolor-workers-") as tmp:
        for workers in args.workers:
            runs = [one_run(cfg, workers, Path(tmp)) for _ in range(args.repeats)]
            best = min(runs, key=lambda r: r[0] + r[1])
            total = best[0] + best[1]
            first = first or total
            first_digest = first_digest or best[2]
            same = all(r[2] == first_digest for r in runs)
            print(f"workers {workers}: ingest {best[0]:.1f} s, augment {best[1]:.1f} s, both {total:.1f} s, "
                  f"speed-up {first / total:.2f}x; output {best[2]} ({'the same bytes' if same else 'DIFFERENT BYTES'})")


if __name__ == "__main__":
    main()
