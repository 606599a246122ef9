"""`polycolor predict` as a user runs it (a subprocess): single images, the real Ayna validation split, bad inputs."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from polycolor.colours import resolve_colour
from polycolor.config.paint import PaintConfig
from polycolor.config.training import ModelConfig
from polycolor.errors import PolycolorError
from polycolor.nn import modelio
from polycolor.nn.model import ConditionalUNet
from polycolor.serving import predict, registry

WHITE = (255, 255, 255)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A tiny untrained model (widths (4, 8), 32 px) whose mask head is biased to 1: it paints every pixel the
    requested colour, so outputs can be checked for colour."""
    torch.manual_seed(0)
    model = ConditionalUNet(ModelConfig(widths=(4, 8)), ("red", "blue"), 32)
    with torch.no_grad():
        model.out.bias.fill_(50.0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    modelio.save_model(path, model, meta={})
    return path


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """A scratch cwd whose MLflow store does not exist: nothing here may create one or touch the repo's."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "polycolor.cli", "predict", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=180, env=os.environ.copy())


def colours_of(path: Path) -> set[tuple[int, int, int]]:
    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB"))
    return {tuple(c) for c in np.unique(a.reshape(-1, 3), axis=0).tolist()}


def assert_one_line_error(proc: subprocess.CompletedProcess, expected: str) -> None:
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines


@pytest.mark.slow  # starts a process or trains: not in make test-fast
def test_predict_real_ayna_validation_split(model_file, work, ayna_val):
    out = work / "painted"
    proc = run_cli("--model", str(model_file), "--data", str(ayna_val), "--output", str(out), cwd=work)
    assert proc.returncode == 0, proc.stderr
    entries = json.loads((ayna_val / "data.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted(e["output_image"] for e in entries), \
        "one PNG per entry, named as its output_image, and no temporary files left"
    for e in entries:
        with Image.open(ayna_val / "inputs" / e["input_polygon"]) as src, Image.open(out / e["output_image"]) as res:
            assert res.format == "PNG" and res.size == src.size, (e, res.size, src.size)
        painted = colours_of(out / e["output_image"])
        assert painted <= {WHITE, resolve_colour(e["colour"])} and resolve_colour(e["colour"]) in painted, (e, painted)


@pytest.mark.slow  # starts a process or trains: not in make test-fast
def test_predict_single_image_any_size_and_mode(model_file, work):
    src = work / "odd.png"
    im = Image.new("LA", (50, 37), (0, 0))  # grey + alpha, not square, not the model's size; transparent = white
    ImageDraw.Draw(im).rectangle((22, 16, 28, 21), outline=(0, 255), width=2)  # an opaque black outline
    im.save(src)
    out = work / "deep" / "out.png"
    proc = run_cli("--model", str(model_file), "--input", str(src), "--colour", "#00ff00", "--output", str(out),
                   cwd=work)
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as im:
        assert im.size == (50, 37) and im.mode == "RGB"
        painted = (np.asarray(im) == (0, 255, 0)).all(axis=-1)
    assert colours_of(out) == {(0, 255, 0), WHITE}
    # this model paints every pixel it is shown, but only the ink's surroundings come back (canonical.restore)
    assert painted[16:22, 22:29].all() and not painted[:4].any(), "the rectangle and its outline, nothing far off"
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.png"], "no temporary files left"
    assert not (work / "mlflow.db").exists(), "predict from a file must not create an MLflow store"


@pytest.mark.slow  # starts a process or trains: not in make test-fast
def test_predict_from_package_folder_and_default(model_file, work):
    from polycolor.serving import package

    loaded = modelio.load_model(model_file)
    card = package.model_card(loaded, name="polycolor", run_info={}, run_params={}, eval_metrics={})
    package.save_package(work / "package", model_file, card, loaded.image_size)
    src = work / "in.png"
    Image.fromarray(package.example_outline(64)).save(src)
    proc = run_cli("--model", "package", "--input", str(src), "--colour", "blue", "--output", "a.png", cwd=work)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("--input", str(src), "--colour", "blue", "--output", "b.png", cwd=work)  # no store: package/
    assert proc.returncode == 0, proc.stderr
    digest = registry.package_digest(modelio.load_payload(model_file), dataclasses.asdict(PaintConfig()))
    assert f"model: {work / 'package'} (content_sha256 {digest})" in proc.stderr.splitlines(), \
        "without --model, predict names the model it uses: its path and content hash (issue 28)"
    assert (work / "a.png").read_bytes() == (work / "b.png").read_bytes()
    assert colours_of(work / "a.png") == {(0, 0, 255)}


@pytest.mark.slow  # starts a process or trains: not in make test-fast
def test_predict_bad_inputs_give_one_line_errors(model_file, work):
    good = work / "in.png"
    Image.new("RGB", (32, 32), "white").save(good)
    (work / "notes.png").write_text("this is not an image\n")
    out = work / "out.png"
    out.write_bytes(b"old")
    m = str(model_file)
    cases = [
        (("--model", m, "--input", str(good), "--colour", "reddish", "--output", str(out)), "unknown colour"),
        (("--model", m, "--input", str(work / "notes.png"), "--colour", "red", "--output", str(out)),
         "cannot decode image"),
        (("--model", m, "--input", str(work / "absent.png"), "--colour", "red", "--output", str(out)),
         "does not exist"),
        (("--model", str(work / "absent.pt"), "--input", str(good), "--colour", "red", "--output", str(out)),
         "model not found"),
        (("--model", str(work / "notes.png"), "--input", str(good), "--colour", "red", "--output", str(out)),
         "cannot load model file"),
        (("--model", "models:/polycolor@champion", "--input", str(good), "--colour", "red", "--output", str(out)),
         "no MLflow store"),
        (("--model", m, "--data", str(work), "--output", str(work / "o")), "data.json"),
    ]
    for args, expected in cases:
        assert_one_line_error(run_cli(*args, cwd=work), expected)
    assert out.read_bytes() == b"old", "a failed run leaves an existing output as it was"
    assert not (work / "mlflow.db").exists()


@pytest.mark.slow  # starts a process or trains: not in make test-fast
def test_missing_alias_or_model_in_an_existing_store_is_one_line(model_file, work, capsys):
    from polycolor.cli import main
    from polycolor.serving import registry
    from polycolor.tracking.store import configure

    configure()  # creates the store in `work`
    registry.register_version("polycolor", "/nonexistent/model", tags={})
    good = work / "in.png"
    Image.new("RGB", (32, 32), "white").save(good)
    proc = run_cli("--model", "models:/polycolor@champion", "--input", str(good), "--colour", "red",
                   "--output", "o.png", cwd=work)
    assert_one_line_error(proc, "alias champion not found")
    capsys.readouterr()
    assert main(["predict", "--model", "models:/nosuchmodel/1", "--input", str(good), "--colour", "red",
                 "--output", "o.png"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot resolve models:/nosuchmodel/1"), err


def test_usage_errors_exit_2(model_file, work):
    proc = run_cli("--model", str(model_file), "--input", "x.png", "--output", "o.png", cwd=work)
    assert proc.returncode == 2 and "--colour" in proc.stderr
    proc = run_cli("--model", str(model_file), "--output", "o.png", cwd=work)
    assert proc.returncode == 2


def test_model_reference_resolution(model_file, tmp_path):
    assert predict.is_mlflow_uri("models:/polycolor@champion") and predict.is_mlflow_uri("runs:/abc/model")
    assert not predict.is_mlflow_uri(str(model_file))
    with predict.resolve(str(model_file)) as source:
        assert source.path == model_file and source.paint is None, "a bare model file stores no paint section"
    (tmp_path / "pkg").mkdir()
    with pytest.raises(PolycolorError, match="no MLmodel"):
        with predict.resolve(str(tmp_path / "pkg")):
            pass


@pytest.mark.slow  # starts a process or trains: not in make test-fast
def test_predict_painter_and_paint_section(model_file, work):
    """--painter net is the network's own output (this model: every pixel). The full painter paints with the paint
    section stored in a package, whatever params.yaml says; for a bare .pt file with --params' (or params.yaml's)."""
    from polycolor.serving import package

    src = work / "in.png"
    Image.fromarray(package.example_outline(64)[:40, :40]).save(src)  # a corner of a square: ink near one side
    everything = {(255, 0, 0)}

    def paint(*args: str) -> tuple[set, str]:
        out = work / f"{len(list(work.glob('out*.png')))}out.png"
        proc = run_cli(*args, "--input", str(src), "--colour", "red", "--output", str(out), cwd=work)
        assert proc.returncode == 0, proc.stderr
        return colours_of(out), proc.stderr.strip()

    (work / "params.yaml").write_text("paint: {canonical: always}\n")
    (work / "off.yaml").write_text("paint: {canonical: 'off', snap: 'off'}\n")
    assert paint("--model", str(model_file), "--painter", "net")[0] == everything
    default, said = paint("--model", str(model_file))
    assert default == {(255, 0, 0), WHITE} and said == "painted with the paint section of params.yaml"
    assert paint("--model", str(model_file), "--params", "off.yaml") == (
        everything, "painted with the paint section of off.yaml")
    loaded = modelio.load_model(model_file)
    card = package.model_card(loaded, name="polycolor", run_info={}, run_params={}, eval_metrics={})
    package.save_package(work / "pkg", model_file, card, loaded.image_size, paint=PaintConfig(canonical="off"))
    assert paint("--model", "pkg") == (everything, "painted with the paint section stored with the model")
