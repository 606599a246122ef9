"""Augmentation: input and target move together, stay two-valued and inside the frame; it is reproducible;
validation data is never touched; the stage writes a grid and fails cleanly."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, TINY, tree_digest
from helpers import format_problems

from polycolor.config.data import AugmentConfig, IngestConfig
from polycolor.data import augment, ayna, synth
from polycolor.images import painted_mask

NONE = AugmentConfig(copies=1, hflip=0.0, vflip=0.0, rot90=False, degrees=0.0, scale=(1.0, 1.0), translate=0.0)


@pytest.fixture(scope="module")
def pairs() -> ayna.SplitArrays:
    """Pairs at 64 px with thin (1-2 px) outlines and large poses: the hardest case for resampling and framing."""
    return synth.generate(IngestConfig(image_size=64, scale=(0.3, 0.45), offset=0.15, outline_width=(1, 2),
                                       random_colour_fraction=0.5), 16, 0)


def test_every_augmented_pair_stays_aligned_two_valued_and_framed(pairs):
    aug = augment.Augmenter(AugmentConfig(degrees=45.0, scale=(0.7, 1.3), translate=0.25))
    affine_used = 0
    for i in range(len(pairs)):
        for k in range(2):
            inp, tgt, affine = aug(pairs.inputs[i], pairs.targets[i], augment.pair_seed(0, i, k))
            affine_used += affine
            assert format_problems(inp, tgt) == [], f"pair {i} copy {k}"  # fill covers outline, two values
            outline, filled = painted_mask(inp), painted_mask(tgt)  # (H, W)
            assert not augment.at_border(filled), f"pair {i} copy {k} touches the border"
            assert augment.outline_closed(outline, filled), f"pair {i} copy {k} has a gap in its outline"
            colours = {tuple(v) for v in np.unique(tgt.reshape(-1, 3), axis=0).tolist()}
            assert colours == {(255, 255, 255), tuple(pairs.rgb[i].tolist())}, "the target colour never changes"
    assert affine_used > 0.5 * 2 * len(pairs), "most copies get the affine step, even with 1 px outlines"


def test_checks_reject_misaligned_or_cut_pairs(pairs):
    inp, tgt = pairs.inputs[0], pairs.targets[0]
    assert format_problems(inp, np.roll(tgt, 2, axis=0)) != [], "a target moved apart from its input"
    assert augment.at_border(painted_mask(np.roll(tgt, 40, axis=1)))
    broken = inp.copy()
    ys, xs = np.nonzero(painted_mask(inp))
    top = ys == ys.min()
    broken[ys.min() - 1: ys.min() + 4, xs[top].min(): xs[top].max() + 1] = 255  # cut the outline's top edge
    assert not augment.outline_closed(painted_mask(broken), painted_mask(tgt))


def test_pipeline_applies_the_same_flip_to_both(pairs):
    inp, tgt = pairs.inputs[3], pairs.targets[3]
    out_in, out_tgt, _ = augment.Augmenter(dataclasses.replace(NONE, hflip=1.0))(inp, tgt, seed=0)
    assert np.array_equal(out_in, inp[:, ::-1]) and np.array_equal(out_tgt, tgt[:, ::-1])
    out_in, out_tgt, _ = augment.Augmenter(dataclasses.replace(NONE, vflip=1.0))(inp, tgt, seed=0)
    assert np.array_equal(out_in, inp[::-1]) and np.array_equal(out_tgt, tgt[::-1])
    turns = set()
    for seed in range(12):
        out_in, out_tgt, _ = augment.Augmenter(dataclasses.replace(NONE, rot90=True))(inp, tgt, seed=seed)
        k = next(k for k in range(4) if np.array_equal(out_in, np.rot90(inp, k)))
        assert np.array_equal(out_tgt, np.rot90(tgt, k))
        turns.add(k)
    assert turns == {0, 1, 2, 3}
    out_in, out_tgt, _ = augment.Augmenter(NONE)(inp, tgt, seed=0)
    assert np.array_equal(out_in, inp) and np.array_equal(out_tgt, tgt)


def test_in_frame_affine_keeps_a_shape_at_the_edge_inside():
    a = synth.generate(IngestConfig(image_size=64, shapes=("square",), scale=(0.45, 0.45), offset=0.4), 1, 5)
    aug = augment.Augmenter(dataclasses.replace(NONE, degrees=180.0, scale=(1.2, 1.5), translate=0.5))
    for seed in range(20):
        inp, tgt, _ = aug(a.inputs[0], a.targets[0], seed)
        assert not augment.at_border(painted_mask(tgt)) and format_problems(inp, tgt) == []


def test_augmentation_is_seeded_and_leaves_global_rng_alone(pairs):
    aug = augment.Augmenter(AugmentConfig())
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = aug(pairs.inputs[1], pairs.targets[1], seed=9)
    assert torch.equal(torch.get_rng_state(), state)
    b = aug(pairs.inputs[1], pairs.targets[1], seed=9)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    others = [aug(pairs.inputs[1], pairs.targets[1], seed=s)[1] for s in range(10, 14)]
    assert any(not np.array_equal(a[1], o) for o in others)


def test_augment_dataset_layout_counts_and_reproducibility(tmp_path, tiny_dataset):
    validation_before = tree_digest(tiny_dataset / "validation")
    cfg = AugmentConfig(copies=2)
    res = augment.augment_dataset(tiny_dataset, tmp_path / "a", cfg, seed=0, grid_rows=4)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["manifest.csv", "training"]
    samples = ayna.read_split(tmp_path / "a" / "training")
    assert len(samples) == 10 * 3
    manifest = pd.read_csv(tmp_path / "a" / "manifest.csv", keep_default_na=False)
    assert list(manifest.columns) == ayna.MANIFEST_COLUMNS + ["copy"]
    assert manifest["copy"].value_counts().to_dict() == {0: 10, 1: 10, 2: 10}
    assert [f"training/outputs/{s.output_path.name}" for s in samples] == manifest["output"].tolist()
    originals = ayna.read_split(tiny_dataset / "training")
    for j, s in enumerate(originals):  # originals are copied byte for byte
        assert samples[j].output_path.read_bytes() == s.output_path.read_bytes()
    data = ayna.load_split(tmp_path / "a" / "training")
    for i in range(len(data)):
        assert format_problems(data.inputs[i], data.targets[i]) == [], samples[i].output_path.name
        src = originals[i if i < 10 else (i - 10) // 2]  # originals, then each sample's copies in turn
        assert data.shapes[i] == src.shape and data.colours[i] == src.colour
    assert res.grid.shape == (4 * (32 + 4) + 4, 4 * (32 + 4) + 4, 3)
    assert tree_digest(tiny_dataset / "validation") == validation_before

    augment.augment_dataset(tiny_dataset, tmp_path / "b", cfg, seed=0)
    assert tree_digest(tmp_path / "b") == tree_digest(tmp_path / "a")
    augment.augment_dataset(tiny_dataset, tmp_path / "c", cfg, seed=1)
    assert tree_digest(tmp_path / "c") != tree_digest(tmp_path / "a")


def test_augment_writes_the_same_bytes_on_any_number_of_workers(tmp_path):
    """augment.workers spreads the copies over processes: 1, 2 and 3 workers write the same files, byte for byte,
    and the same grid and count of affine draws dropped (40 samples: three tasks of data.workers.CHUNK)."""
    from dataclasses import replace

    from polycolor.data.ingest import ingest

    ingest(replace(TINY, train_samples=40, val_samples=2, workers=1), 0, tmp_path / "data")
    results, digests = {}, {}
    for workers in (1, 2, 3):
        results[workers] = augment.augment_dataset(tmp_path / "data", tmp_path / f"w{workers}",
                                                   AugmentConfig(copies=2, workers=workers), seed=0)
        digests[workers] = tree_digest(tmp_path / f"w{workers}")
    assert digests[1] == digests[2] == digests[3]
    assert len(digests[1]) == 2 * 40 * 3 + 2, "originals and two copies of each, data.json, the manifest"
    for workers in (2, 3):
        assert np.array_equal(results[workers].grid, results[1].grid)
        assert results[workers].affine_dropped == results[1].affine_dropped


def test_zero_copies_keeps_only_the_originals(tmp_path, tiny_dataset):
    res = augment.augment_dataset(tiny_dataset, tmp_path / "a", AugmentConfig(copies=0), seed=0)
    assert len(res.manifest) == 10 and (res.manifest["copy"] == 0).all()


def _params(path, **augment_overrides):
    cfg = {f.name: getattr(AugmentConfig(), f.name) for f in dataclasses.fields(AugmentConfig)}
    cfg.update(augment_overrides)
    path.write_text(yaml.safe_dump({"seed": 0, "augment": {k: list(v) if isinstance(v, tuple) else v
                                                           for k, v in cfg.items()}}))
    return path


def test_stage_writes_outputs_and_grid(tmp_path, tiny_dataset, stage, capsys):
    params = _params(tmp_path / "params.yaml")
    out, grid = tmp_path / "data" / "augmented", tmp_path / "metrics" / "augment_grid.png"
    argv = ["--params", str(params), "--data", str(tiny_dataset), "--out", str(out), "--grid", str(grid)]
    assert stage("augment").main(argv) == 0
    assert "10 originals + 10 copies" in capsys.readouterr().out
    img = ayna.load_image(grid)
    assert img.shape == (8 * 36 + 4, 4 * 36 + 4, 3)
    assert len(ayna.read_split(out / "training")) == 20


def test_stage_errors_are_one_line_and_keep_previous_outputs(tmp_path, tiny_dataset, stage, capsys):
    out, grid = tmp_path / "data" / "augmented", tmp_path / "metrics" / "augment_grid.png"
    good = _params(tmp_path / "params.yaml")
    assert stage("augment").main(["--params", str(good), "--data", str(tiny_dataset), "--out", str(out),
                                  "--grid", str(grid)]) == 0
    before, grid_before = tree_digest(out), grid.read_bytes()
    capsys.readouterr()

    missing = ["--params", str(good), "--data", str(tmp_path / "nope"), "--out", str(out), "--grid", str(grid)]
    assert stage("augment").main(missing) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: split folder") and "nope/training does not exist" in err and err.count("\n") == 1

    bad = _params(tmp_path / "bad.yaml", copies=-1)
    assert stage("augment").main(["--params", str(bad), "--data", str(tiny_dataset), "--out", str(out),
                                  "--grid", str(grid)]) == 1
    assert capsys.readouterr().err == "error: augment.copies must be >= 0, got -1\n"
    assert tree_digest(out) == before and grid.read_bytes() == grid_before
    assert sorted(p.name for p in out.parent.iterdir()) == ["augmented"]
    assert sorted(p.name for p in grid.parent.iterdir()) == ["augment_grid.png"]


@pytest.mark.slow  # starts a process or trains: not in make test-fast
def test_stage_script_process_exits_1_without_traceback(tmp_path):
    params = _params(tmp_path / "params.yaml")
    r = subprocess.run([sys.executable, "stages/augment.py", "--params", str(params), "--data", str(tmp_path / "no"),
                        "--out", str(tmp_path / "out"), "--grid", str(tmp_path / "g.png")],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()


def test_jpeg_inputs_get_the_affine_step_too():
    """Compression noise beside the line is painted (< 240) outside the fill before any augmentation: the check that
    the fill covers the outline must not reject every affine draw of such a pair (on the code before it did, for 31
    of 37 JPEG samples in a 200-sample run)."""
    cfg = dataclasses.replace(synth.only(IngestConfig(image_size=64), jpeg_fraction=1.0), jpeg_quality=(60, 60))
    a = synth.generate(cfg, 8, 3)
    noisy = [i for i in range(8) if (painted_mask(a.inputs[i]) & ~painted_mask(a.targets[i])).any()]
    assert noisy, "quality 60 leaves painted noise outside the fill"
    aug = augment.Augmenter(AugmentConfig())
    used = [aug(a.inputs[i], a.targets[i], seed=i)[2] for i in noisy]
    assert sum(used) >= len(noisy) // 2, f"affine used on {sum(used)} of {len(noisy)} noisy pairs"


def test_affine_step_means_what_torchvision_affine_means():
    """augment's numpy affine against torchvision's F.affine (NEAREST, white fill): the same pixels for turns by
    multiples of 90 degrees and whole-pixel shifts of a square image, and for other draws except where a coordinate
    sits on or near a pixel edge (none here). The data are square: a quarter turn of an oblong image puts samples
    exactly on pixel edges, which this rounds up and torchvision to even."""
    from torchvision.transforms.v2 import functional as F

    rng = np.random.default_rng(0)

    def image(h: int, w: int) -> np.ndarray:
        return np.where(rng.random((h, w, 1)) < 0.5, 0, 255).astype(np.uint8).repeat(3, axis=2)  # (H, W, 3)

    def torchvision(img: np.ndarray, a: augment.Affine) -> np.ndarray:
        chw = torch.from_numpy(img).permute(2, 0, 1)
        out = F.affine(chw, angle=a.angle, translate=list(a.translate), scale=a.scale, shear=[0.0, 0.0],
                       interpolation=F.InterpolationMode.NEAREST, fill=255)
        return out.permute(1, 2, 0).numpy()

    square, oblong = image(32, 32), image(33, 40)
    for a in (augment.Affine(0.0, 1.0, (0, 0)), augment.Affine(90.0, 1.0, (0, 0)),
              augment.Affine(-90.0, 1.0, (3, -2)), augment.Affine(180.0, 1.0, (-5, 4))):
        ours, = augment.apply_affine([square], a)
        assert np.array_equal(ours, torchvision(square, a)), a
    for img, a in ((square, augment.Affine(23.0, 0.9, (2, 1))), (oblong, augment.Affine(-17.0, 1.2, (-3, 0)))):
        ours, = augment.apply_affine([img], a)
        assert (ours != torchvision(img, a)).any(-1).mean() < 0.01, a
