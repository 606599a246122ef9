"""The training loop on tiny data: exact resume, divergence stops with a clear error, MLflow run contents."""

from dataclasses import replace

import pytest
import torch

from polycolor.config import IngestConfig, LossConfig, ModelConfig, TrainConfig
from polycolor.data.synth import generate
from polycolor.errors import PolycolorError
from polycolor.training.trainer import Trainer, build_vocab, to_tensor_data

MODEL = ModelConfig(widths=(4, 8), embed_dim=8, colour_encoding="embedding", head="composite")
TRAIN = TrainConfig(lr=3e-3, batch_size=4, epochs=2, seed=3, plateau_patience=1)


def tiny_data(n=12, seed=0):
    a = generate(IngestConfig(image_size=32, scale=(0.3, 0.4), offset=0.05, outline_width=(1, 2)), n, seed)
    vocab = build_vocab(a.colours)
    return to_tensor_data(a.inputs, a.targets, a.colours, vocab, "embedding"), vocab


def make_trainer(ckpt_dir, train_cfg=TRAIN, log=None):
    _, vocab = tiny_data()
    return Trainer(MODEL, LossConfig(), train_cfg, vocab=vocab, image_size=32, data_id="tiny",
                   checkpoint_dir=ckpt_dir, log=log, say=lambda s: None)


@pytest.mark.parametrize("schedule", ["plateau", "cosine"])
def test_resume_is_exact(tmp_path, schedule):
    data, _ = tiny_data()
    cfg = replace(TRAIN, schedule=schedule)
    straight = make_trainer(tmp_path / "a", cfg).fit(data, data)
    # With cosine the schedule spans train.epochs, so "1 epoch then resume" is an interrupted 2-epoch run.
    first = make_trainer(tmp_path / "b", replace(cfg, epochs=1) if schedule == "plateau" else cfg)
    if schedule == "cosine":
        first.tcfg = replace(cfg, epochs=2)
        real_train_epoch = first.train_epoch

        def stop_after_one(d):
            out = real_train_epoch(d)
            if first.epoch == 0:
                first.tcfg = replace(first.tcfg, epochs=1)  # the loop ends after this epoch, as a kill would
            return out
        first.train_epoch = stop_after_one
    first.fit(data, data)
    resumed_trainer = make_trainer(tmp_path / "b", cfg)
    resumed = resumed_trainer.fit(data, data)
    assert resumed.resumed_from == 1, "the second call should resume after epoch 1"
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), f"{k} differs between straight and resumed training"
    last_a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]["state_dict"]
    last_b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]["state_dict"]
    assert all(torch.equal(last_a[k], last_b[k]) for k in last_a)


def test_changed_params_start_fresh(tmp_path):
    data, _ = tiny_data()
    make_trainer(tmp_path, replace(TRAIN, epochs=1)).fit(data, data)
    said = []
    t = make_trainer(tmp_path, replace(TRAIN, lr=1e-3))
    t.say = said.append
    result = t.fit(data, data)
    assert result.resumed_from == 0
    assert any("other params" in s for s in said), said


def test_same_params_same_weights(tmp_path):
    data, _ = tiny_data()
    a = make_trainer(None, replace(TRAIN, epochs=1)).fit(data, data).model.state_dict()
    b = make_trainer(None, replace(TRAIN, epochs=1)).fit(data, data).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_divergence_is_a_clear_error(tmp_path):
    data, _ = tiny_data()
    data.inputs[:] = 0
    t = make_trainer(None, replace(TRAIN, epochs=1))
    with torch.no_grad():  # poison the weights: the first loss is NaN
        next(t.model.parameters()).fill_(float("nan"))
    with pytest.raises(PolycolorError, match="loss became nan.*lower train.lr"):
        t.fit(data, data)


def test_per_epoch_metrics_reach_the_log(tmp_path):
    data, _ = tiny_data()
    logged = []
    make_trainer(None, log=lambda m, step: logged.append((step, m))).fit(data, data)
    assert [s for s, _ in logged] == [1, 2]
    assert {"train_loss", "val_loss", "val_psnr", "lr", "images_per_s", "loss_l1", "loss_mask"} <= set(logged[0][1])
