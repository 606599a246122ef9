"""The network and the objective on tiny configs: shapes, conditioning, finite loss, checkpoint round trip."""

import pytest
import torch

from polycolor.config.training import LossConfig, ModelConfig
from polycolor.errors import PolycolorError
from polycolor.nn.losses import Objective, ssim
from polycolor.nn.model import ConditionalUNet
from polycolor.nn.modelio import load_model, save_model

VOCAB = ("blue", "red")
COMBOS = [(c, e, h) for c in ("bottleneck", "input", "film") for e in ("embedding", "rgb") for h in ("tanh", "composite")]


def tiny(conditioning="bottleneck", encoding="rgb", head="tanh", attention=False, size=32):
    torch.manual_seed(0)
    cfg = ModelConfig(widths=(4, 8), conditioning=conditioning, colour_encoding=encoding, embed_dim=8,
                      attention=attention, head=head)
    return ConditionalUNet(cfg, VOCAB, size)


def batch(size=32):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, size, size, generator=g) * 2 - 1
    return x, torch.tensor([0, 1]), torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])


@pytest.mark.parametrize("conditioning,encoding,head", COMBOS)
def test_output_shape_equals_input_shape(conditioning, encoding, head):
    model = tiny(conditioning, encoding, head)
    x, idx, rgb = batch()
    out = model(x, idx, rgb)
    assert out.image.shape == x.shape, f"{conditioning}/{encoding}/{head}: {out.image.shape} != {x.shape}"
    assert out.image.min() >= -1 and out.image.max() <= 1
    assert (out.mask_logits is not None) == (head == "composite")


def colour_effect(model: ConditionalUNet) -> float:
    """Largest change in what the network computes from the colour, blue vs red on one image: the mask logits for
    the composite head (its image paints the requested colour whatever the mask, so comparing images would show an
    effect even from a network that ignores the colour), the image for the tanh head."""
    x, _, _ = batch()
    x = x[:1]
    with torch.no_grad():
        a = model(x, torch.tensor([0]), torch.tensor([[0.0, 0.0, 1.0]]))
        b = model(x, torch.tensor([1]), torch.tensor([[1.0, 0.0, 0.0]]))
    if a.mask_logits is not None:
        return (a.mask_logits - b.mask_logits).abs().max().item()
    return (a.image - b.image).abs().max().item()


@pytest.mark.parametrize("conditioning,encoding,head", COMBOS)
def test_a_different_colour_changes_the_output(conditioning, encoding, head):
    model = tiny(conditioning, encoding, head).eval()
    assert colour_effect(model) > 1e-6, f"{conditioning}/{encoding}/{head}: colour has no effect"


@pytest.mark.parametrize("head", ["tanh", "composite"])
def test_colour_effect_is_zero_when_the_network_ignores_the_colour(head, monkeypatch):
    """The check above can fail: with the colour vector zeroed the conditioned output is identical for both colours."""
    model = tiny(encoding="rgb", head=head).eval()
    monkeypatch.setattr(model.colour, "forward", lambda idx, rgb: torch.zeros(len(rgb), model.cfg.embed_dim))
    assert colour_effect(model) == 0.0


def test_bottleneck_map_follows_image_size_and_depth():
    cfg = ModelConfig(widths=(4, 8, 16), embed_dim=8)
    assert ConditionalUNet(cfg, VOCAB, 64).bottleneck_size == 16
    assert ConditionalUNet(cfg, VOCAB, 32).to_map.out_features == 8 * 8
    with pytest.raises(ValueError, match="divisible"):
        ConditionalUNet(cfg, VOCAB, 30)


def test_attention_runs():
    model = tiny(attention=True)
    x, idx, rgb = batch()
    assert model(x, idx, rgb).image.shape == x.shape


@pytest.mark.parametrize("head", ["tanh", "composite"])
def test_loss_is_finite_and_backward_runs(head):
    model = tiny(head=head)
    x, idx, rgb = batch()
    target = torch.where(x > 0, 1.0, -1.0)
    loss, terms = Objective(LossConfig())(model(x, idx, rgb), target)
    assert torch.isfinite(loss)
    assert set(terms) >= {"l1", "l2", "perceptual"} and (("mask" in terms) == (head == "composite"))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_ssim_of_identical_images_is_one_and_drops_with_noise():
    a = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert ssim(a, a).item() == pytest.approx(1.0, abs=1e-5)
    assert ssim(a, (a + 0.3 * torch.randn_like(a)).clamp(0, 1)).item() < 0.9


def test_vgg_perceptual_without_weights_file_is_a_clear_error():
    with pytest.raises(PolycolorError, match="vgg16_weights"):
        Objective(LossConfig(perceptual_net="vgg16", vgg16_weights="/nonexistent/vgg16.pth"))


def test_model_file_round_trips_unchanged(tmp_path):
    model = tiny(encoding="embedding", head="composite")
    path = tmp_path / "model.pt"
    save_model(path, model, meta={"run_id": "abc"})
    loaded = load_model(path)
    assert loaded.vocab == VOCAB and loaded.image_size == 32 and loaded.meta["run_id"] == "abc"
    assert loaded.config == model.cfg
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k]), k


def test_loading_a_missing_or_corrupt_model_is_one_line(tmp_path):
    with pytest.raises(PolycolorError, match="not found"):
        load_model(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(PolycolorError, match="cannot load") as e:
        load_model(bad)
    assert "\n" not in str(e.value)
