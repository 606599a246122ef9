"""The training sections: the network, its loss, the loop, the MLflow experiment; the train stage reads only these."""

from __future__ import annotations

from dataclasses import dataclass

from polycolor.config.base import StageParams, _check, validate_sections

CONDITIONINGS = ("bottleneck", "input", "film")
COLOUR_ENCODINGS = ("embedding", "rgb")
HEADS = ("tanh", "composite")
RESCALE_FACTORS = (0.5, 1.0, 2.0)  # train.rescale: a batch min-pooled to half, as is, or grown to twice its size
IMAGE_LOSS_TERMS = ("l1", "l2", "perceptual")  # loss terms on the painted image; `mask` needs the composite head


@dataclass(frozen=True)
class ModelConfig:
    widths: tuple[int, ...] = (16, 32, 64, 128)  # channels per encoder level; the last is the bottleneck
    conditioning: str = "bottleneck"  # bottleneck | input | film
    colour_encoding: str = "rgb"  # embedding | rgb
    embed_dim: int = 128  # size of the colour embedding
    attention: bool = False  # self-attention at the bottleneck
    head: str = "composite"  # tanh: free RGB; composite: a mask painted with the requested colour over white
    work_size: int = 0  # px the UNet runs at (inputs min-pooled or grown to it); 0 = the data's image size
    native_width: int = 0  # channels of the head at the input's own size (0: none, the mask comes at work_size)
    fill: bool = False  # the fill layer (nn/fill.py): regions the mask encloses are painted too
    fill_grad_steps: int = 16  # path steps the fill layer's backward gathers

    def validate(self) -> None:
        _check(len(self.widths) >= 2, "model.widths", self.widths, "needs at least 2 levels")
        _check(self.work_size >= 0 and self.work_size % 2 ** (len(self.widths) - 1) == 0, "model.work_size",
               self.work_size, f"must be 0 or a multiple of 2**{len(self.widths) - 1} (the UNet's levels)")
        _check(self.native_width >= 0, "model.native_width", self.native_width, "must be >= 0")
        _check(self.fill_grad_steps >= 0, "model.fill_grad_steps", self.fill_grad_steps, "must be >= 0")
        _check(self.head == "composite" or (not self.fill and not self.native_width), "model.head", self.head,
               "must be composite with model.fill or model.native_width (both work on the mask)")
        for w in self.widths:
            _check(w >= 1, "model.widths", self.widths, "must all be >= 1")
        _check(self.conditioning in CONDITIONINGS, "model.conditioning", self.conditioning,
               f"must be one of {', '.join(CONDITIONINGS)}")
        _check(self.colour_encoding in COLOUR_ENCODINGS, "model.colour_encoding", self.colour_encoding,
               f"must be one of {', '.join(COLOUR_ENCODINGS)}")
        _check(self.embed_dim >= 1, "model.embed_dim", self.embed_dim, "must be >= 1")
        _check(self.head in HEADS, "model.head", self.head, f"must be one of {', '.join(HEADS)}")


@dataclass(frozen=True)
class LossConfig:
    l1: float = 1.0  # weight of the L1 term
    l2: float = 0.5  # weight of the MSE term
    perceptual: float = 0.1  # weight of the perceptual term
    perceptual_net: str = "ssim"  # ssim (no weights) | vgg16 (weights from vgg16_weights)
    vgg16_weights: str = ""  # local path to torchvision VGG16 weights, used only with perceptual_net: vgg16
    mask: float = 1.0  # weight of the mask BCE term (composite head only)
    wall: float = 0.0  # weight of BCE on the mask before the fill layer (model.fill only)
    boundary: float = 0.0  # the mask BCE weighs the target's boundary pixels 1 + this

    def validate(self) -> None:
        _check(self.wall >= 0.0, "loss.wall", self.wall, "must be >= 0")
        _check(self.boundary >= 0.0, "loss.boundary", self.boundary, "must be >= 0")
        weights = {k: getattr(self, k) for k in (*IMAGE_LOSS_TERMS, "mask")}
        for key, v in weights.items():
            _check(v >= 0.0, f"loss.{key}", v, "must be >= 0")
        _check(self.perceptual_net in ("ssim", "vgg16"), "loss.perceptual_net", self.perceptual_net,
               "must be ssim or vgg16")
        # A loss with no term is no loss at all (the sum of nothing): nothing would train.
        _check(any(v > 0 for v in weights.values()), "loss", weights, "needs at least one weight above 0")

    def validate_for(self, head: str) -> None:
        """The tanh head has no mask, so there loss.mask is no term: some image term must be active."""
        image_terms = {k: getattr(self, k) for k in IMAGE_LOSS_TERMS}
        _check(head != "tanh" or any(v > 0 for v in image_terms.values()), "loss", image_terms,
               "needs l1, l2 or perceptual above 0 with model.head tanh (it has no mask for loss.mask)")


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 3e-3
    batch_size: int = 16  # the global batch: each of the nproc processes takes batch_size / nproc of it
    epochs: int = 5
    weight_decay: float = 1e-4
    schedule: str = "plateau"  # plateau: ReduceLROnPlateau on val loss; cosine: per-step cosine decay to 0
    plateau_patience: int = 1  # epochs without val-loss improvement before the lr is cut
    plateau_factor: float = 0.5
    early_stopping_patience: int = 5  # epochs without improvement before stopping; 0 disables
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "auto"  # auto (fp16 on CUDA, off on CPU) | true | false
    num_workers: int = 0  # DataLoader workers; the data sits in memory, so 0 is fastest on 2 cores
    threads: int = 0  # torch intra-op threads on CPU; 0 keeps torch's default
    channels_last: bool = True  # NHWC memory format: about 1.4x faster convolutions on these CPUs
    grid_samples: int = 4  # rows of the per-epoch sample grid logged to MLflow
    nproc: int = 1  # training processes per node; > 1 launches DDP ranks with torchrun (docs/scaling.md)
    rescale: tuple[float, ...] = (1.0,)  # each batch drawn at one of these factors (0.5: min-pooled, 2: grown)

    def validate(self) -> None:
        _check(self.lr > 0, "train.lr", self.lr, "must be > 0")
        _check(len(self.rescale) >= 1 and all(f in RESCALE_FACTORS for f in self.rescale), "train.rescale",
               self.rescale, f"must be a non-empty list of {', '.join(map(str, RESCALE_FACTORS))}")
        _check(self.batch_size >= 1, "train.batch_size", self.batch_size, "must be >= 1")
        _check(self.nproc >= 1, "train.nproc", self.nproc, "must be >= 1")
        _check(self.batch_size % self.nproc == 0, "train.batch_size", self.batch_size,
               f"must be divisible by train.nproc ({self.nproc}): it is the global batch, split over the processes")
        _check(self.epochs >= 1, "train.epochs", self.epochs, "must be >= 1")
        _check(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "must be >= 0")
        _check(self.schedule in ("plateau", "cosine"), "train.schedule", self.schedule, "must be plateau or cosine")
        _check(self.plateau_patience >= 0, "train.plateau_patience", self.plateau_patience, "must be >= 0")
        _check(0 < self.plateau_factor < 1, "train.plateau_factor", self.plateau_factor, "must be in (0, 1)")
        _check(self.early_stopping_patience >= 0, "train.early_stopping_patience",
               self.early_stopping_patience, "must be >= 0")
        _check(self.device in ("auto", "cpu", "cuda"), "train.device", self.device, "must be auto, cpu or cuda")
        _check(self.amp in ("auto", "true", "false"), "train.amp", self.amp, "must be auto, true or false")
        _check(self.num_workers >= 0, "train.num_workers", self.num_workers, "must be >= 0")
        _check(self.threads >= 0, "train.threads", self.threads, "must be >= 0")
        _check(self.grid_samples >= 1, "train.grid_samples", self.grid_samples, "must be >= 1")


@dataclass(frozen=True)
class MlflowConfig:
    experiment: str = "polycolor"
    registered_model: str = "polycolor"

    def validate(self) -> None:
        _check(bool(self.experiment.strip()), "mlflow.experiment", self.experiment, "must not be empty")
        _check(bool(self.registered_model.strip()), "mlflow.registered_model", self.registered_model,
               "must not be empty")
        # MLflow's own rule for model names; `models:/<name>@<alias>` URIs could not name it either.
        _check(not any(c in self.registered_model for c in "/:"), "mlflow.registered_model",
               self.registered_model, "must not contain '/' or ':'")


@dataclass(frozen=True)
class TrainingParams(StageParams):
    """What the train stage reads of params.yaml (and logs on its MLflow run): the network, its loss, the loop
    (train.seed is its seed) and the experiment. The data sections come in as data, already made."""

    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    mlflow: MlflowConfig = MlflowConfig()

    def validate(self) -> None:
        validate_sections(self)
        self.loss.validate_for(self.model.head)
