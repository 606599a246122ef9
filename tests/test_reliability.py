"""Hostile and broken inputs at the edges (docs/reliability.md lists every case): model files that are empty, cut
or planted, outputs that cannot be written, images too large to decode, a registry asked to register a model it
holds, a store whose checkout was copied, a zip that points outside its folder, secrets in the environment."""

from __future__ import annotations

import os
import pickle
import shutil
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import log_evaluation
from PIL import Image

from polycolor.config.params import parse_config
from polycolor.config.training import ModelConfig
from polycolor.data.ayna import ImageTooLarge, load_image
from polycolor.data.ingest import ingest
from polycolor.errors import PolycolorError
from polycolor.nn import modelio
from polycolor.nn.model import ConditionalUNet
from polycolor.serving import pyfunc

MARKER_ENV = "POLYCOLOR_TEST_MARKER"


def tiny_model(path: Path, seed: int = 0, meta: dict | None = None) -> Path:
    torch.manual_seed(seed)
    modelio.save_model(path, ConditionalUNet(ModelConfig(widths=(4, 8)), ("red", "blue"), 32), meta=meta or {})
    return path


def png_of_size(path: Path, width: int, height: int) -> Path:
    """A real, decodable 1-bit white PNG of any size, written in milliseconds: rows are streamed through zlib
    (Pillow would build the whole image first: 4 s and 50 MB for 20000 x 20000). A few KB on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + b"\xff" * ((width + 7) // 8)  # filter 0, all pixels 1 (white)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "polycolor.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=180, env=os.environ.copy())


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """A scratch cwd with a store path that does not exist: nothing here touches the repo's store."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --------------------------------------------------------------------------------------------- model files

@pytest.mark.slow  # starts a process or trains: not in make test-fast
def test_empty_and_truncated_model_files_say_so_and_how_to_get_them_back(work):
    good = tiny_model(work / "model.pt")
    data = good.read_bytes()
    (work / "empty.pt").write_bytes(b"")
    Image.new("RGB", (32, 32), "white").save(work / "in.png")
    for cut in (len(data) // 2, len(data) - 1, 100):
        (work / "cut.pt").write_bytes(data[:cut])
        with pytest.raises(PolycolorError, match=r"truncated.*dvc checkout") as e:
            modelio.load_model(work / "cut.pt")
        assert "\n" not in str(e.value)
    with pytest.raises(PolycolorError, match=r"empty \(0 bytes\).*dvc checkout.*models:/polycolor@champion"):
        modelio.load_model(work / "empty.pt")
    for name, words in (("empty.pt", "empty"), ("cut.pt", "truncated")):
        line = one_line_error(cli("predict", "--model", name, "--input", "in.png", "--colour", "red",
                                  "--output", "out.png", cwd=work))
        assert words in line and "dvc checkout" in line, line


@pytest.mark.slow  # starts a process or trains: not in make test-fast
@pytest.mark.parametrize("how", ["raw pickle", "torch archive", "inside a valid model's meta"])
def test_planted_pickles_never_run(work, how):
    """A model file whose pickle would run code on load: torch.load(weights_only=True) refuses it, nothing runs."""
    marker = work / "pwned"

    class Planted:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = work / "model.pt"
    if how == "raw pickle":
        path.write_bytes(pickle.dumps(Planted()))
    elif how == "torch archive":
        torch.save({"state_dict": Planted()}, path)
    else:
        torch.manual_seed(0)
        payload = modelio.model_payload(ConditionalUNet(ModelConfig(widths=(4, 8)), ("red",), 32), meta={})
        payload["meta"] = {"note": Planted()}
        torch.save(payload, path)
    with pytest.raises(PolycolorError, match="cannot load model file") as e:
        modelio.load_model(path)
    assert "\n" not in str(e.value)
    Image.new("RGB", (32, 32), "white").save(work / "in.png")
    one_line_error(cli("predict", "--model", "model.pt", "--input", "in.png", "--colour", "red",
                       "--output", "out.png", cwd=work))
    assert not marker.exists(), "the planted pickle ran"


def flip_weight_bytes(path: Path) -> None:
    """Invert 16 bytes in the middle of the model file's largest tensor, keeping size and mtime (DVC sees nothing)."""
    st = path.stat()
    with zipfile.ZipFile(path) as z:
        entry = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with path.open("r+b") as f:
        f.seek(entry.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
        at = entry.header_offset + 30 + name_len + extra_len + entry.file_size // 2
        f.seek(at)
        chunk = f.read(16)
        f.seek(at)
        f.write(bytes(b ^ 0xFF for b in chunk))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.slow  # starts a process or trains: not in make test-fast
def test_a_corrupt_model_file_is_refused_with_the_way_back(work):
    """Bytes flipped inside the weights, size and mtime kept: the zip is intact, torch loads it, only the file's own
    content hash (format 2) says it. Refused by load_model and by `polycolor predict` in one line."""
    good = tiny_model(work / "model.pt")
    mtime = good.stat().st_mtime_ns
    flip_weight_bytes(good)
    assert good.stat().st_mtime_ns == mtime
    with pytest.raises(PolycolorError, match=r"corrupt.*dvc checkout --relink.*dvc repro --force train") as e:
        modelio.load_model(good)
    assert "\n" not in str(e.value)
    Image.new("RGB", (32, 32), "white").save(work / "in.png")
    line = one_line_error(cli("predict", "--model", "model.pt", "--input", "in.png", "--colour", "red",
                              "--output", "out.png", cwd=work))
    assert "corrupt" in line and not (work / "out.png").exists(), line


def test_a_format_1_model_file_without_a_hash_still_loads(work):
    torch.manual_seed(0)
    payload = modelio.model_payload(ConditionalUNet(ModelConfig(widths=(4, 8)), ("red",), 32), meta={"run_id": "r"})
    payload["format_version"] = 1
    del payload[modelio.DIGEST_KEY]
    torch.save(payload, work / "old.pt")
    loaded = modelio.load_model(work / "old.pt")
    assert loaded.meta["run_id"] == "r"
    for k, v in payload["state_dict"].items():
        assert torch.equal(v, loaded.model.state_dict()[k].contiguous()), k


# --------------------------------------------------------------------------------------------- outputs

@pytest.mark.slow  # starts a process or trains: not in make test-fast
def test_an_unwritable_output_names_the_path_the_user_gave(work):
    """Writing goes through a hidden temporary beside the output; the error must name the output, not it.
    /sys refuses new files even to root (a chmod-ed folder would not stop root)."""
    tiny_model(work / "model.pt")
    Image.new("RGB", (32, 32), "white").save(work / "in.png")
    target = "/sys/polycolor-out.png"
    line = one_line_error(cli("predict", "--model", "model.pt", "--input", "in.png", "--colour", "red",
                              "--output", target, cwd=work))
    assert f"cannot write {target}" in line and ".tmp-" not in line, line


# --------------------------------------------------------------------------------------------- large images

def test_an_image_over_max_pixels_is_refused_from_its_header(tmp_path):
    big = png_of_size(tmp_path / "big.png", 12000, 12000)  # 144 Mpx: ~7 GB to decode as the issue measured
    bomb = png_of_size(tmp_path / "bomb.png", 20000, 20000)  # over Pillow's own bomb limit (179 Mpx)
    assert big.stat().st_size < 1_000_000
    start = time.perf_counter()
    with pytest.raises(ImageTooLarge, match=r"too large: 12000 x 12000 px, limit 16777216 px"):
        load_image(big, None, 4096 * 4096)
    with pytest.raises(ImageTooLarge, match=r"too large: 20000 x 20000 px, limit 16777216 px"):
        load_image(bomb, None, 4096 * 4096)
    assert time.perf_counter() - start < 5, "refused from the header, not after decoding"
    small = png_of_size(tmp_path / "small.png", 40, 30)
    assert load_image(small, None, 1200).shape == (30, 40, 3)
    with pytest.raises(ImageTooLarge, match=r"too large: 40 x 30 px, limit 1199 px"):
        load_image(small, None, 1199)


@pytest.mark.slow  # starts a process or trains: not in make test-fast
def test_predict_refuses_a_large_image_with_the_reason(work):
    tiny_model(work / "model.pt")
    png_of_size(work / "bomb.png", 20000, 20000)
    png_of_size(work / "in.png", 64, 64)
    (work / "params.yaml").write_text("serving:\n  max_pixels: 4000\n")
    args = ("predict", "--model", "model.pt", "--colour", "red", "--output", "out.png")
    line = one_line_error(cli(*args, "--input", "bomb.png", "--params", "/dev/null", cwd=work))  # the default
    assert "too large: 20000 x 20000 px, limit 16777216 px" in line, line
    line = one_line_error(cli(*args, "--input", "in.png", cwd=work))  # params.yaml here: 4000 px
    assert "too large: 64 x 64 px, limit 4000 px (serving.max_pixels)" in line, line
    assert not (work / "out.png").exists()
    split = work / "split"
    for sub in ("inputs", "outputs"):
        (split / sub).mkdir(parents=True)
        shutil.copy(work / "in.png", split / sub / "in.png")
    (split / "data.json").write_text('[{"input_polygon": "in.png", "colour": "red", "output_image": "in.png"}]')
    line = one_line_error(cli("predict", "--model", "model.pt", "--data", "split", "--output", "painted", cwd=work))
    assert "too large: 64 x 64 px, limit 4000 px" in line, line
    assert not (work / "painted").exists()


def test_pyfunc_refuses_a_large_image_as_an_invalid_parameter(tmp_path):
    """The packaged model carries its limit (model_config) and answers MLflow's own exception, which the scoring
    server turns into HTTP 400 with this message (tests/test_serve.py checks over HTTP)."""
    import base64

    import mlflow
    from mlflow.exceptions import MlflowException

    from polycolor.serving import package

    model = tiny_model(tmp_path / "model.pt")
    loaded = modelio.load_model(model)
    card = package.model_card(loaded, name="t", run_info={}, run_params={}, eval_metrics={}, max_pixels=2000)
    package.save_package(tmp_path / "package", model, card, loaded.image_size, max_pixels=2000)
    served = mlflow.pyfunc.load_model(str(tmp_path / "package"))
    b64 = base64.b64encode(png_of_size(tmp_path / "a.png", 50, 50).read_bytes()).decode()
    ok = base64.b64encode(png_of_size(tmp_path / "b.png", 40, 40).read_bytes()).decode()
    with pytest.raises(MlflowException) as e:
        served.predict(pd.DataFrame({"image": [ok, b64], "colour": ["red", "red"]}))
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"
    assert e.value.message == "row 1: too large: 50 x 50 px, limit 2000 px (serving.max_pixels)", e.value.message
    assert len(served.predict(pd.DataFrame({"image": [ok], "colour": ["red"]}))) == 1
    with pytest.raises(PolycolorError, match="row 0: too large: 50 x 50 px"):  # the default limit otherwise
        pyfunc.predict_frame(loaded, pd.DataFrame({"image": [b64], "colour": ["red"]}), max_pixels=100)


# --------------------------------------------------------------------------------------------- registry

@pytest.fixture
def store(tmp_path, monkeypatch, mlflow_store):
    """A fresh sqlite store (a copy of the template) with one training run; a secret planted in the environment."""
    import mlflow

    from polycolor.tracking.store import configure, ensure_experiment

    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "planted-secret-4f1c9a")
    configure()
    with mlflow.start_run(experiment_id=ensure_experiment("polycolor-test")) as run:
        mlflow.log_param("train.lr", 0.003)
    return tmp_path, {"run_id": run.info.run_id, "git_commit": "feedface"}


def test_registration_is_idempotent_on_the_model_content(store):
    import mlflow

    from polycolor.serving import package, registry

    root, run_info = store
    (root / "ev").mkdir()
    eval_json = log_evaluation(run_info["run_id"], root / "ev", {"val": {"net": {"psnr_mean": 30.0}}})

    def register(model: Path, out: str, info: dict) -> str:
        return package.package_model(model_path=model, out_dir=root / out, run_info=info, eval_path=eval_json,
                                     name="polycolor").version

    first = register(tiny_model(root / "a.pt", seed=0, meta={"epoch": 1}), "p1", run_info)
    # the same weights and config re-exported (other meta, another lineage): the existing version, re-tagged
    again = register(tiny_model(root / "b.pt", seed=0, meta={"epoch": 2}), "p2", run_info | {"git_commit": "c0ffee"})
    other = register(tiny_model(root / "c.pt", seed=1), "p3", run_info)
    client = mlflow.MlflowClient()
    versions = client.search_model_versions("name = 'polycolor'")
    assert again == first and other != first, (first, again, other)
    assert len(versions) == 2, [v.version for v in versions]
    mv = client.get_model_version("polycolor", first)
    assert mv.tags["git_commit"] == "c0ffee" and len(mv.tags[registry.CONTENT_TAG]) == 64
    assert registry.aliases("polycolor")[registry.CANDIDATE] == other
    for pkg in ("p1", "p2", "p3"):
        assert (root / pkg / "MLmodel").is_file(), "the package folder is built every time"
    # nothing of the environment's secrets lands in the store, its artifacts or the packages
    leaks = [p for p in root.rglob("*") if p.is_file() and b"planted-secret-4f1c9a" in p.read_bytes()]
    assert not leaks, leaks


# --------------------------------------------------------------------------------------------- data

def test_a_zip_source_cannot_write_outside_its_folder(tmp_path, small_source):
    """Members named ../x or /x are extracted inside the temporary folder (zipfile drops those parts)."""
    src = tmp_path / "src.zip"
    with zipfile.ZipFile(src, "w") as zf:
        for f in small_source.rglob("*"):
            if f.is_file():
                zf.write(f, f.relative_to(small_source).as_posix())
        zf.writestr("../../escaped.txt", "outside")
        zf.writestr("/tmp/polycolor-escaped-abs.txt", "absolute")
    cfg = parse_config({"ingest": {"source": str(src), "image_size": 32}}).ingest
    ingest(cfg, 0, tmp_path / "out" / "dataset")
    assert (tmp_path / "out" / "dataset" / "manifest.csv").is_file()
    assert not list(tmp_path.parent.rglob("escaped.txt")) and not Path("/tmp/polycolor-escaped-abs.txt").exists()


# --------------------------------------------------------------------------------------------- moved store

def test_a_copied_checkout_refuses_a_store_that_writes_into_the_original(tmp_path, monkeypatch):
    """The experiment's artifact location is absolute: a copied checkout's runs would write into the original.
    The default sqlite store says so and what to do, instead of writing anywhere."""
    from polycolor.tracking.store import configure, ensure_experiment

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    original = tmp_path / "original"
    original.mkdir()
    (original / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(original)
    configure()
    ensure_experiment("polycolor")
    shutil.copytree(original, tmp_path / "copy", symlinks=True)  # cp -a
    monkeypatch.chdir(tmp_path / "copy")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # as in a new process (set_tracking_uri sets it)
    with pytest.raises(PolycolorError) as e:
        configure()
    msg = str(e.value)
    assert "\n" not in msg and str(original / "mlartifacts") in msg and "mv mlflow.db" in msg, msg
    monkeypatch.chdir(original)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert configure().endswith(f"{original}/mlflow.db"), "the original store is still fine"
