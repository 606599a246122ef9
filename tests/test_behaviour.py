"""Behavioural (invariance) shares: exact painters score 1, painters that break an invariance score below 1 on it,
and an untrained network does too."""

from __future__ import annotations

import numpy as np

from polycolor.config.data import IngestConfig
from polycolor.data.synth import generate
from polycolor.evaluation.behaviour import (
    BEHAVIOURS,
    behaviour_shares,
    other_colours,
    shifts,
)
from polycolor.evaluation.metrics import painted_mask
from polycolor.evaluation.reference import reference_fill
from conftest import REPO

ARRAYS = generate(IngestConfig(image_size=32, scale=(0.2, 0.3)), 6, 4)


def test_the_flood_fill_holds_every_invariance():
    shares = behaviour_shares(reference_fill, ARRAYS, np.random.default_rng(0))
    assert shares == {**{k: 1.0 for k in BEHAVIOURS}, **{f"{k}_exact": 1.0 for k in BEHAVIOURS}, "n": 6}


def test_a_painter_fixed_to_the_frame_breaks_turns_shifts_and_white():
    def corner(inputs, colours):  # paints the top-left quarter whatever the input
        out = np.full_like(inputs, 255)
        out[:, :8, :8] = (255, 0, 0)
        return out

    shares = behaviour_shares(corner, ARRAYS, np.random.default_rng(0))
    assert shares["rot_flip"] < 0.5 and shares["rot_flip_exact"] == 0.0, "a turned corner is another corner"
    assert shares["all_white"] == 1.0 - 64 / 1024 and shares["all_white_exact"] == 0.0
    assert shares["shift"] < 1.0 and shares["shift_exact"] == 0.0
    assert shares["colour_change"] == shares["colour_change_exact"] == 1.0


def test_a_colour_dependent_mask_breaks_colour_change():
    def by_colour(inputs, colours):  # the flood fill, but red paints only the outline
        out = reference_fill(inputs, colours)
        for i, c in enumerate(colours):
            if c == "red":
                out[i][~painted_mask(inputs[i])] = 255
        return out

    arrays = generate(IngestConfig(image_size=64, colours=("red", "blue"), scale=(0.25, 0.35)), 4, 1)
    shares = behaviour_shares(by_colour, arrays, np.random.default_rng(0))
    assert shares["colour_change"] < 0.9 and shares["colour_change_exact"] == 0.0, "each sample turns red or from red"
    assert shares["rot_flip"] == 1.0


def test_other_colours_differ_and_shifts_keep_the_polygon_inside():
    assert other_colours(["red", "red", "blue"]) == ["blue", "blue", "red"]
    assert other_colours(["red"]) == ["red"]
    for t, (dy, dx) in zip(ARRAYS.targets, shifts(ARRAYS.targets, np.random.default_rng(1))):
        assert (dy, dx) != (0, 0)
        moved = np.roll(painted_mask(t), (dy, dx), axis=(0, 1))
        assert moved.sum() == painted_mask(t).sum()
        assert not (np.abs(np.diff(np.nonzero(moved)[0])) > 16).any(), "nothing wrapped around"


def test_an_untrained_network_fails_the_default_behaviour_gates():
    """The `net` shares can fail: an untrained network (its output bias set so it paints about half of each image)
    reads below every default behaviour gate on turns, shifts and a blank input, while the painter's canonical
    form holds turns and the blank input by construction, so gates on the painter could not fail there."""
    import torch

    from polycolor.config.paint import PaintConfig
    from polycolor.config.params import load_params
    from polycolor.config.training import ModelConfig
    from polycolor.evaluation.logging import flat_metrics
    from polycolor.images import images_to_tensor
    from polycolor.nn.colour import encode_colours
    from polycolor.nn.model import ConditionalUNet
    from polycolor.nn.modelio import LoadedModel
    from polycolor.painting.painter import paint, paint_net
    from polycolor.serving.registry import gate_failures

    torch.manual_seed(0)
    model = ConditionalUNet(ModelConfig(widths=(4, 8)), ("red",), 32).eval()
    idx, rgb = encode_colours(list(ARRAYS.colours), model.vocab, "rgb")
    with torch.no_grad():
        model.out.bias -= model(images_to_tensor(ARRAYS.inputs), idx, rgb).mask_logits.median()
    loaded = LoadedModel(model, model.cfg, model.vocab, 32, {})
    net = behaviour_shares(lambda x, c: paint_net(loaded, x, c), ARRAYS, np.random.default_rng(0))
    for k in ("rot_flip", "all_white", "shift"):
        assert net[k] < 0.9, f"untrained net {k} = {net[k]}"
    canonical = PaintConfig(canonical="always", snap="off")
    painted = behaviour_shares(lambda x, c: paint(loaded, x, c, canonical), ARRAYS, np.random.default_rng(0))
    assert painted["rot_flip_exact"] == painted["all_white_exact"] == 1.0, painted
    gates = [g for g in load_params(REPO / "params.yaml").promote.gates if g.metric.startswith("behaviour.net.")]
    failing = gate_failures(gates, flat_metrics({"behaviour": {"net": net}}))
    assert len(failing) >= 3, f"the default behaviour gates refuse it: {failing}"
