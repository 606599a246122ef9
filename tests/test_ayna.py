"""The Ayna layout: validation of data.json and images, conversion, writing, the shared format checker, and
atomic outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import format_problems
from PIL import Image

from polycolor import fileio
from polycolor.colours import AYNA_COLOURS
from polycolor.config.data import IngestConfig
from polycolor.data import ayna, synth
from polycolor.errors import PolycolorError

# --- the real data ------------------------------------------------------------------------------------------------

def test_read_real_splits(ayna_dir):
    train = ayna.read_split(ayna_dir / "training")
    val = ayna.read_split(ayna_dir / "validation")
    assert (len(train), len(val)) == (56, 5)
    assert {s.colour for s in train} == set(AYNA_COLOURS)
    for s in train + val:
        assert s.rgb == AYNA_COLOURS[s.colour]
        assert s.shape == s.input_path.stem, f"shape not guessed from {s.input_path.name}"
        assert s.output_path.name == f"{s.colour}_{s.shape}.png"


@pytest.mark.slow  # starts a process or trains: not in make test-fast
def test_real_pairs_have_the_ayna_look(ayna_dir):
    """The shared checker accepts every real pair (and tests/test_synth.py applies it to synthetic pairs)."""
    for split in ("training", "validation"):
        data = ayna.load_split(ayna_dir / split)
        assert data.inputs.shape[1:] == (128, 128, 3)
        for i in range(len(data)):
            assert format_problems(data.inputs[i], data.targets[i]) == [], f"{split} entry {i}"
            colours = {tuple(v) for v in np.unique(data.targets[i].reshape(-1, 3), axis=0).tolist()}
            assert colours == {(255, 255, 255), tuple(data.rgb[i].tolist())}


def test_format_checker_catches_bad_pairs(ayna_dir):
    data = ayna.load_split(ayna_dir / "validation")
    inp, tgt = data.inputs[0], data.targets[0]
    shifted = np.roll(tgt, 3, axis=1)  # a target misaligned by 3 px leaves outline pixels uncovered
    assert any("not covered" in p for p in format_problems(inp, shifted))
    blurred = inp.copy()
    blurred[(inp == 0).all(-1) & (np.arange(128)[None, :] % 2 == 0)] = 128  # anti-aliasing-like grey
    assert any("exactly black and white" in p for p in format_problems(blurred, tgt))
    two_colours = tgt.copy()
    two_colours[:4, :4] = (1, 2, 3)
    assert any("one colour" in p for p in format_problems(inp, two_colours))


def test_guess_shape():
    assert ayna.guess_shape("red_star.png") == "star"
    assert ayna.guess_shape("00012_1a2b3c_hexagon.png") == "hexagon"
    assert ayna.guess_shape("aug1_00003_00003_circle.png") == "circle"
    assert ayna.guess_shape("starfish.png") is None


# --- loading images ------------------------------------------------------------------------------------------------

def _two_valued_square(size: int) -> np.ndarray:
    a = np.full((size, size, 3), 255, np.uint8)
    a[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = (0, 0, 255)
    return a


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "1", "CMYK"])
def test_load_image_converts_any_mode_to_rgb(tmp_path, mode):
    rgb = Image.fromarray(_two_valued_square(16) if mode not in ("L", "LA", "1") else
                          np.repeat(np.where(_two_valued_square(16)[..., :1] == 0, 0, 255).astype(np.uint8), 3, -1))
    path = tmp_path / f"x.{'jpg' if mode == 'CMYK' else 'png'}"
    rgb.convert(mode).save(path)
    out = ayna.load_image(path)
    assert out.dtype == np.uint8 and out.shape == (16, 16, 3)
    if mode != "CMYK":  # lossless modes round-trip exactly
        assert np.array_equal(out, np.asarray(rgb.convert(mode).convert("RGB")))


def test_transparent_background_becomes_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)  # fully transparent black...
    rgba[2:6, 2:6] = (255, 0, 0, 255)  # ...around an opaque red square
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    out = ayna.load_image(tmp_path / "t.png")
    assert (out[0, 0] == 255).all() and tuple(out[3, 3]) == (255, 0, 0)


def test_load_image_resizes_with_nearest(tmp_path):
    Image.fromarray(_two_valued_square(64)).save(tmp_path / "big.png")
    out = ayna.load_image(tmp_path / "big.png", size=32)
    assert out.shape == (32, 32, 3)
    assert len(np.unique(out.reshape(-1, 3), axis=0)) == 2, "nearest resizing keeps images two-valued"
    assert np.array_equal(ayna.load_image(tmp_path / "big.png", size=64), _two_valued_square(64))


def test_load_image_errors_name_the_file(tmp_path):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(PolycolorError, match=r"cannot decode image .*corrupt\.png"):
        ayna.load_image(tmp_path / "corrupt.png")
    good = tmp_path / "good.png"
    Image.fromarray(_two_valued_square(32)).save(good)
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[:60])
    with pytest.raises(PolycolorError, match=r"truncated\.png"):
        ayna.load_image(tmp_path / "truncated.png")
    with pytest.raises(PolycolorError, match=r"missing\.png does not exist"):
        ayna.load_image(tmp_path / "missing.png")


# --- data.json validation ------------------------------------------------------------------------------------------

def _entries(split_dir):
    return json.loads((split_dir / "data.json").read_text())


def _rewrite(split_dir, entries):
    (split_dir / "data.json").write_text(json.dumps(entries))


@pytest.mark.parametrize("edit, words", [
    (lambda d: (d / "data.json").write_text('[{"input_polygon": "a.png",'), ["is not valid JSON", "line 1"]),
    (lambda d: (d / "data.json").write_text('{"a": 1}'), ["must hold a list of entries, got dict"]),
    (lambda d: (d / "data.json").write_text("[]"), ["has no entries"]),
    (lambda d: (d / "data.json").unlink(), ["data.json not found"]),
    (lambda d: _rewrite(d, _entries(d)[:1] + ["oops"]), ["entry 1", "must be an object"]),
    (lambda d: _rewrite(d, [{k: v for k, v in e.items() if k != "colour"} for e in _entries(d)]),
     ["entry 0", "missing key 'colour'"]),
    (lambda d: _rewrite(d, [{**e, "colour": 7} for e in _entries(d)]), ["entry 0", "colour must be a string, got 7"]),
    (lambda d: _rewrite(d, _entries(d)[:2] + [{**_entries(d)[2], "colour": "blurple"}]),
     ["entry 2", "unknown colour 'blurple'"]),
    (lambda d: _rewrite(d, _entries(d) + [{**_entries(d)[0], "output_image": "gone.png"}]),
     ["entry 3", "output_image file", "gone.png does not exist"]),
    (lambda d: _rewrite(d, [{**_entries(d)[0], "input_polygon": "../../etc/passwd"}]),
     ["entry 0", "must be a plain file name inside inputs/"]),
    (lambda d: _rewrite(d, _entries(d) + [_entries(d)[0]]), ["entry 3", "already used by entry 0"]),
])
def test_malformed_splits_are_one_line_errors(small_source, edit, words):
    split = small_source / "training"
    edit(split)
    with pytest.raises(PolycolorError) as e:
        ayna.read_split(split)
    msg = str(e.value)
    assert "\n" not in msg
    assert str(split) in msg or "split folder" in msg, msg
    for w in words:
        assert w in msg, msg


def test_missing_input_file_names_entry_and_file(small_source):
    split = small_source / "training"
    name = _entries(split)[2]["input_polygon"]
    (split / "inputs" / name).unlink()
    with pytest.raises(PolycolorError, match=rf"entry 2: input_polygon file .*{name} does not exist"):
        ayna.read_split(split)


def test_corrupt_image_in_split_names_entry_and_file(small_source):
    split = small_source / "validation"
    name = _entries(split)[1]["output_image"]
    (split / "outputs" / name).write_bytes(b"garbage")
    with pytest.raises(PolycolorError, match=rf"data.json entry 1: cannot decode image .*{name}"):
        ayna.load_split(split)


def test_mixed_sizes_need_a_size(small_source):
    split = small_source / "training"
    name = _entries(split)[2]["output_image"]
    Image.fromarray(_two_valued_square(40)).save(split / "outputs" / name)
    with pytest.raises(PolycolorError, match="entry 2: output_image is 40x40 but the split's images are 32x32"):
        ayna.load_split(split)
    assert ayna.load_split(split, size=32).targets.shape == (3, 32, 32, 3)


# --- writing -------------------------------------------------------------------------------------------------------

def test_write_split_round_trips_and_shares_inputs(tmp_path):
    a = synth.generate(IngestConfig(image_size=32), 3, 0)
    inputs = a.inputs.copy()
    inputs[2] = inputs[0]
    names = ["a.png", "b.png", "a.png"]
    ayna.write_split(tmp_path / "s", inputs, a.targets, a.colours, names, ["o0.png", "o1.png", "o2.png"])
    assert sorted(p.name for p in (tmp_path / "s" / "inputs").iterdir()) == ["a.png", "b.png"]
    back = ayna.load_split(tmp_path / "s")
    assert np.array_equal(back.inputs, inputs) and np.array_equal(back.targets, a.targets)
    assert back.colours == a.colours and np.array_equal(back.rgb, a.rgb)
    with pytest.raises(ValueError, match="share input name"):
        ayna.write_split(tmp_path / "t", a.inputs, a.targets, a.colours, names, ["o0.png", "o1.png", "o2.png"])


def test_png_writing_is_byte_deterministic(tmp_path):
    img = synth.generate(IngestConfig(image_size=32), 1, 3).targets[0]
    ayna.write_png(tmp_path / "a.png", img)
    ayna.write_png(tmp_path / "b.png", img)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert Image.open(tmp_path / "a.png").info == {}, "no text/time chunks"


# --- atomic outputs ------------------------------------------------------------------------------------------------

def _old_output(path):
    path.mkdir()
    (path / "keep.txt").write_text("previous")


def test_atomic_output_replaces_a_folder_on_success(tmp_path):
    out = tmp_path / "out"
    _old_output(out)
    with fileio.atomic_output(out) as tmp:
        assert tmp.parent == out.parent and not tmp.exists()
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "no temporary or old folder left behind"


def test_atomic_output_keeps_the_old_output_on_error(tmp_path):
    out = tmp_path / "out"
    _old_output(out)
    with pytest.raises(RuntimeError):
        with fileio.atomic_output(out) as tmp:
            tmp.mkdir()
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("boom")
    assert (out / "keep.txt").read_text() == "previous" and len(list(out.iterdir())) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_output_files_keep_their_suffix(tmp_path):
    target = tmp_path / "grid.png"
    target.write_bytes(b"old")
    with fileio.atomic_output(target) as tmp:
        assert tmp.suffix == ".png"
        ayna.write_png(tmp, np.zeros((4, 4, 3), np.uint8))
    assert ayna.load_image(target).shape == (4, 4, 3)
    with pytest.raises(PolycolorError):
        with fileio.atomic_output(target) as tmp:
            tmp.write_bytes(b"partial")
            raise PolycolorError("bad")
    assert ayna.load_image(target).shape == (4, 4, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]


def test_an_exif_orientation_is_applied_as_every_viewer_does(tmp_path):
    from PIL import Image

    from polycolor.data.ayna import load_image

    pixels = np.full((32, 64, 3), 255, dtype=np.uint8)  # stored 64 wide, 32 high
    pixels[:, :8] = 0  # ink on the stored left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: turn 90 degrees clockwise to view
    path = tmp_path / "phone.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    shown = load_image(path)
    assert shown.shape == (64, 32, 3), "viewed 32 wide, 64 high"
    assert shown[:8].mean() < 60 and shown[-8:].mean() > 200, "the stored left edge is the top once turned"
