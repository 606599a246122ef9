"""DVC stage `monitor` (monitoring/dvc.yaml, outside the training pipeline: `dvc repro -f monitoring/dvc.yaml`): a
window of the prediction log against its version's reference profile, as `polycolor monitor` does
(polycolor.monitor). The log lives outside the repository (monitoring.log.location), so the stage always runs when
forced; it fails (exit 1) on drift and (exit 2) without a verdict, so DVC, cron or CI see it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from polycolor.config.params import load_params
from polycolor.errors import PolycolorError, run_guarded
from polycolor.monitoring import log
from polycolor.monitor import judge


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--package", default="package", help="the reference's fallback when the registry has none")
    ap.add_argument("--workspace", default="monitoring/workspace", help="the Evidently workspace")
    ap.add_argument("--out", required=True, help="report.html, report.json and monitor.json go here")
    args = ap.parse_args(argv)
    return run_guarded(lambda: run(args))


def run(args: argparse.Namespace) -> int:
    cfg = load_params(args.params)
    root = log.location()
    if root is None:
        raise PolycolorError(f"the prediction log is off (${log.ENV}=off): nothing to monitor")
    return judge(cfg.monitor, log_root=root, name=cfg.mlflow.registered_model, package=Path(args.package),
                 out_dir=Path(args.out), workspace=Path(args.workspace))


if __name__ == "__main__":
    sys.exit(main())
