"""Colour resolution and params validation: every bad value is a one-line error naming the key and the value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from polycolor.colours import (
    AYNA_COLOURS,
    SHAPES,
    canonical_colour,
    resolve_colour,
    rgb_to_hex,
)
from polycolor.config.data import DataParams, IngestConfig
from polycolor.config.params import load_params, parse_config
from polycolor.config.training import TrainingParams
from polycolor.errors import ConfigError, PolycolorError

REPO = Path(__file__).parents[1]


@pytest.mark.parametrize("name, rgb", sorted(AYNA_COLOURS.items()))
def test_ayna_names_resolve_to_their_exact_rgb(name, rgb):
    assert resolve_colour(name) == rgb
    assert resolve_colour(f"  {name.upper()} ") == rgb


def test_ayna_green_wins_over_css_green():
    assert resolve_colour("green") == (0, 255, 0), "Ayna's green is CSS lime, not CSS green (0, 128, 0)"


def test_pillow_names_and_hex_resolve():
    assert resolve_colour("teal") == (0, 128, 128)
    assert resolve_colour("#1A2b3C") == (0x1A, 0x2B, 0x3C)
    assert canonical_colour(" #1A2b3C") == "#1a2b3c"
    assert rgb_to_hex((26, 43, 60)) == "#1a2b3c"


@pytest.mark.parametrize("bad, words", [
    ("#12345", ["'#12345'", "#rrggbb"]),
    ("#12345g", ["'#12345g'", "#rrggbb"]),
    ("blurple", ["unknown colour 'blurple'"]),
    ("", ["colour must be a name or #rrggbb"]),
])
def test_bad_colours_are_one_line_errors(bad, words):
    with pytest.raises(PolycolorError) as e:
        resolve_colour(bad)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


@pytest.mark.parametrize("params, key, value", [
    ({"ingest": {"train_samples": -1}}, "ingest.train_samples", "-1"),
    ({"ingest": {"val_samples": 0}}, "ingest.val_samples", "0"),
    ({"ingest": {"shapes": ["triangle", "hexagram"]}}, "ingest.shapes", "'hexagram'"),
    ({"ingest": {"colours": ["red", "blurple"]}}, "ingest.colours", "'blurple'"),
    ({"ingest": {"image_size": 8}}, "ingest.image_size", "8"),
    ({"ingest": {"scale": [0.4, 0.2]}}, "ingest.scale", "[0.4, 0.2]"),
    ({"ingest": {"random_colour_fraction": 1.5}}, "ingest.random_colour_fraction", "1.5"),
    ({"ingest": {"outline_width": [2]}}, "ingest.outline_width", "[2]"),
    ({"ingest": {"train_samples": "many"}}, "ingest.train_samples", "'many'"),
    ({"ingest": {"bogus": 1}}, "ingest.bogus", "known"),
    ({"augment": {"copies": -2}}, "augment.copies", "-2"),
    ({"augment": {"hflip": 2.0}}, "augment.hflip", "2.0"),
    ({"augment": {"scale": [0.0, 1.0]}}, "augment.scale", "[0.0, 1.0]"),
    ({"augment": {"rot90": "yes"}}, "augment.rot90", "'yes'"),
    ({"seed": -1}, "seed", "-1"),
    ({"model": {"widths": [8]}}, "model.widths", "(8,)"),
    ({"model": {"conditioning": "cross"}}, "model.conditioning", "'cross'"),
    ({"model": {"head": "sigmoid"}}, "model.head", "'sigmoid'"),
    ({"loss": {"l1": -0.5}}, "loss.l1", "-0.5"),
    ({"loss": {"perceptual_net": "vgg19"}}, "loss.perceptual_net", "'vgg19'"),
    # No active term: the loss would be the sum of nothing (it used to crash training with a TypeError).
    ({"loss": {"l1": 0, "l2": 0, "perceptual": 0, "mask": 0}}, "loss needs at least one weight above 0", "'mask': 0.0"),
    ({"model": {"head": "tanh"}, "loss": {"l1": 0, "l2": 0, "perceptual": 0, "mask": 1.0}},
     "with model.head tanh", "'perceptual': 0.0"),
    ({"train": {"lr": 0}}, "train.lr", "0"),
    ({"train": {"schedule": "step"}}, "train.schedule", "'step'"),
    ({"train": {"plateau_factor": 1.0}}, "train.plateau_factor", "1.0"),
    ({"evaluate": {"ood_samples": -1}}, "evaluate.ood_samples", "-1"),
    ({"evaluate": {"ood_scale": [0.3, 0.9]}}, "evaluate.ood_scale", "[0.3, 0.9]"),
    ({"evaluate": {"extra_sets": {"real": {"required": True}}}}, "evaluate.extra_sets.real", "path"),
    ({"promote": {"metric": "psnr_mean"}}, "promote.metric", "'psnr_mean'"),
    ({"promote": {"min_delta": -1}}, "promote.min_delta", "-1.0"),
    # A gate with no bound passes every model.
    ({"promote": {"gates": [{"metric": "val.net.iou"}]}}, "promote.gates[0] needs a min or a max", "'val.net.iou'"),
    ({"promote": {"gates": [{"metric": "val.net.mae", "min": 0.5, "max": 0.1}]}}, "promote.gates[0]", "[0.5, 0.1]"),
    ({"promote": {"gates": [{"metric": "val", "min": 1}]}}, "promote.gates[0].metric", "'val'"),
    ({"mlflow": {"experiment": " "}}, "mlflow.experiment", "' '"),
    ({"mlflow": {"registered_model": ""}}, "mlflow.registered_model", "''"),
    ({"mlflow": {"registered_model": "team/polycolor"}}, "mlflow.registered_model", "'team/polycolor'"),
    ({"train": {"lr": float("inf")}}, "train.lr", "inf"),
    ({"loss": {"l1": float("nan")}}, "loss.l1", "nan"),
    ({"ingest": {"image_size": 100}}, "ingest.image_size", "100"),  # 4 levels: divisible by 8
    ({"ingest": {"image_size": 48}, "model": {"widths": [4, 8, 16, 32, 64, 128]}}, "ingest.image_size", "48"),
    ({"serving": {"max_pixels": 0}}, "serving.max_pixels", "0"),
    ({"monitor": {"min_records": 600}}, "monitor.min_records must be in [1, monitor.window]", "600"),
    ({"monitor": {"embedding_threshold": 0.4}}, "monitor.embedding_threshold", "0.4"),
    ({"monitor": {"sample_share": 2}}, "monitor.sample_share", "2.0"),
    ({"paint": {"canonical": "yes"}}, "paint.canonical", "'yes'"),
    ({"paint": {"snap": "sometimes"}}, "paint.snap", "'sometimes'"),
    ({"paint": {"ink_threshold": 0}}, "paint.ink_threshold", "0"),
    ({"paint": {"ink_threshold": 256}}, "paint.ink_threshold", "256"),
    ({"paint": {"gap_px": 0}}, "paint.gap_px", "0"),
    ({"paint": {"gap_px": 2.5}}, "paint.gap_px", "2.5"),
    ({"paint": {"snap_share": 0.5}}, "paint.snap_share", "0.5"),  # a region both filled and cleared
    ({"paint": {"clear_share": -0.1}}, "paint.clear_share", "-0.1"),
    ({"paint": {"clear_share": 0.3, "snap_share": 0.25}}, "paint.clear_share", "0.3"),
    ({"paint": {"enclosed_share": 0.4}}, "paint.enclosed_share", "0.4"),
    ({"paint": {"enclosed_share": 1.5}}, "paint.enclosed_share", "1.5"),
    ({"paint": {"threshold": 128}}, "paint.threshold", "known"),
])
def test_config_errors_name_key_and_value(params, key, value):
    with pytest.raises(ConfigError) as e:
        parse_config(params)
    msg = str(e.value)
    assert "\n" not in msg, msg
    assert key in msg and value in msg, msg


def test_config_errors_cover_every_section_of_params():
    """Each top-level key of params.yaml has at least one bad-value case above."""
    cases = next(m for m in test_config_errors_name_key_and_value.pytestmark if m.name == "parametrize").args[1]
    covered = {key for params, _, _ in cases for key in params}
    sections = set(yaml.safe_load((REPO / "params.yaml").read_text()))
    assert not sections - covered, f"params sections without an error case: {sorted(sections - covered)}"


@pytest.mark.parametrize("loss, head", [
    ({"l1": 0, "l2": 0, "perceptual": 0, "mask": 1.0}, "composite"),  # the mask alone trains the composite head
    ({"l1": 0, "l2": 0, "perceptual": 0.1, "mask": 0}, "tanh"),
])
def test_a_loss_with_one_active_term_is_valid(loss, head):
    cfg = parse_config({"loss": loss, "model": {"head": head}})
    assert cfg.loss.mask == loss["mask"] and cfg.model.head == head
def test_yaml_inf_and_a_size_the_unet_cannot_halve_fail_at_validation(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("train:\n  lr: .inf\n")
    with pytest.raises(ConfigError, match=r"train.lr must be a finite number, got inf"):
        load_params(p)
    p.write_text("ingest:\n  image_size: 34\nmodel:\n  widths: [4, 8, 16]\n")
    with pytest.raises(ConfigError, match=r"ingest.image_size must be divisible by 4 .* got 34"):
        load_params(p)
    p.write_text("ingest:\n  image_size: 44\nmodel:\n  widths: [4, 8, 16, 32]\n")
    with pytest.raises(ConfigError, match="divisible by 8"):
        load_params(p)


@pytest.mark.parametrize("stage_params, params, key, value", [
    (TrainingParams, {"train": {"lr": -1.0}}, "train.lr", "-1.0"),
    (TrainingParams, {"loss": {"l1": 0, "l2": 0, "perceptual": 0}, "model": {"head": "tanh"}}, "loss", "'l1': 0"),
    (TrainingParams, {"model": {"widht": 3}}, "model.widht", "known"),
    (DataParams, {"seed": -1}, "seed", "-1"),
    (DataParams, {"augment": {"hflip": 2.0}}, "augment.hflip", "2.0"),
])
def test_a_stages_params_give_the_same_one_line_errors(stage_params, params, key, value):
    """A stage that reads only its sections refuses a bad value in them with the message the whole Config gives."""
    for parse in (stage_params.parse, parse_config):
        with pytest.raises(ConfigError) as e:
            parse(params)
        msg = str(e.value)
        assert "\n" not in msg and key in msg and value in msg, msg


def test_a_stages_params_leave_the_other_sections_to_their_stages(tmp_path):
    """The train stage reads model, loss, train and mlflow, the data stages seed, ingest and augment: a bad value
    elsewhere is not theirs to refuse (the check stage refuses it before any stage runs)."""
    p = tmp_path / "params.yaml"
    p.write_text("seed: 7\ntrain:\n  lr: 0.01\ningest:\n  image_size: 64\npaint:\n  snap: sometimes\n")
    train, data = TrainingParams.load(p), DataParams.load(p)
    assert train.train.lr == 0.01 and not hasattr(train, "ingest") and not hasattr(train, "paint")
    assert data.seed == 7 and data.ingest.image_size == 64 and not hasattr(data, "train")
    with pytest.raises(ConfigError, match="paint.snap must be one of"):
        load_params(p)
    full = load_params(REPO / "params.yaml")
    assert TrainingParams.load(REPO / "params.yaml").model == full.model
    assert DataParams.load(REPO / "params.yaml").augment == full.augment


def test_repo_params_are_valid():
    cfg = load_params(REPO / "params.yaml")
    assert cfg.ingest.source == "synthetic"
    assert set(cfg.ingest.shapes) <= set(SHAPES)


def test_defaults_match_the_ayna_colours_and_shapes():
    cfg = IngestConfig()
    assert tuple(cfg.colours) == tuple(AYNA_COLOURS)
    assert tuple(cfg.shapes) == SHAPES


def test_load_params_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read params file"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("ingest: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_paint_switches_read_yaml_booleans_as_modes():
    """YAML reads an unquoted `off` as false: `snap: off` means the mode off, and `canonical: true` (how a package
    made before the modes stored it) means always."""
    import yaml

    cfg = parse_config(yaml.safe_load("paint: {canonical: true, snap: off}"))
    assert (cfg.paint.canonical, cfg.paint.snap) == ("always", "off")


def test_error_lines_first_and_whole():
    """errors.first_line (the first line of a message whose later lines are context) and errors.one_line (the whole
    message on one line), both the type's name for an empty message: what every one-line error message uses."""
    from polycolor.errors import first_line, one_line

    e = ValueError("bad value\n  in 'params.yaml', line 3\n")
    assert first_line(e) == "bad value" and one_line(e) == "bad value in 'params.yaml', line 3"
    assert first_line(KeyError()) == one_line(KeyError()) == "KeyError"
    assert first_line(OSError("\n  refused \n")) == "refused"
