"""The training loop: AdamW, a plateau or cosine LR schedule, early stopping, AMP on CUDA, exact resume, DDP.

No MLflow, no params.yaml and no process-wide torch settings here: the stage seeds torch and sets its threads at its
entry (`set_torch_globals`) and passes typed configs, in-memory data and a `log` callback. Under torchrun every rank
builds the same Trainer: the model is wrapped in DistributedDataParallel, each rank trains on its share of every
global batch of `train.batch_size` images, validation is summed over the ranks, and rank 0 alone writes checkpoints.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from polycolor.colours import canonical_colour
from polycolor.config.training import LossConfig, ModelConfig, TrainConfig
from polycolor.errors import PolycolorError, first_line
from polycolor.images import psnr_per_image, tensor_to_images, tile_grid, to_signed, to_uint8
from polycolor.nn.colour import encode_colours, hard_image
from polycolor.nn.losses import Objective
from polycolor.nn.model import ConditionalUNet, count_parameters
from polycolor.nn.modelio import atomic_torch_save, model_payload
from polycolor.training import distributed as dist

CHECKPOINT_FORMAT_VERSION = 2  # 2: one "scheduler" (plateau or cosine) and the MLflow "run_id"
# Keys that may change without invalidating a checkpoint: more epochs continue the same run (plateau only: the
# cosine schedule spans train.epochs), and nproc changes neither the batches nor the steps (global batch).
RESUMABLE_KEYS = ("epochs", "early_stopping_patience", "grid_samples", "num_workers", "threads", "device",
                  "channels_last", "nproc")

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

    def rows(self, sl: slice | range) -> list[torch.Tensor]:
        sl = slice(sl.start, sl.stop) if isinstance(sl, range) else sl
        return [self.inputs[sl], self.targets[sl], self.idx[sl], self.rgb[sl]]


@dataclass
class TrainResult:
    model: ConditionalUNet  # the best epoch's weights
    history: list[dict[str, float]]
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    resumed_from: int  # epochs already done when this call started (0 = fresh)
    images_per_s: float  # over all ranks
    wall_s: float


def build_vocab(colours: list[str]) -> tuple[str, ...]:
    """The colour vocabulary of the embedding table: the training colours, canonical, sorted."""
    return tuple(sorted({canonical_colour(c) for c in colours}))


def to_tensor_data(inputs: np.ndarray, targets: np.ndarray, colours: list[str], vocab: tuple[str, ...],
                   encoding: str) -> TensorData:
    """From uint8 (N, H, W, 3) arrays and colour strings."""
    idx, rgb = encode_colours(colours, vocab, encoding)
    to_chw = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    return TensorData(to_chw(inputs), to_chw(targets), idx, rgb)


def set_torch_globals(cfg: TrainConfig) -> None:
    """Process-wide torch state, set once at the stage's entry: the seed the weights start from, CPU threads."""
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimizer steps per epoch: full global batches only, the same for any number of processes."""
    if n_train < batch_size:
        raise PolycolorError(f"train.batch_size ({batch_size}) is larger than the training set ({n_train} images)")
    return n_train // batch_size


def make_loader(data: TensorData, batch_size: int, seed: int, epoch: int, num_workers: int) -> Iterable:
    """This rank's share of every global batch of an epoch. The order depends only on (seed, epoch): one permutation
    for any number of ranks, rank r taking its every world-th item, so the union of the ranks' k-th batches of
    batch_size / world images is the k-th global batch of a single-process run."""
    ds = TensorDataset(data.inputs, data.targets, data.idx, data.rgb)
    sampler = DistributedSampler(ds, num_replicas=dist.world_size(), rank=dist.rank(), shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    loader = DataLoader(ds, batch_size=batch_size // dist.world_size(), sampler=sampler, drop_last=True,
                        num_workers=num_workers)
    # The sampler pads the permutation to a multiple of world: stop before any padded (repeated) item.
    return islice(loader, steps_per_epoch(len(data), batch_size))


def rescale_factor(factors: tuple[float, ...], seed: int, epoch: int, step: int) -> float:
    """The train.rescale factor of one global batch: drawn from (seed, epoch, step) alone, so every rank and a
    resumed run draw the same."""
    if len(factors) == 1:
        return factors[0]
    return factors[int(np.random.default_rng([seed, epoch, step]).integers(len(factors)))]


def rescaled(x: torch.Tensor, y: torch.Tensor, factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of inputs and targets (B, 3, H, W) in [-1, 1] at `factor` times their size. 2: each pixel a 2x2 block
    (nearest); 0.5: each 2x2 block its darkest value per channel (a min pool), which keeps a thin outline unbroken
    and paints a target pixel wherever any of its block was painted (painted colours are darker than white in
    some channel, and one image has one colour)."""
    if factor == 2.0:
        return (F.interpolate(x, scale_factor=2, mode="nearest"), F.interpolate(y, scale_factor=2, mode="nearest"))
    if factor == 0.5:
        return -F.max_pool2d(-x, 2), -F.max_pool2d(-y, 2)
    return x, y


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise PolycolorError("train.device is cuda but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return dist.local_device(torch.device(name))


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
    """Per-image PSNR (B,) float64 in dB of images (B, 3, H, W) in [-1, 1], on the [0, 255] scale after rounding,
    capped at 100: images.psnr_per_image, the definition evaluation scores with."""
    return torch.tensor(psnr_per_image(to_uint8(target), to_uint8(pred)), dtype=torch.float64)


def weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class UnreadableCheckpoint(PolycolorError):
    """checkpoints/last.pt exists but cannot be read. Training does not start over on its own: that would overwrite
    an intact best.pt and orphan the run. `run_id` is the MLflow run named by best.pt ('' when unknown), which the
    stage closes."""

    def __init__(self, message: str, run_id: str = ""):
        super().__init__(message)
        self.run_id = run_id


def _load(path: Path) -> dict[str, Any]:
    ck = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ck, dict):
        raise TypeError(f"a {type(ck).__name__}, not a checkpoint")
    return ck


def read_checkpoint(path: Path, say: Callable[[str], None]) -> dict[str, Any] | None:
    """A checkpoint's content, or None (said) when there is none. An unreadable one raises UnreadableCheckpoint
    with what to do: restore it, resume from the intact best.pt beside it (its epoch named), or delete the folder."""
    if not path.is_file():
        say("no checkpoint found: training from scratch")
        return None
    try:
        return _load(path)
    except Exception as e:  # torch raises many types for a cut or foreign file
        why = f"{type(e).__name__}: {first_line(e)}".rstrip(": ") if str(e).strip() else type(e).__name__
    best_path = path.with_name("best.pt")
    try:
        best = _load(best_path) if best_path.is_file() else None
    except Exception:
        best = None
    hint = (f"copy the intact {best_path} (epoch {best.get('epoch')}) over it to resume from there, "
            if best else "")
    raise UnreadableCheckpoint(
        f"checkpoint {path} is unreadable ({why}): restore it, {hint}or delete {path.parent}/ to train from scratch",
        str(best.get("run_id") or "") if best else "")


class Trainer:
    def __init__(self, model_cfg: ModelConfig, loss_cfg: LossConfig, train_cfg: TrainConfig, *,
                 vocab: tuple[str, ...], image_size: int, data_id: str, steps_per_epoch: int,
                 checkpoint_dir: str | Path | None = None,
                 log: LogFn | None = None, log_image: ImageLogFn | None = None,
                 say: Callable[[str], None] = functools.partial(print, flush=True)):
        if train_cfg.batch_size % dist.world_size():  # config checks nproc; several nodes multiply it
            raise PolycolorError(f"train.batch_size ({train_cfg.batch_size}) must be divisible by the "
                                 f"{dist.world_size()} processes of all nodes: it is the global batch")
        self.mcfg, self.lcfg, self.tcfg = model_cfg, loss_cfg, train_cfg
        self.device = resolve_device(train_cfg.device)
        self.amp = use_amp(train_cfg.amp, self.device)
        self.memory_format = torch.channels_last if train_cfg.channels_last else torch.contiguous_format
        self.model = ConditionalUNet(model_cfg, vocab, image_size).to(self.device, memory_format=self.memory_format)
        # The forward that trains: under DDP the wrapper averages gradients over the ranks in backward().
        self.net = self.model if dist.world_size() == 1 else DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.objective = Objective(loss_cfg).to(self.device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
        if train_cfg.schedule == "cosine":
            # lr x (1 + cos(pi * step / total)) / 2 over every step of every epoch, stepped per batch: ends near 0,
            # which the last epochs need to settle the mask boundary; total depends on train.epochs (fingerprinted).
            total = max(1, train_cfg.epochs * steps_per_epoch)
            self.scheduler: Any = torch.optim.lr_scheduler.LambdaLR(
                self.opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
        else:  # stepped per epoch on the validation loss
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.opt, mode="min", factor=train_cfg.plateau_factor, patience=train_cfg.plateau_patience)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.fingerprint = fingerprint(model_cfg, loss_cfg, train_cfg, data_id)
        self.ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.log = log or (lambda metrics, step: None)
        self.log_image = log_image
        self.say = say if dist.is_main_process() else (lambda s: None)
        self.run_id = ""  # the MLflow run this training belongs to; saved in every checkpoint
        self.epoch = 0  # epochs completed
        self.history: list[dict[str, float]] = []
        self.best_val_loss, self.best_epoch = math.inf, 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_epochs = self.resumed_from = 0

    # ---- checkpoints -------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "format_version": CHECKPOINT_FORMAT_VERSION, "fingerprint": self.fingerprint, "run_id": self.run_id,
            "epoch": self.epoch, "model": model_payload(self.model, meta={}), "optimizer": self.opt.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "history": self.history,
            "best_val_loss": self.best_val_loss, "best_epoch": self.best_epoch, "best_state": self.best_state,
            "bad_epochs": self.bad_epochs,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        }

    def save_checkpoint(self, best: bool) -> None:
        if self.ckpt_dir is None or not dist.is_main_process():
            return
        state = self.state()
        atomic_torch_save(state, self.ckpt_dir / "last.pt")
        if best:
            atomic_torch_save(state, self.ckpt_dir / "best.pt")

    def resume(self) -> tuple[str, bool]:
        """Continue from checkpoints/last.pt when it was written with the same params and data, and say what
        happened. Rank 0 reads the file, every rank gets its content. Returns the MLflow run id stored in the
        checkpoint ('' when none), resumable or not, so the stage can continue that run or close it, and whether
        this trainer resumed (from epoch 0 too: a run killed in its first epoch)."""
        ck: Any = None
        if self.ckpt_dir and dist.is_main_process():
            try:
                ck = read_checkpoint(self.ckpt_dir / "last.pt", self.say)
            except UnreadableCheckpoint as e:  # every rank raises it, none waits at the broadcast
                ck = e
        ck = dist.broadcast_object(ck)
        if isinstance(ck, UnreadableCheckpoint):
            raise ck
        if not isinstance(ck, dict):
            return "", False
        if ck.get("format_version") != CHECKPOINT_FORMAT_VERSION or ck.get("fingerprint") != self.fingerprint:
            self.say(f"checkpoint {self.ckpt_dir / 'last.pt'} was written with other params or data: "
                     "training from scratch")
            return str(ck.get("run_id") or ""), False
        if int(ck["epoch"]) > self.tcfg.epochs:  # resuming would hand back a longer training than asked for
            self.say(f"checkpoint {self.ckpt_dir / 'last.pt'} has {ck['epoch']} epoch(s) done, more than "
                     f"train.epochs {self.tcfg.epochs}: training from scratch")
            return str(ck.get("run_id") or ""), False
        self.model.load_state_dict(ck["model"]["state_dict"])
        self.opt.load_state_dict(ck["optimizer"])  # restores the lr the schedule had reached
        self.scheduler.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        self.epoch = self.resumed_from = int(ck["epoch"])
        self.history = list(ck["history"])
        self.best_val_loss, self.best_epoch = float(ck["best_val_loss"]), int(ck["best_epoch"])
        self.best_state, self.bad_epochs = ck["best_state"], int(ck["bad_epochs"])
        self.run_id = str(ck["run_id"])
        torch.set_rng_state(ck["rng"]["torch"])
        if ck["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ck["rng"]["cuda"])
        self.say(f"resuming from {self.ckpt_dir / 'last.pt'}: {self.epoch} epoch(s) done")
        return self.run_id, True

    # ---- one epoch -----------------------------------------------------------------------------------------------
    def _batch(self, batch: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        x, y, idx, rgb = (t.to(self.device, non_blocking=True) for t in batch)
        to_image = lambda t: to_signed(t).contiguous(memory_format=self.memory_format)  # noqa: E731
        return to_image(x), to_image(y), idx, rgb  # images in [-1, 1]

    def train_epoch(self, data: TensorData) -> tuple[dict[str, float], float]:
        """Mean loss terms over the epoch's global batches, and images/s over all ranks."""
        self.model.train()
        loader = make_loader(data, self.tcfg.batch_size, self.tcfg.seed, self.epoch, self.tcfg.num_workers)
        sums: dict[str, torch.Tensor] = {}
        n_seen, t0 = 0, time.perf_counter()
        for step, batch in enumerate(_progress(loader, f"epoch {self.epoch + 1}/{self.tcfg.epochs}")):
            x, y, idx, rgb = self._batch(batch)
            x, y = rescaled(x, y, rescale_factor(self.tcfg.rescale, self.tcfg.seed, self.epoch, step))
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                pred = self.net(x, idx, rgb)
                loss, terms = self.objective(pred, y)
            global_loss = dist.all_reduce_sum(loss.detach().float()) / dist.world_size()  # every rank stops together
            if not torch.isfinite(global_loss):
                raise PolycolorError(
                    f"loss became {global_loss.item()} at epoch {self.epoch + 1}, step {step + 1}; "
                    f"training diverged: lower train.lr (now {self.tcfg.lr})")
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
            if not isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step()
            n_seen += len(x)
            for k, v in {"loss": loss, **terms}.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float() * len(x)
        elapsed = time.perf_counter() - t0
        keys = list(sums)  # one all-reduce: [term sums..., images]
        totals = dist.all_reduce_sum(torch.stack([*(sums[k] for k in keys), torch.tensor(float(n_seen),
                                                                                        device=self.device)]))
        dist.broadcast_buffers(self.model)  # each rank's BatchNorm statistics saw its own share: take rank 0's
        n = max(totals[-1].item(), 1.0)
        return {k: totals[i].item() / n for i, k in enumerate(keys)}, n / max(elapsed, 1e-9)

    @torch.no_grad()
    def validate(self, data: TensorData) -> dict[str, float]:
        """Loss and PSNR over the whole split, each image on exactly one rank."""
        self.model.eval()
        sums = torch.zeros(3, dtype=torch.float64)  # loss x images, PSNR sum, images
        bs, mine = max(self.tcfg.batch_size, 32), dist.shard(len(data))
        for start in range(mine.start, mine.stop, bs):
            x, y, idx, rgb = self._batch(data.rows(slice(start, min(start + bs, mine.stop))))
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                pred = self.model(x, idx, rgb)
                loss, _ = self.objective(pred, y)
            sums += torch.tensor([loss.item() * len(x), psnr_batch(hard_image(pred, rgb), y).sum().item(), len(x)],
                                 dtype=torch.float64)
        loss_sum, psnr_sum, n = dist.all_reduce_sum(sums).tolist()
        return {"val_loss": loss_sum / n, "val_psnr": psnr_sum / n}

    @torch.no_grad()
    def sample_grid(self, data: TensorData, rows: int) -> np.ndarray:
        """uint8 (rows * H, 3 * W, 3): input | target | prediction per row."""
        self.model.eval()
        x, y, idx, rgb = self._batch(data.rows(slice(0, rows)))
        p = hard_image(self.model(x, idx, rgb), rgb)
        return tile_grid(list(zip(*(tensor_to_images(t) for t in (x, y, p)))), gap=0)

    # ---- the loop --------------------------------------------------------------------------------------------------
    def fit(self, train: TensorData, val: TensorData, *, stop_after: int | None = None) -> TrainResult:
        """Train from self.epoch to train.epochs (call resume() first to continue a checkpoint). `stop_after`
        ends this call after that many epochs, as an interruption would, with the schedule still spanning
        train.epochs."""
        t_start = time.perf_counter()
        dist.barrier()  # every rank has resumed before rank 0 writes a checkpoint
        if self.epoch == 0:
            self.save_checkpoint(best=False)  # the run id is on disk from the start: a kill never orphans the run
        self.say(f"model: {count_parameters(self.model):,} parameters; device {self.device}; "
                 f"amp {'on' if self.amp else 'off'}; {dist.world_size()} process(es); "
                 f"{len(train)} training / {len(val)} validation images")
        stopped_early, rates, last = False, [], self.tcfg.epochs if stop_after is None else self.epoch + stop_after
        try:
            while self.epoch < min(self.tcfg.epochs, last):
                if self.tcfg.early_stopping_patience and self.bad_epochs >= self.tcfg.early_stopping_patience:
                    stopped_early = True
                    self.say(f"early stopping: no val-loss improvement for {self.bad_epochs} epoch(s)")
                    break
                self._epoch(train, val, rates)
        except (KeyboardInterrupt, Exception):
            # The last completed epoch is already in last.pt; say so before the stage marks the run.
            self.say(f"training interrupted after {self.epoch} completed epoch(s); checkpoint kept")
            raise
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        if dist.world_size() > 1:
            self.say(f"weights identical on all {dist.world_size()} ranks "
                     f"(sha256 {dist.same_on_all_ranks(weights_digest(self.model), 'weights')})")
        return TrainResult(self.model, self.history, self.best_epoch, self.best_val_loss, stopped_early,
                           self.resumed_from, float(np.mean(rates)) if rates else 0.0,
                           time.perf_counter() - t_start)

    def _epoch(self, train: TensorData, val: TensorData, rates: list[float]) -> None:
        train_terms, rate = self.train_epoch(train)
        rates.append(rate)
        val_metrics = self.validate(val)
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(val_metrics["val_loss"])
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
        if dist.is_main_process():
            self.log({k: float(v) for k, v in row.items() if k != "epoch"}, self.epoch)
            if self.log_image is not None:
                self.log_image(self.sample_grid(val, self.tcfg.grid_samples), self.epoch)
        self.say(f"epoch {self.epoch}/{self.tcfg.epochs}: train loss {row['train_loss']:.4f}, "
                 f"val loss {row['val_loss']:.4f}, val PSNR {row['val_psnr']:.2f} dB, "
                 f"lr {row['lr']:.2e}, {rate:.1f} img/s")


def _progress(loader: Iterable, desc: str) -> Iterable:
    """A tqdm bar on a terminal; plain iteration (the per-epoch log line says the rest) when not a TTY, e.g. CI."""
    if sys.stderr.isatty() and dist.is_main_process() and not os.environ.get("CI"):
        from tqdm import tqdm

        return tqdm(loader, desc=desc, leave=False)
    return loader
