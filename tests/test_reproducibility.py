"""Same params, same bytes on any machine: the data stages (ingest, augment) write identical files whatever
instruction set ATen, MKL and numpy dispatch to and however many threads run (docs/reproducibility.md).

A machine without AVX-512 is simulated on this one: ATEN_CPU_CAPABILITY picks ATen's kernels, MKL_CBWR MKL's code
path, ONEDNN_MAX_CPU_ISA oneDNN's, NPY_DISABLE_CPU_FEATURES numpy's SIMD loops (with numpy 2.4's X86_V4 loops off,
float64 exp differs in the last ulp), OMP_NUM_THREADS the thread count.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, tree_digest

# One subprocess per setting runs both stages, so a setting reaches the libraries before they load.
STAGES = """
import runpy, sys
out = sys.argv[2]
for argv in (["stages/ingest.py", "--params", sys.argv[1], "--out", out + "/dataset"],
             ["stages/augment.py", "--params", sys.argv[1], "--data", out + "/dataset", "--out", out + "/augmented",
              "--grid", out + "/augment_grid.png"]):
    sys.argv = argv
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as e:
        if e.code:
            raise
"""

# Small but able to fail: at 128 px and the default augment params about one pair in 1000 has a nearest-neighbour
# sample whose float32 coordinate sits within rounding noise of a pixel edge. Seed 4 with 200 pairs holds one: the
# torch/torchvision affine of cc4fa8d sampled it differently under ATEN_CPU_CAPABILITY=default (a search over seeds
# 0-19 found it; the full default dataset has 2 such pairs in 2000).
PARAMS = {
    "seed": 4,
    "ingest": {"image_size": 128, "train_samples": 200, "val_samples": 2},
    "augment": {"copies": 1},
}


def _numpy_avx512_features() -> str:
    """NPY_DISABLE_CPU_FEATURES value that turns off numpy's AVX-512 dispatch targets this CPU has ('' if none):
    the names differ between numpy versions (AVX512F / AVX512_SKX before 2.4, X86_V4 from 2.4)."""
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    except ImportError:  # numpy 1.x
        from numpy.core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    return " ".join(f for f in __cpu_dispatch__ if f.startswith(("AVX512", "X86_V4")) and __cpu_features__.get(f))


SETTINGS: dict[str, dict[str, str]] = {
    "machine": {},
    "aten_default_mkl_compatible_1_thread": {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE",
                                             "OMP_NUM_THREADS": "1"},
    "avx2_only_2_threads": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                            "OMP_NUM_THREADS": "2"},
    "mkl_auto_numpy_without_avx512": {"MKL_CBWR": "AUTO", "NPY_DISABLE_CPU_FEATURES": _numpy_avx512_features()},
}
CPU_ENV = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
           "NPY_DISABLE_CPU_FEATURES")


def start_data_stages(params: Path, out: Path, setting: dict[str, str]) -> subprocess.Popen:
    """Start ingest and augment in one subprocess with `setting` in the environment, writing under out."""
    env = {k: v for k, v in os.environ.items() if k not in CPU_ENV} | {k: v for k, v in setting.items() if v}
    return subprocess.Popen([sys.executable, "-c", STAGES, str(params), str(out)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_data_stages_write_the_same_bytes_under_every_instruction_set_and_thread_count(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(PARAMS))
    runs = {name: start_data_stages(params, tmp_path / name, setting) for name, setting in SETTINGS.items()}
    for name, proc in runs.items():  # all at once: the subprocesses share the cores, the wall time is their sum / cores
        _, err = proc.communicate()
        assert proc.returncode == 0, f"{name}: {err[-2000:]}"
    digests = {name: tree_digest(tmp_path / name) for name in SETTINGS}
    reference = digests["machine"]
    assert len(reference) > 4 * PARAMS["ingest"]["train_samples"], "the stages wrote their files"
    for name, digest in digests.items():
        differ = sorted(p for p in reference.keys() | digest.keys() if reference.get(p) != digest.get(p))
        assert not differ, f"{name} ({SETTINGS[name]}) wrote {len(differ)} files differently: {differ[:4]}"


def dvc_md5(path: Path) -> tuple[str, int]:
    """(md5, size) of a file or folder as DVC writes them to dvc.lock (a folder's md5 is that of its `.dir`
    listing, with the `.dir` suffix), from DVC's own hashing code."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    _, meta, obj = build(HashFileDB(fs, str(path.parent / ".unused-odb")), str(path), fs, "md5", dry_run=True)
    return obj.hash_info.value, meta.size


@pytest.mark.slow
def test_the_committed_dvc_lock_is_what_a_fresh_machine_produces_for_ingest_and_augment(tmp_path):
    """Both stages with the committed params.yaml, in a fresh folder: every output's md5 and size equal the
    committed dvc.lock's (about a minute on 2 cores). A failure after a change to the generator or augmentation
    means dvc.lock needs `dvc repro augment` (docs/reproducibility.md)."""
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    params, data = REPO / "params.yaml", tmp_path / "data"
    for argv in (["stages/ingest.py", "--params", params, "--out", data / "dataset"],
                 ["stages/augment.py", "--params", params, "--data", data / "dataset", "--out", data / "augmented",
                  "--grid", tmp_path / "metrics" / "augment_grid.png"]):
        r = subprocess.run([sys.executable, *map(str, argv)], cwd=REPO, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
    for stage in ("ingest", "augment"):
        for out in lock[stage]["outs"]:
            got = dvc_md5(tmp_path / out["path"])
            assert got == (out["md5"], out["size"]), f"{stage}: {out['path']} is {got}, dvc.lock has {out['md5']}"
