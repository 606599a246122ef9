"""The ingest stage: synthetic and folder/.zip sources, manifest, validation, all-or-nothing writes, and the CLI."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, TINY, tree_digest
from helpers import format_problems
from PIL import Image

from polycolor.config.data import IngestConfig
from polycolor.data import ayna
from polycolor.data.ingest import ingest
from polycolor.errors import PolycolorError


def write_params(path: Path, **ingest_overrides) -> Path:
    ingest_cfg = {f.name: getattr(TINY, f.name) for f in dataclasses.fields(TINY)}
    ingest_cfg.update(ingest_overrides)
    ingest_cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in ingest_cfg.items()}
    path.write_text(yaml.safe_dump({"seed": 0, "ingest": ingest_cfg}))
    return path


# --- synthetic -----------------------------------------------------------------------------------------------------

def test_synthetic_dataset_layout_and_manifest(tiny_dataset):
    manifest = pd.read_csv(tiny_dataset / "manifest.csv", keep_default_na=False)
    assert list(manifest.columns) == ayna.MANIFEST_COLUMNS
    assert manifest["split"].value_counts().to_dict() == {"training": 10, "validation": 4}
    for split, n in (("training", 10), ("validation", 4)):
        samples = ayna.read_split(tiny_dataset / split)
        data = ayna.load_split(tiny_dataset / split)
        assert len(samples) == n and data.inputs.shape == (n, 32, 32, 3)
        rows = manifest[manifest["split"] == split].reset_index(drop=True)
        for i, s in enumerate(samples):
            assert rows.loc[i, "input"] == f"{split}/inputs/{s.input_path.name}"
            assert rows.loc[i, "output"] == f"{split}/outputs/{s.output_path.name}"
            assert (tiny_dataset / rows.loc[i, "output"]).is_file()
            assert rows.loc[i, "colour"] == s.colour and rows.loc[i, "shape"] == s.shape
            assert tuple(rows.loc[i, ["r", "g", "b"]]) == s.rgb
            assert s.input_path.name == f"{i:05d}_{s.shape}.png"
            assert s.output_path.name == f"{i:05d}_{s.colour.lstrip('#')}_{s.shape}.png"
            assert format_problems(data.inputs[i], data.targets[i]) == []


def test_synthetic_ingest_is_byte_identical_and_seeded(tmp_path, tiny_dataset):
    ingest(TINY, 0, tmp_path / "again")
    assert tree_digest(tmp_path / "again") == tree_digest(tiny_dataset)
    ingest(TINY, 1, tmp_path / "other")
    assert tree_digest(tmp_path / "other") != tree_digest(tiny_dataset)
    train, val = ayna.load_split(tiny_dataset / "training"), ayna.load_split(tiny_dataset / "validation")
    assert not any(np.array_equal(v, t) for v in val.targets for t in train.targets), "splits use separate streams"


def test_synthetic_ingest_writes_the_same_bytes_on_any_number_of_workers(tmp_path):
    """ingest.workers spreads the drawing over processes: 1, 2 and 3 workers write the same files, byte for byte
    (40 pairs: three tasks of data.workers.CHUNK, so every worker gets some)."""
    from dataclasses import replace

    cfg = replace(TINY, train_samples=40, val_samples=8)
    digests = {}
    for workers in (1, 2, 3):
        ingest(replace(cfg, workers=workers), 0, tmp_path / f"w{workers}")
        digests[workers] = tree_digest(tmp_path / f"w{workers}")
    assert digests[1] == digests[2] == digests[3]
    assert len(digests[1]) == 2 * (40 + 8) + 3, "inputs and outputs of both splits, two data.json, the manifest"


def test_grey_and_noisy_inputs_are_written_losslessly(tmp_path):
    """JPEG-noisy, anti-aliased and downscaled inputs go to PNG as they were drawn; targets stay two-valued."""
    from polycolor.data import synth
    from polycolor.data.ingest import SEED_STREAMS

    cfg = dataclasses.replace(TINY, train_samples=12, val_samples=2, jpeg_fraction=0.5, antialias_fraction=0.5,
                              downscale_fraction=0.5, gap_fraction=0.5, vertex_gap_fraction=0.5)
    ingest(cfg, 3, tmp_path / "ds")
    data = ayna.load_split(tmp_path / "ds" / "training")
    drawn = synth.render_specs(synth.sample_specs(cfg, 12, np.random.default_rng([3, SEED_STREAMS["training"]])), 32)
    assert np.array_equal(data.inputs, drawn.inputs) and np.array_equal(data.targets, drawn.targets)
    assert len(np.unique(data.inputs)) > 2, "grey and noisy inputs"
    assert all(len(np.unique(t.reshape(-1, 3), axis=0)) == 2 for t in data.targets)


# --- folder and zip sources ----------------------------------------------------------------------------------------

def test_real_ayna_folder_ingests_cleanly(tmp_path, ayna_dir):
    cfg = IngestConfig(source=str(ayna_dir))
    manifest = ingest(cfg, 0, tmp_path / "ds")
    assert manifest["split"].value_counts().to_dict() == {"training": 56, "validation": 5}
    assert (manifest["shape"] != "").all()
    written = pd.read_csv(tmp_path / "ds" / "manifest.csv", keep_default_na=False)
    assert len(written) == 61 and written.equals(manifest)
    for split in ("training", "validation"):
        a, b = ayna.load_split(ayna_dir / split), ayna.load_split(tmp_path / "ds" / split)
        assert np.array_equal(a.inputs, b.inputs) and np.array_equal(a.targets, b.targets)
        assert a.colours == b.colours
        assert json.loads((tmp_path / "ds" / split / "data.json").read_text()) == \
            json.loads((ayna_dir / split / "data.json").read_text())


def test_zip_source_with_a_top_folder(tmp_path, small_source):
    archive = tmp_path / "ayna.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(small_source.rglob("*")):
            zf.write(p, Path("ayna-dataset") / p.relative_to(small_source))
    manifest = ingest(IngestConfig(source=str(archive), image_size=32), 0, tmp_path / "ds")
    assert manifest["split"].value_counts().to_dict() == {"training": 3, "validation": 2}
    assert len(list((tmp_path / "ds" / "training" / "inputs").iterdir())) == 2, "a shared input is written once"


def test_non_rgb_and_other_sizes_are_converted(tmp_path, small_source):
    split = small_source / "training"
    entries = json.loads((split / "data.json").read_text())
    inp = split / "inputs" / entries[2]["input_polygon"]
    Image.open(inp).convert("L").save(inp)  # greyscale
    out = split / "outputs" / entries[2]["output_image"]
    Image.open(out).resize((64, 64), Image.Resampling.NEAREST).convert("P").save(out)  # other size, palette
    ingest(IngestConfig(source=str(small_source), image_size=32), 0, tmp_path / "ds")
    for name in (f"inputs/{inp.name}", f"outputs/{out.name}"):
        im = Image.open(tmp_path / "ds" / "training" / name)
        assert (im.mode, im.size) == ("RGB", (32, 32)), name
    data = ayna.load_split(tmp_path / "ds" / "training")
    assert format_problems(data.inputs[2], data.targets[2]) == []
    up = ayna.load_split(small_source / "validation", size=48)
    assert ingest(IngestConfig(source=str(small_source), image_size=48), 0, tmp_path / "ds48") is not None
    assert np.array_equal(ayna.load_split(tmp_path / "ds48" / "validation").targets, up.targets)


def test_source_without_the_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PolycolorError, match="does not hold the Ayna layout"):
        ingest(IngestConfig(source=str(tmp_path / "empty")), 0, tmp_path / "ds")
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(PolycolorError, match="is not a readable .zip"):
        ingest(IngestConfig(source=str(tmp_path / "bad.zip")), 0, tmp_path / "ds2")
    # the filesystem check lives in ingest, not in config validation (config stays pure)
    IngestConfig(source="/no/such/ayna-folder").validate()
    with pytest.raises(PolycolorError, match="'/no/such/ayna-folder' is neither 'synthetic' nor an existing"):
        ingest(IngestConfig(source="/no/such/ayna-folder"), 0, tmp_path / "ds3")


# --- the stage: bad input leaves the previous output untouched -----------------------------------------------------

def _break_missing_file(src: Path) -> str:
    e = json.loads((src / "validation" / "data.json").read_text())[1]
    (src / "validation" / "outputs" / e["output_image"]).unlink()
    return rf"validation/data.json entry 1: output_image file .*{e['output_image']} does not exist"


def _break_corrupt_png(src: Path) -> str:
    e = json.loads((src / "training" / "data.json").read_text())[2]
    (src / "training" / "inputs" / e["input_polygon"]).write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    return rf"training/data.json entry 2: cannot decode image .*{e['input_polygon']}"


def _break_colour(src: Path) -> str:
    entries = json.loads((src / "training" / "data.json").read_text())
    entries[1]["colour"] = "blurple"
    (src / "training" / "data.json").write_text(json.dumps(entries))
    return r"training/data.json entry 1 \(.*\): unknown colour 'blurple'"


def _break_json(src: Path) -> str:
    (src / "validation" / "data.json").write_text('[{"input_polygon": "x.png", ')
    return r"validation/data.json is not valid JSON"


@pytest.mark.parametrize("breaker", [_break_missing_file, _break_corrupt_png, _break_colour, _break_json])
def test_stage_bad_input_is_one_line_and_keeps_previous_output(tmp_path, small_source, stage, capsys, breaker):
    out = tmp_path / "data" / "dataset"
    params = write_params(tmp_path / "params.yaml", source=str(small_source))
    assert stage("ingest").main(["--params", str(params), "--out", str(out)]) == 0
    before = tree_digest(out)
    capsys.readouterr()

    pattern = breaker(small_source)
    assert stage("ingest").main(["--params", str(params), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert re.search(pattern, err), err
    assert tree_digest(out) == before, "the previous dataset must stay as it was"
    assert sorted(p.name for p in out.parent.iterdir()) == ["dataset"], "no temporary folder left behind"


def test_stage_bad_params_is_one_line(tmp_path, stage, capsys):
    params = write_params(tmp_path / "params.yaml", train_samples=-3)
    assert stage("ingest").main(["--params", str(params), "--out", str(tmp_path / "ds")]) == 1
    err = capsys.readouterr().err
    assert err == "error: ingest.train_samples must be >= 1, got -3\n"
    assert not (tmp_path / "ds").exists()


def test_stage_script_runs_and_fails_cleanly(tmp_path):
    """The real process: exit 0 on good params, exit 1 with one `error:` line and no traceback on bad ones."""
    params = write_params(tmp_path / "params.yaml")
    ok = subprocess.run([sys.executable, "stages/ingest.py", "--params", str(params), "--out", str(tmp_path / "ds")],
                        cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "ds" / "manifest.csv").is_file()
    bad = write_params(tmp_path / "bad.yaml", shapes=["triangle", "hexagram"])
    r = subprocess.run([sys.executable, "stages/ingest.py", "--params", str(bad), "--out", str(tmp_path / "ds")],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.startswith("error: ingest.shapes") and "'hexagram'" in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert (tmp_path / "ds" / "manifest.csv").is_file()
