"""The training loop: AdamW, ReduceLROnPlateau on validation loss, early stopping, AMP on CUDA, exact resume.

No MLflow and no params.yaml here: the stage passes typed configs, in-memory data and a `log` callback. The places
that must run on one process only under torchrun/DDP are `is_main_process()` (logging, checkpoint writing) and
`make_loader()` (the sampler).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from polycolor.colours import canonical_colour
from polycolor.config import LossConfig, ModelConfig, TrainConfig
from polycolor.errors import PolycolorError
from polycolor.nn.inference import encode_colours, hard_image
from polycolor.nn.losses import Objective
from polycolor.nn.model import ConditionalUNet, count_parameters
from polycolor.nn.modelio import atomic_torch_save, model_payload

CHECKPOINT_FORMAT_VERSION = 1
# Keys that may change without invalidating a checkpoint: more epochs continue the same run.
RESUMABLE_KEYS = ("epochs", "early_stopping_patience", "grid_samples", "num_workers", "threads", "device",
                  "channels_last")

LogFn = Callable[[dict[str, float], int], None]
ImageLogFn = Callable[[np.ndarray, int], None]


@dataclass
class TensorData:
    """One split in memory. inputs/targets: uint8 (N, 3, H, W); idx: (N,) long; rgb: (N, 3) float in [0, 1]."""

    inputs: torch.Tensor
    targets: torch.Tensor
    idx: torch.Tensor
    rgb: torch.Tensor

    def __len__(self) -> int:
        return len(self.inputs)


@dataclass
class TrainResult:
    model: ConditionalUNet  # the best epoch's weights
    history: list[dict[str, float]]
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    resumed_from: int  # epochs already done when this call started (0 = fresh)
    images_per_s: float
    wall_s: float
    extra: dict[str, Any] = field(default_factory=dict)


def build_vocab(colours: list[str]) -> tuple[str, ...]:
    """The colour vocabulary of the embedding table: the training colours, canonical, sorted."""
    return tuple(sorted({canonical_colour(c) for c in colours}))


def to_tensor_data(inputs: np.ndarray, targets: np.ndarray, colours: list[str], vocab: tuple[str, ...],
                   encoding: str) -> TensorData:
    """From uint8 (N, H, W, 3) arrays and colour strings."""
    idx, rgb = encode_colours(colours, vocab, encoding)
    to_chw = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    return TensorData(to_chw(inputs), to_chw(targets), idx, rgb)


def is_main_process() -> bool:
    """False on every DDP rank but 0: the one switch for logging and checkpoint writing."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or \
        torch.distributed.get_rank() == 0


def make_loader(data: TensorData, batch_size: int, seed: int, epoch: int, num_workers: int) -> DataLoader:
    """A shuffled loader whose order depends only on (seed, epoch), so a resumed run sees the same batches.
    Under DDP this is where a DistributedSampler(shuffle=True, seed=seed) with set_epoch(epoch) goes."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    ds = TensorDataset(data.inputs, data.targets, data.idx, data.rgb)
    return DataLoader(ds, batch_size=batch_size, shuffle=True, generator=g, num_workers=num_workers,
                      worker_init_fn=_seed_worker if num_workers else None, drop_last=len(ds) > batch_size)


def _seed_worker(worker_id: int) -> None:
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise PolycolorError("train.device is cuda but no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def use_amp(setting: str, device: torch.device) -> bool:
    """auto: fp16 autocast + GradScaler on CUDA only (bf16 autocast is slow on these AVX2 CPUs)."""
    if setting == "auto":
        return device.type == "cuda"
    return setting == "true"


def fingerprint(model_cfg: ModelConfig, loss_cfg: LossConfig, train_cfg: TrainConfig, data_id: str) -> str:
    """Hash of everything a checkpoint depends on; a checkpoint with another fingerprint is not resumed."""
    resumable = RESUMABLE_KEYS if train_cfg.schedule == "plateau" else tuple(k for k in RESUMABLE_KEYS if k != "epochs")
    t = {k: v for k, v in asdict(train_cfg).items() if k not in resumable}
    blob = json.dumps({"model": asdict(model_cfg), "loss": asdict(loss_cfg), "train": t, "data": data_id},
                      sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def psnr_batch(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (B,) in dB of images in [-1, 1], on the [0, 255] scale after rounding, capped at 100."""
    p = ((pred.float().clamp(-1, 1) + 1) * 127.5).round()
    t = ((target.float() + 1) * 127.5).round()
    mse = ((p - t) ** 2).flatten(1).mean(1)
    return torch.where(mse > 0, 10 * torch.log10(255.0**2 / mse.clamp_min(1e-12)), torch.full_like(mse, 100.0))


class Trainer:
    def __init__(self, model_cfg: ModelConfig, loss_cfg: LossConfig, train_cfg: TrainConfig, *,
                 vocab: tuple[str, ...], image_size: int, data_id: str,
                 checkpoint_dir: str | Path | None = None,
                 log: LogFn | None = None, log_image: ImageLogFn | None = None,
                 say: Callable[[str], None] = functools.partial(print, flush=True)):
        self.mcfg, self.lcfg, self.tcfg = model_cfg, loss_cfg, train_cfg
        self.device = resolve_device(train_cfg.device)
        self.amp = use_amp(train_cfg.amp, self.device)
        if train_cfg.threads and self.device.type == "cpu":
            torch.set_num_threads(train_cfg.threads)
        torch.manual_seed(train_cfg.seed)
        self.memory_format = torch.channels_last if train_cfg.channels_last else torch.contiguous_format
        self.model = ConditionalUNet(model_cfg, vocab, image_size).to(self.device, memory_format=self.memory_format)
        self.objective = Objective(loss_cfg).to(self.device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.opt, mode="min", factor=train_cfg.plateau_factor, patience=train_cfg.plateau_patience)
        self.cosine: torch.optim.lr_scheduler.LambdaLR | None = None  # made in fit(), once steps are known
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.fingerprint = fingerprint(model_cfg, loss_cfg, train_cfg, data_id)
        self.ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.log = log or (lambda metrics, step: None)
        self.log_image = log_image
        self.say = say if is_main_process() else (lambda s: None)
        self.epoch = 0  # epochs completed
        self.history: list[dict[str, float]] = []
        self.best_val_loss = math.inf
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_epochs = 0
        self.resumed_from = 0

    # ---- checkpoints -------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "epoch": self.epoch,
            "model": model_payload(self.model, meta={}),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.plateau.state_dict(),
            "cosine": self.cosine.state_dict() if self.cosine is not None else {},
            "scaler": self.scaler.state_dict(),
            "history": self.history,
            "best_val_loss": self.best_val_loss,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "bad_epochs": self.bad_epochs,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        }

    def save_checkpoint(self, best: bool) -> None:
        if self.ckpt_dir is None or not is_main_process():
            return
        state = self.state()
        atomic_torch_save(state, self.ckpt_dir / "last.pt")
        if best:
            atomic_torch_save(state, self.ckpt_dir / "best.pt")

    def try_resume(self) -> None:
        """Continue from checkpoints/last.pt when it was written with the same params and data; say what happened."""
        if self.ckpt_dir is None:
            return
        path = self.ckpt_dir / "last.pt"
        if not path.is_file():
            self.say("no checkpoint found: training from scratch")
            return
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a corrupt or foreign file must not stop a fresh start
            self.say(f"checkpoint {path} unreadable ({type(e).__name__}): training from scratch")
            return
        if ck.get("format_version") != CHECKPOINT_FORMAT_VERSION or ck.get("fingerprint") != self.fingerprint:
            self.say(f"checkpoint {path} was written with other params or data: training from scratch")
            return
        self.model.load_state_dict(ck["model"]["state_dict"])
        self.opt.load_state_dict(ck["optimizer"])
        self.plateau.load_state_dict(ck["scheduler"])
        self._resumed_cosine = ck.get("cosine") or {}
        self.scaler.load_state_dict(ck["scaler"])
        self.epoch = self.resumed_from = int(ck["epoch"])
        self.history = list(ck["history"])
        self.best_val_loss, self.best_epoch = float(ck["best_val_loss"]), int(ck["best_epoch"])
        self.best_state, self.bad_epochs = ck["best_state"], int(ck["bad_epochs"])
        torch.set_rng_state(ck["rng"]["torch"])
        if ck["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ck["rng"]["cuda"])
        self.say(f"resuming from {path}: {self.epoch} epoch(s) done")
        if is_main_process():  # this run's curves start at epoch 1 too
            for row in self.history:
                self.log({k: float(v) for k, v in row.items() if k != "epoch"}, int(row["epoch"]))

    # ---- one epoch -----------------------------------------------------------------------------------------------
    def _batch(self, batch: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        x, y, idx, rgb = (t.to(self.device, non_blocking=True) for t in batch)
        to_image = lambda t: (t.float() / 127.5 - 1.0).contiguous(memory_format=self.memory_format)  # noqa: E731
        return to_image(x), to_image(y), idx, rgb  # images in [-1, 1]

    def train_epoch(self, data: TensorData) -> tuple[dict[str, float], float]:
        self.model.train()
        loader = make_loader(data, self.tcfg.batch_size, self.tcfg.seed, self.epoch, self.tcfg.num_workers)
        sums: dict[str, float] = {}
        n_seen, t0 = 0, time.perf_counter()
        progress = _progress(loader, f"epoch {self.epoch + 1}/{self.tcfg.epochs}")
        for step, batch in enumerate(progress):
            x, y, idx, rgb = self._batch(batch)
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                pred = self.model(x, idx, rgb)
                loss, terms = self.objective(pred, y)
            if not torch.isfinite(loss):
                raise PolycolorError(
                    f"loss became {loss.item()} at epoch {self.epoch + 1}, step {step + 1}; "
                    f"training diverged: lower train.lr (now {self.tcfg.lr})")
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
            if self.cosine is not None:
                self.cosine.step()
            b = len(x)
            n_seen += b
            sums["loss"] = sums.get("loss", 0.0) + loss.item() * b
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.item() * b
            if hasattr(progress, "set_postfix"):
                progress.set_postfix(loss=f"{sums['loss'] / n_seen:.4f}")
        elapsed = time.perf_counter() - t0
        return {k: v / max(n_seen, 1) for k, v in sums.items()}, n_seen / max(elapsed, 1e-9)

    @torch.no_grad()
    def validate(self, data: TensorData) -> dict[str, float]:
        self.model.eval()
        loss_sum, psnr_sum, n = 0.0, 0.0, 0
        bs = max(self.tcfg.batch_size, 32)
        for start in range(0, len(data), bs):
            sl = slice(start, start + bs)
            x, y, idx, rgb = self._batch([data.inputs[sl], data.targets[sl], data.idx[sl], data.rgb[sl]])
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                pred = self.model(x, idx, rgb)
                loss, _ = self.objective(pred, y)
            loss_sum += loss.item() * len(x)
            psnr_sum += psnr_batch(hard_image(pred, rgb), y).sum().item()
            n += len(x)
        return {"val_loss": loss_sum / n, "val_psnr": psnr_sum / n}

    @torch.no_grad()
    def sample_grid(self, data: TensorData, rows: int) -> np.ndarray:
        """uint8 (rows * H, 3 * W, 3): input | target | prediction per row."""
        self.model.eval()
        x, y, idx, rgb = self._batch([data.inputs[:rows], data.targets[:rows], data.idx[:rows], data.rgb[:rows]])
        p = hard_image(self.model(x, idx, rgb), rgb)
        tiles = torch.cat([x, y, p.float()], dim=3)  # (r, 3, H, 3W)
        img = ((tiles.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return img.permute(0, 2, 3, 1).reshape(-1, img.shape[3], 3).cpu().numpy()

    # ---- the loop --------------------------------------------------------------------------------------------------
    def fit(self, train: TensorData, val: TensorData) -> TrainResult:
        t_start = time.perf_counter()
        self._resumed_cosine: dict = {}
        self.try_resume()
        if self.tcfg.schedule == "cosine":
            # lr x (1 + cos(pi * step / total)) / 2 over every step of every epoch: ends near 0, which the last
            # epochs need to settle the mask boundary; the total depends on train.epochs (in the fingerprint).
            total = max(1, self.tcfg.epochs * len(make_loader(train, self.tcfg.batch_size, 0, 0, 0)))
            self.cosine = torch.optim.lr_scheduler.LambdaLR(
                self.opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
            if self._resumed_cosine:  # LambdaLR's constructor reset the lr to the base: put the saved one back
                self.cosine.load_state_dict(self._resumed_cosine)
                for group, lr in zip(self.opt.param_groups, self.cosine.get_last_lr()):
                    group["lr"] = lr
        n_params = count_parameters(self.model)
        self.say(f"model: {n_params:,} parameters; device {self.device}; amp {'on' if self.amp else 'off'}; "
                 f"{len(train)} training / {len(val)} validation images")
        stopped_early, rates = False, []
        try:
            while self.epoch < self.tcfg.epochs:
                if self.tcfg.early_stopping_patience and self.bad_epochs >= self.tcfg.early_stopping_patience:
                    stopped_early = True
                    break
                train_terms, rate = self.train_epoch(train)
                rates.append(rate)
                val_metrics = self.validate(val)
                if self.cosine is None:
                    self.plateau.step(val_metrics["val_loss"])
                self.epoch += 1
                improved = val_metrics["val_loss"] < self.best_val_loss
                if improved:
                    self.best_val_loss, self.best_epoch, self.bad_epochs = val_metrics["val_loss"], self.epoch, 0
                    self.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
                else:
                    self.bad_epochs += 1
                row = {"epoch": self.epoch, "train_loss": train_terms["loss"], **val_metrics,
                       "lr": self.opt.param_groups[0]["lr"], "images_per_s": rate,
                       **{f"loss_{k}": v for k, v in train_terms.items() if k != "loss"}}
                self.history.append(row)
                self.save_checkpoint(best=improved)
                if is_main_process():
                    self.log({k: float(v) for k, v in row.items() if k != "epoch"}, self.epoch)
                    if self.log_image is not None:
                        self.log_image(self.sample_grid(val, self.tcfg.grid_samples), self.epoch)
                self.say(f"epoch {self.epoch}/{self.tcfg.epochs}: train loss {row['train_loss']:.4f}, "
                         f"val loss {row['val_loss']:.4f}, val PSNR {row['val_psnr']:.2f} dB, "
                         f"lr {row['lr']:.2e}, {rate:.1f} img/s")
            if stopped_early:
                self.say(f"early stopping: no val-loss improvement for {self.bad_epochs} epoch(s)")
        except (KeyboardInterrupt, Exception):
            # The last completed epoch is already in last.pt; say so before the stage marks the run.
            self.say(f"training interrupted after {self.epoch} completed epoch(s); checkpoint kept")
            raise
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        return TrainResult(self.model, self.history, self.best_epoch, self.best_val_loss, stopped_early,
                           self.resumed_from, float(np.mean(rates)) if rates else 0.0,
                           time.perf_counter() - t_start)


def _progress(loader: DataLoader, desc: str):
    """A tqdm bar on a terminal; plain iteration (the per-epoch log line says the rest) when not a TTY, e.g. CI."""
    if sys.stderr.isatty() and is_main_process() and not os.environ.get("CI"):
        from tqdm import tqdm

        return tqdm(loader, desc=desc, leave=False)
    return loader
