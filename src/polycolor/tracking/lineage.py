"""Where a run comes from: the git commit and dirty flag, the platform its floats depend on, the DVC experiment,
and run.json, the file through which the train stage hands its run to evaluate and package."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from polycolor.errors import PolycolorError
from polycolor.fileio import write_json_atomic

# What a run is made from: code and params. The pipeline's own outputs (dvc.lock, metrics/, models/) are left out,
# so the first `dvc repro` of a clean clone is not flagged dirty by the files it writes itself.
SOURCE_PATHS = ("src", "stages", "params.yaml", "dvc.yaml", "pyproject.toml")
PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's parent-run tag: an evaluation run or a study's trial under its parent


def git_info(root: Path) -> dict[str, str]:
    """Commit and dirty flag of the repo at `root` (empty strings outside git); dirty means SOURCE_PATHS differ from
    the commit (tracked changes or new files there), not that the pipeline rewrote its outputs."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--", *SOURCE_PATHS) if commit else ""
    return {"git_commit": commit, "git_dirty": "true" if dirty else "false"}


# Environment settings that change which CPU kernels run (docs/reproducibility.md), recorded when set.
CPU_ENV = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "NPY_DISABLE_CPU_FEATURES", "OMP_NUM_THREADS")


def platform_info() -> dict[str, str]:
    """What a training run's float results depend on beyond code, params and data (tags): torch and numpy
    versions, the instruction set ATen dispatches to, the thread count, the CPU architecture, and the CPU_ENV
    settings that are set. Same values, same weights bit for bit; other values, figures differ in later digits."""
    import platform

    import numpy as np
    import torch

    info = {"torch_version": torch.__version__, "numpy_version": np.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch_threads": str(torch.get_num_threads()),
            "cpu_arch": platform.machine()}
    return info | {f"env.{k}": os.environ[k] for k in CPU_ENV if os.environ.get(k)}


def dvc_experiment_name() -> str:
    return os.environ.get("DVC_EXP_NAME", "")


def write_run_info(path: str | Path, info: dict[str, Any]) -> None:
    write_json_atomic(path, info, sort_keys=True)


def read_run_info(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        info = json.loads(p.read_text())
    except FileNotFoundError:
        raise PolycolorError(f"run info not found: {p} (run the train stage first)") from None
    except json.JSONDecodeError as e:
        raise PolycolorError(f"run info {p} is not valid JSON: {e}") from None
    if "run_id" not in info:
        raise PolycolorError(f"run info {p} has no run_id")
    return info
