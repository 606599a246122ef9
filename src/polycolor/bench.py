"""`polycolor bench`: speed figures on this machine, printed as a table and written to metrics/benchmark.json.

Figures, all measured in the same process so ratios are comparable on a noisy machine:
  date, cpu              when and on what (model name, AVX-512 or AVX2): a figure in the docs names both
  matmul_gflops          dense fp32 matmul rate (2048 x 2048, torch threads as configured): the compute ceiling
  train_gflop_per_image  model FLOPs of one training step per image (forward + backward, torch's FlopCounterMode)
  train_images_per_s     training throughput at train.batch_size on synthetic data, after warm-up
  train_ceiling_ratio    train_gflop_per_image x train_images_per_s / matmul_gflops
  conv_ceiling_gflops    the convolution-shaped ceiling: each Conv2d of the configured model timed alone, forward +
                         backward, at the input shape a training batch gives it (recorded by forward hooks), in the
                         configured memory format; its FLOPs summed / its times summed
  conv_train_gflop_per_image, conv_layers  the convs' share of a training step's FLOPs per image, and their number
  conv_ceiling_ratio     conv_train_gflop_per_image x train_images_per_s / conv_ceiling_gflops: how close training
                         runs to what its own convolutions can do alone
  infer_ms_p50/p95       polycolor.painting.painter.paint on one 128 px image (batch 1), as `polycolor predict` runs it;
                         infer_ms_p50_256px etc. at 256 and 512 px (drawn natively, painted at full quality)
  infer_images_per_s     paint throughput on 64 images of 128 px at batch 1, 4, ..., 64: median of 5 warm runs
  infer_best_batch       the batch size with the highest of those
  parameters, model_file_mb  of models/model.pt when present, else of a fresh model from params
  peak_rss_mb_train      peak resident memory of the last train stage (metrics/train.json)
  stage_wall_s           with --repro: wall time of each stage of a real `dvc repro` in a scratch copy
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from polycolor.config.params import Config
from polycolor.data.synth import generate
from polycolor.images import images_to_tensor
from polycolor.nn.colour import encode_colours, paintable
from polycolor.nn.losses import Objective
from polycolor.nn.model import ConditionalUNet, count_parameters
from polycolor.nn.modelio import LoadedModel, load_model
from polycolor.painting.painter import paint

STAGES = ("check", "ingest", "augment", "train", "evaluate", "package")


def cpu_name() -> str:
    """The CPU's model name and its widest vector extension (AVX-512 / AVX2), from /proc/cpuinfo where there is one."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{name}, {vector}"


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times) / 1e9


def _train_step(model: ConditionalUNet, objective: Objective, opt: torch.optim.Optimizer, x, y, idx, rgb) -> None:
    out = model(x, idx, rgb)
    loss, _ = objective(out, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _memory_format(cfg: Config) -> torch.memory_format:
    return torch.channels_last if cfg.train.channels_last else torch.contiguous_format


def _training_setup(cfg: Config) -> tuple[ConditionalUNet, tuple[torch.Tensor, ...]]:
    """The configured model in train mode and one training batch (x, y, colour_idx, colour_rgb) of train.batch_size
    images at ingest.image_size, in the memory format train.channels_last says."""
    size, bs, fmt = cfg.ingest.image_size, cfg.train.batch_size, _memory_format(cfg)
    data = generate(cfg.ingest, bs, 0)
    vocab = tuple(sorted(set(data.colours)))
    model = ConditionalUNet(cfg.model, vocab, size).to(memory_format=fmt).train()
    x, y = (images_to_tensor(a).contiguous(memory_format=fmt) for a in (data.inputs, data.targets))
    idx, rgb = encode_colours(data.colours, vocab, cfg.model.colour_encoding)
    return model, (x, y, idx, rgb)


def training_figures(cfg: Config, steps: int = 8) -> dict[str, float]:
    """FLOPs per image and images/s of real training steps with the configured model, batch and memory format."""
    from torch.utils.flop_counter import FlopCounterMode

    model, (x, y, idx, rgb) = _training_setup(cfg)
    bs = x.shape[0]
    objective = Objective(cfg.loss)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    with FlopCounterMode(display=False) as counter:
        _train_step(model, objective, opt, x, y, idx, rgb)
    flops = counter.get_total_flops() / bs
    for _ in range(2):
        _train_step(model, objective, opt, x, y, idx, rgb)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        _train_step(model, objective, opt, x, y, idx, rgb)
        times.append(time.perf_counter() - t)
    return {"train_gflop_per_image": flops / 1e9, "train_images_per_s": bs / statistics.median(times)}


class ConvShape(NamedTuple):
    """One Conv2d of the model as a training batch runs it."""
    conv: nn.Conv2d
    input_shape: tuple[int, ...]  # (B, C_in, H, W) it sees
    input_grad: bool  # whether its input needs a gradient (not so for a conv on the image itself)


def conv_shapes(model: nn.Module, *inputs: torch.Tensor) -> list[ConvShape]:
    """Every Conv2d call of one forward pass of `model` on `inputs`, in call order, recorded by forward hooks: so a
    UNet that runs at a work size and a head at the input's size is measured where each conv really runs."""
    seen: list[ConvShape] = []

    def record(conv: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        seen.append(ConvShape(conv, tuple(args[0].shape), args[0].requires_grad))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return seen


def conv_flops(shape: ConvShape) -> int:
    """FLOPs of one forward + backward of the conv on its whole batch: forward 2 x MACs; backward the weight gradient
    (as much again) and, when the input needs one, the input gradient (as much again). FlopCounterMode counts the
    same, bias excluded."""
    conv, (b, _, h, w) = shape.conv, shape.input_shape
    kh, kw = conv.kernel_size
    (sh, sw), (ph, pw), (dh, dw) = conv.stride, conv.padding, conv.dilation
    if isinstance(conv.padding, str):  # 'same' keeps the size at stride 1; 'valid' pads nothing
        ph, pw = ((dh * (kh - 1)) // 2, (dw * (kw - 1)) // 2) if conv.padding == "same" else (0, 0)
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    forward = 2 * b * conv.out_channels * ho * wo * (conv.in_channels // conv.groups) * kh * kw
    return forward * (3 if shape.input_grad else 2)


def time_conv(shape: ConvShape, fmt: torch.memory_format, repeats: int = 5) -> float:
    """Median seconds of one forward + backward of a copy of the conv alone on a random input of its shape."""
    conv = copy.deepcopy(shape.conv).to(memory_format=fmt)
    x = torch.randn(shape.input_shape).contiguous(memory_format=fmt).requires_grad_(shape.input_grad)

    def step() -> None:
        conv.zero_grad(set_to_none=True)
        x.grad = None
        conv(x).sum().backward()

    step()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def ceiling_share(gflop_per_image: float, images_per_s: float, ceiling_gflops: float) -> float:
    """Training throughput as a share of a compute ceiling: the GFLOP/s that training achieves over the ceiling."""
    return gflop_per_image * images_per_s / ceiling_gflops


def conv_figures(cfg: Config, repeats: int = 5) -> dict[str, float]:
    """The convolution-shaped ceiling: every Conv2d of the configured model timed alone (forward + backward, at the
    shape a training batch runs it, in the configured memory format); its FLOPs summed over its times summed."""
    model, (x, _, idx, rgb) = _training_setup(cfg)
    shapes = conv_shapes(model, x, idx, rgb)
    flops = [conv_flops(s) for s in shapes]
    seconds = [time_conv(s, _memory_format(cfg), repeats) for s in shapes]
    return {"conv_ceiling_gflops": sum(flops) / sum(seconds) / 1e9,
            "conv_train_gflop_per_image": sum(flops) / x.shape[0] / 1e9, "conv_layers": len(shapes)}


LATENCY_SCALES = (1, 2, 4)  # batch-1 latency is reported at the model's size (128 px) and 2x, 4x (256, 512 px)
BATCH_SIZES = (1, 4, 8, 16, 32, 64)  # paint batch sizes whose throughput is compared
BATCH_IMAGES = 64  # images painted per throughput run


def _bench_images(loaded: LoadedModel, cfg: Config, size: int, n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """n pairs of the training geometry drawn at `size` px, and colours the model can paint."""
    data = generate(replace(cfg.ingest, image_size=size), n, seed)
    known = set(paintable(data.colours, loaded.vocab, loaded.config.colour_encoding).tolist())
    colours = [c if i in known else loaded.vocab[0] for i, c in enumerate(data.colours)]  # embedding: vocab only
    return data.inputs, colours


def inference_figures(loaded: LoadedModel, cfg: Config, repeats: int = 30, runs: int = 5) -> dict[str, Any]:
    """Batch-1 latency of paint with the params' paint section (p50, p95 over `repeats` calls, after a warm-up) at
    each LATENCY_SCALES, and the throughput of painting BATCH_IMAGES images of the model's size at each BATCH_SIZES:
    the median of `runs` warm runs (one unmeasured run first), so one slow call on a shared machine does not decide
    it."""
    out: dict[str, Any] = {}
    for size in (scale * loaded.image_size for scale in LATENCY_SCALES):
        inputs, colours = _bench_images(loaded, cfg, size, min(repeats, 16), size)
        paint(loaded, inputs[:1], colours[:1], cfg.paint)  # warm-up
        times = []
        for i in range(repeats):
            k = i % len(inputs)
            t = time.perf_counter()
            paint(loaded, inputs[k:k + 1], colours[k:k + 1], cfg.paint)
            times.append((time.perf_counter() - t) * 1000)
        suffix = "" if size == loaded.image_size else f"_{size}px"
        out[f"infer_ms_p50{suffix}"] = float(np.percentile(times, 50))
        out[f"infer_ms_p95{suffix}"] = float(np.percentile(times, 95))
    inputs, colours = _bench_images(loaded, cfg, loaded.image_size, BATCH_IMAGES, 1)
    rates = {}
    for bs in BATCH_SIZES:
        paint(loaded, inputs, colours, cfg.paint, batch_size=bs)  # warm-up at this batch size
        per_run = []
        for _ in range(runs):
            t = time.perf_counter()
            paint(loaded, inputs, colours, cfg.paint, batch_size=bs)
            per_run.append(len(inputs) / (time.perf_counter() - t))
        rates[f"b{bs}"] = float(statistics.median(per_run))
    out["infer_images_per_s"] = rates
    out["infer_best_batch"] = int(max(BATCH_SIZES, key=lambda bs: rates[f"b{bs}"]))
    return out


PIPELINE_OUTPUTS = ("data/", "metrics/", "models/", "package/", "checkpoints/", "dvc.lock")  # a fresh clone lacks
# The monitor stage (monitoring/dvc.yaml) judges a prediction log outside the repository: a scratch copy runs the
# training pipeline only, and its `dvc status` should speak of that pipeline.
NOT_COPIED = ("monitoring/",)


def copy_project(root: Path, dest: Path) -> None:
    """The project's files as git sees them (tracked and new, not ignored) without pipeline outputs, into `dest`:
    a fresh checkout to run the pipeline in without touching the workspace, its cache or its MLflow store."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=root, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        src = root / f
        if src.is_file() and not f.startswith(PIPELINE_OUTPUTS + NOT_COPIED):
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)


def pipeline_env() -> dict[str, str]:
    """This environment without MLflow and DVC settings, with this Python's bin/ first on PATH, so that the
    stages' `python` is this one and every store is the copy's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def repro_stage_times(root: Path) -> dict[str, float]:
    """Wall time of each stage of a full `dvc repro`, stage by stage, in a scratch copy of the project."""
    scratch = Path(tempfile.mkdtemp(prefix="polycolor-bench-"))
    try:
        copy_project(root, scratch)
        env = pipeline_env()
        subprocess.run(["git", "init", "-q"], cwd=scratch, check=True, env=env)
        times = {}
        for stage in STAGES:
            t = time.perf_counter()
            p = subprocess.run([sys.executable, "-m", "dvc", "repro", "--single-item", stage], cwd=scratch, env=env,
                               capture_output=True, text=True)
            times[stage] = time.perf_counter() - t
            if p.returncode != 0:
                raise RuntimeError(f"dvc repro {stage} failed in {scratch}:\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
            print(f"  {stage}: {times[stage]:.1f} s", flush=True)
        times["total"] = sum(times.values())
        return times
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run_bench(cfg: Config, root: Path, *, model_path: Path, train_metrics: Path, repro: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"date": datetime.date.today().isoformat(), "cpu": cpu_name(),
                           "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                           "cpu_count": os.cpu_count()}
    out["matmul_gflops"] = matmul_gflops()
    out.update(training_figures(cfg))
    out["train_ceiling_ratio"] = ceiling_share(out["train_gflop_per_image"], out["train_images_per_s"],
                                               out["matmul_gflops"])
    out.update(conv_figures(cfg))
    out["conv_ceiling_ratio"] = ceiling_share(out["conv_train_gflop_per_image"], out["train_images_per_s"],
                                              out["conv_ceiling_gflops"])
    if model_path.is_file():
        loaded = load_model(model_path)
        out["model_source"] = str(model_path)
        out["model_file_mb"] = model_path.stat().st_size / 2**20
    else:
        fresh = ConditionalUNet(cfg.model, ("red",), cfg.ingest.image_size).eval()
        loaded = LoadedModel(fresh, cfg.model, ("red",), cfg.ingest.image_size, {})
        out["model_source"] = "fresh model from params (no models/model.pt)"
    out["parameters"] = count_parameters(loaded.model)
    out.update(inference_figures(loaded, cfg))
    if train_metrics.is_file():
        tm = json.loads(train_metrics.read_text())
        for key in ("peak_rss_mb", "images_per_s", "train_wall_s"):
            if key in tm:
                out[f"last_train_{key}"] = tm[key]
    if repro:
        out["stage_wall_s"] = repro_stage_times(root)
    return out


def format_table(figures: dict[str, Any]) -> str:
    rows = []
    for k, v in figures.items():
        if isinstance(v, dict):
            rows += [(f"{k}.{kk}", vv) for kk, vv in v.items()]
        else:
            rows.append((k, v))
    width = max(len(k) for k, _ in rows)
    fmt = lambda v: f"{v:,.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    return "\n".join(f"{k:<{width}}  {fmt(v)}" for k, v in rows)
