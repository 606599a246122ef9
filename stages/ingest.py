"""DVC stage `ingest`: params.yaml (seed, ingest) -> data/dataset (Ayna layout + manifest.csv)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from polycolor.config.data import DataParams
from polycolor.data.ingest import ingest
from polycolor.errors import run_guarded
from polycolor.fileio import atomic_output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file")
    parser.add_argument("--out", default="data/dataset", help="dataset folder to (re)create")
    args = parser.parse_args(argv)
    return run_guarded(lambda: run(args))


def run(args: argparse.Namespace) -> None:
    cfg = DataParams.load(args.params)
    start = time.perf_counter()
    with atomic_output(Path(args.out)) as tmp:  # a failure leaves the previous dataset untouched
        manifest = ingest(cfg.ingest, cfg.seed, tmp)
    counts = manifest["split"].value_counts()
    print(f"ingest: {counts.get('training', 0)} training + {counts.get('validation', 0)} validation samples "
          f"({cfg.ingest.source}, {cfg.ingest.image_size} px) -> {args.out} in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    sys.exit(main())
