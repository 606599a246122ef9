"""DVC stage `package`: build package/ (MLflow pyfunc + model card), log it to the training run, register a new
version with alias `candidate`, and write metrics/registry.json."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from polycolor.config.params import load_params
from polycolor.errors import run_guarded
from polycolor.fileio import atomic_output, write_json_atomic
from polycolor.monitoring.profile import REFERENCE_ARTIFACT, profile_dataset
from polycolor.serving.package import Watching, package_model, read_eval_metrics
from polycolor.tracking.lineage import read_run_info
from polycolor.tracking.store import configure


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", required=True, help="the self-describing model file (models/model.pt)")
    ap.add_argument("--metrics", required=True, help="evaluate's metrics (metrics/eval.json)")
    ap.add_argument("--run-info", required=True, help="the training run's id and lineage (metrics/run.json)")
    ap.add_argument("--data", required=True, help="the dataset the reference profile is drawn from (data/dataset)")
    ap.add_argument("--out", required=True, help="the package folder to build (a DVC output)")
    ap.add_argument("--registry-info", required=True, help="where the registered name/version go (JSON)")
    args = ap.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # DVC logs stay readable
    return run_guarded(lambda: run(args))


def run(args: argparse.Namespace) -> None:
    cfg = load_params(args.params)
    run_info = read_run_info(args.run_info)
    read_eval_metrics(Path(args.metrics))  # a missing or malformed file fails before MLflow is touched
    configure()
    with atomic_output(args.out) as tmp, tempfile.TemporaryDirectory(prefix="polycolor-reference-") as ref:
        reference = Path(ref) / REFERENCE_ARTIFACT
        reference.mkdir()
        rows = profile_dataset(Path(args.model), Path(args.data), cfg.paint, cfg.monitor, cfg.seed, reference)
        print(f"reference profile: {rows} images (monitoring.profile)")
        watching = Watching(cfg.mlflow.registered_model, cfg.monitor, reference)
        result = package_model(model_path=Path(args.model), out_dir=Path(tmp), run_info=run_info,
                               eval_path=Path(args.metrics), name=cfg.mlflow.registered_model,
                               max_pixels=cfg.serving.max_pixels, paint=cfg.paint, watching=watching)
    write_json_atomic(args.registry_info, result.registry_info(), sort_keys=True)
    print(f"registered {result.model_uri} (alias @candidate) from run {result.run_id}; package in {args.out}")


if __name__ == "__main__":
    sys.exit(main())
