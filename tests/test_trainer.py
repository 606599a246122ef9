"""The training loop on tiny data: exact resume for both schedules, divergence stops with a clear error, per-epoch
metrics reach the log, the data order does not depend on the number of processes."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from polycolor.config.data import IngestConfig
from polycolor.config.training import LossConfig, ModelConfig, TrainConfig
from polycolor.data.synth import generate
from polycolor.errors import PolycolorError
from polycolor.training.trainer import (
    Trainer,
    build_vocab,
    set_torch_globals,
    steps_per_epoch,
    to_tensor_data,
)

MODEL = ModelConfig(widths=(4, 8), embed_dim=8, colour_encoding="embedding", head="composite")
TRAIN = TrainConfig(lr=3e-3, batch_size=4, epochs=2, seed=3, plateau_patience=1)


def tiny_data(n=12, seed=0):
    a = generate(IngestConfig(image_size=32, scale=(0.3, 0.4), offset=0.05, outline_width=(1, 2)), n, seed)
    vocab = build_vocab(a.colours)
    return to_tensor_data(a.inputs, a.targets, a.colours, vocab, "embedding"), vocab


def make_trainer(ckpt_dir, train_cfg=TRAIN, log=None, say=lambda s: None):
    data, vocab = tiny_data()
    set_torch_globals(train_cfg)  # what the stage's entry does
    return Trainer(MODEL, LossConfig(), train_cfg, vocab=vocab, image_size=32, data_id="tiny",
                   steps_per_epoch=steps_per_epoch(len(data), train_cfg.batch_size), checkpoint_dir=ckpt_dir,
                   log=log, say=say)


def state(path):
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("schedule", ["plateau", "cosine"])
def test_resume_is_exact(tmp_path, schedule):
    """2 epochs straight == 1 epoch, stop (as a kill would), a new Trainer resumes and does the second."""
    data, _ = tiny_data()
    cfg = replace(TRAIN, schedule=schedule)
    straight = make_trainer(tmp_path / "a", cfg).fit(data, data)
    make_trainer(tmp_path / "b", cfg).fit(data, data, stop_after=1)
    assert state(tmp_path / "b" / "last.pt")["epoch"] == 1
    resumed_trainer = make_trainer(tmp_path / "b", cfg)
    assert resumed_trainer.resume() == ("", True)
    resumed = resumed_trainer.fit(data, data)
    assert resumed.resumed_from == 1, "the second call should resume after epoch 1"
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert [r["lr"] for r in resumed.history] == [r["lr"] for r in straight.history], "the schedule must resume"
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), f"{k} differs between straight and resumed training"
    a, b = state(tmp_path / "a" / "last.pt"), state(tmp_path / "b" / "last.pt")
    for k in a["model"]["state_dict"]:
        assert torch.equal(a["model"]["state_dict"][k], b["model"]["state_dict"][k]), f"last.pt differs at {k}"
    assert a["scheduler"] == b["scheduler"] and a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]


def test_checkpoint_carries_the_run_id_from_epoch_0(tmp_path):
    """The run id is on disk before the first epoch ends, so a training killed in epoch 1 still continues its run."""
    data, _ = tiny_data()
    t = make_trainer(tmp_path, replace(TRAIN, epochs=1))
    t.run_id = "abc123"
    t.fit(data, data, stop_after=0)
    ck = state(tmp_path / "last.pt")
    assert ck["epoch"] == 0 and ck["run_id"] == "abc123"
    again = make_trainer(tmp_path, replace(TRAIN, epochs=1))
    assert again.resume() == ("abc123", True)


def test_changed_params_start_fresh(tmp_path):
    data, _ = tiny_data()
    first = make_trainer(tmp_path, replace(TRAIN, epochs=1))
    first.run_id = "old-run"
    first.fit(data, data)
    said = []
    t = make_trainer(tmp_path, replace(TRAIN, lr=1e-3), say=said.append)
    assert t.resume() == ("old-run", False), "the old run id comes back so the stage can close that run"
    result = t.fit(data, data)
    assert result.resumed_from == 0
    assert any("other params" in s for s in said), said


def test_a_checkpoint_past_train_epochs_is_not_resumed(tmp_path):
    """A 2-epoch checkpoint and train.epochs 1 (a DVC experiment that lowers the epochs beside the workspace's
    persisted checkpoints): resuming would return the 2-epoch model as a 1-epoch one, so training starts over."""
    data, _ = tiny_data()
    make_trainer(tmp_path, TRAIN).fit(data, data)
    said = []
    shorter = make_trainer(tmp_path, replace(TRAIN, epochs=1), say=said.append)
    assert shorter.resume() == ("", False)
    assert any("2 epoch(s) done, more than train.epochs 1" in s for s in said), said
    result = shorter.fit(data, data)
    assert result.resumed_from == 0 and [r["epoch"] for r in result.history] == [1]


def test_same_params_same_weights():
    data, _ = tiny_data()
    a = make_trainer(None, replace(TRAIN, epochs=1)).fit(data, data).model.state_dict()
    b = make_trainer(None, replace(TRAIN, epochs=1)).fit(data, data).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_divergence_is_a_clear_error():
    data, _ = tiny_data()
    data.inputs[:] = 0
    t = make_trainer(None, replace(TRAIN, epochs=1))
    with torch.no_grad():  # poison the weights: the first loss is NaN
        next(t.model.parameters()).fill_(float("nan"))
    with pytest.raises(PolycolorError, match="loss became nan.*lower train.lr"):
        t.fit(data, data)


def test_per_epoch_metrics_reach_the_log():
    data, _ = tiny_data()
    logged = []
    make_trainer(None, log=lambda m, step: logged.append((step, m))).fit(data, data)
    assert [s for s, _ in logged] == [1, 2]
    assert {"train_loss", "val_loss", "val_psnr", "lr", "images_per_s", "loss_l1", "loss_mask"} <= set(logged[0][1])


def test_a_batch_larger_than_the_training_set_is_a_clear_error():
    with pytest.raises(PolycolorError, match=r"train.batch_size \(16\) is larger than the training set \(12"):
        steps_per_epoch(12, 16)


def test_the_sample_grid_is_input_target_prediction_per_row(tmp_path):
    """Trainer.sample_grid: (rows H, 3 W, 3) uint8, each row the input, the target and the hard prediction."""
    from polycolor.images import tensor_to_images
    from polycolor.nn.colour import hard_image

    trainer = make_trainer(tmp_path)
    data, _ = tiny_data()
    grid = trainer.sample_grid(data, 3)
    assert grid.shape == (3 * 32, 3 * 32, 3) and grid.dtype == np.uint8
    assert np.array_equal(grid[32:64, :32], data.inputs[1].permute(1, 2, 0).numpy())
    assert np.array_equal(grid[64:96, 32:64], data.targets[2].permute(1, 2, 0).numpy())
    x, _, idx, rgb = trainer._batch(data.rows(slice(0, 3)))
    with torch.no_grad():
        pred = tensor_to_images(hard_image(trainer.model(x, idx, rgb), rgb))
    assert np.array_equal(grid[:32, 64:], pred[0])
