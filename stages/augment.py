"""DVC stage `augment`: data/dataset/training -> data/augmented (originals + augmented copies) and a sample grid."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from polycolor.config.data import DataParams
from polycolor.data.augment import augment_dataset
from polycolor.data.ayna import write_png
from polycolor.errors import run_guarded
from polycolor.fileio import atomic_output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file")
    parser.add_argument("--data", default="data/dataset", help="dataset written by the ingest stage")
    parser.add_argument("--out", default="data/augmented", help="augmented dataset folder to (re)create")
    parser.add_argument("--grid", default="metrics/augment_grid.png",
                        help="PNG grid: original input, original target, augmented input, augmented target")
    args = parser.parse_args(argv)
    return run_guarded(lambda: run(args))


def run(args: argparse.Namespace) -> None:
    cfg = DataParams.load(args.params)
    start = time.perf_counter()
    # Both outputs replace the old ones only when everything has been written.
    with atomic_output(Path(args.out)) as tmp_out, atomic_output(Path(args.grid)) as tmp_grid:
        result = augment_dataset(args.data, tmp_out, cfg.augment, cfg.seed)
        write_png(tmp_grid, result.grid)
    n_orig = int((result.manifest["copy"] == 0).sum())
    print(f"augment: {n_orig} originals + {len(result.manifest) - n_orig} copies -> {args.out} "
          f"({result.affine_dropped} with flips/turns only: no affine draw kept the polygon whole) "
          f"in {time.perf_counter() - start:.1f}s; grid -> {args.grid}")


if __name__ == "__main__":
    sys.exit(main())
