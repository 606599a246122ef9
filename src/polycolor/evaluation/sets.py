"""The sets the evaluate stage scores, and the names of their eval.json blocks.

On disk: the validation split ("val") and each `evaluate.extra_sets` entry (e.g. "ayna_real", the real Ayna
validation data). Generated in memory, each from its own random stream under `seed` (so a set never changes when
another is added), each the plain training geometry (plain_geometry) with one thing changed:

  ood             poses beyond the training ranges (evaluate.ood_scale, evaluate.ood_offset);
  unseen_colours  every polygon a random #rrggbb (only the rgb encoding can paint those);
  gappy           every outline with ingest.gap_count gaps of ingest.gap_length px (the target: the polygon closed);
  vertex_gaps     every outline with gaps centred on vertices (the corner cut off);
  hand_drawn      every edge wobbles by up to ingest.wobble_amplitude px;
  thick_thin      half the outlines evaluate.thick_thin_width[0] px thin, half [1] px thick;
  novel_shapes    every shape one of synth.NOVEL_KINDS (N-gons, stars, random polygons, crosses, arrows);
  jpeg            every input JPEG-compressed at evaluate.jpeg_quality (the target stays two-valued);
  antialiased     every outline drawn with grey anti-aliased edges;
  pens            every outline in a dark pen colour of any hue;
  paper           every drawing as a scan or a photo of paper shows it (tinted page, uneven light, blur, grain);
  native_<size>   drawn at each of evaluate.native_sizes px, widths scaled with the size (not resized);
  gappy_<size>    gappy, drawn at each of evaluate.gappy_sizes px, widths and gap lengths scaled with the size.

Pure: params and folders in, arrays out (no model, no MLflow).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from polycolor.config.data import IngestConfig
from polycolor.config.evaluation import EvaluateConfig
from polycolor.config.params import Config
from polycolor.data.ayna import SplitArrays, load_split
from polycolor.data.synth import at_image_size, generate, only
from polycolor.errors import PolycolorError
from polycolor.evaluation.names import BEHAVIOUR, VAL
from polycolor.paths import repo_path

SET_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
# Each generated set's own random stream under `seed`, apart from ingest's draws and from each other.
SEED_STREAMS = {"ood": 0x00D, "unseen_colours": 0x0C0, "gappy": 0x6A9, "hand_drawn": 0x4D0, "thick_thin": 0x771,
                "novel_shapes": 0x5E7, "native": 0x256, "vertex_gaps": 0x7E6, "jpeg": 0x1F6, "antialiased": 0xA1A,
                "gappy_sized": 0x6A5, "pens": 0x9E5, "paper": 0x9A9}
# The sets drawn at the validation size, in the order they are scored (native_* and gappy_* follow).
SAME_SIZE_SETS = ("ood", "unseen_colours", "gappy", "vertex_gaps", "hand_drawn", "thick_thin", "novel_shapes",
                  "jpeg", "antialiased", "pens", "paper")


@dataclass
class EvalSet:
    name: str  # the eval.json block of its scores
    arrays: SplitArrays


def plain_geometry(ingest: IngestConfig, image_size: int) -> IngestConfig:
    """The training geometry at image_size px with every variation share off (synth.only): the Ayna shapes at the
    training poses, outline widths and colours."""
    return only(replace(ingest, image_size=image_size))


def concat(parts: list[SplitArrays]) -> SplitArrays:
    """The samples of every part, in order (same image size)."""
    return SplitArrays(inputs=np.concatenate([p.inputs for p in parts]),
                       targets=np.concatenate([p.targets for p in parts]),
                       colours=[c for p in parts for c in p.colours], rgb=np.concatenate([p.rgb for p in parts]),
                       shapes=[s for p in parts for s in p.shapes])


def native_names(e: EvaluateConfig) -> tuple[str, ...]:
    """The blocks of the native-size sets: native_64, native_256 for evaluate.native_sizes [64, 256]."""
    return tuple(f"native_{s}" for s in e.native_sizes)


def gappy_names(e: EvaluateConfig) -> tuple[str, ...]:
    """The blocks of the gappy sets drawn at other sizes: gappy_256, gappy_512 for evaluate.gappy_sizes [256, 512]."""
    return tuple(f"gappy_{s}" for s in e.gappy_sizes)


def generated_names(e: EvaluateConfig) -> tuple[str, ...]:
    """Names of the sets evaluate generates itself (not on disk), in scoring order."""
    return (*SAME_SIZE_SETS, *native_names(e), *gappy_names(e))


def generated_sets(cfg: Config, image_size: int) -> dict[str, SplitArrays]:
    """Every generated set (see the module docstring), keyed by block name; empty sets are left out."""
    e, plain = cfg.evaluate, plain_geometry(cfg.ingest, image_size)

    def rng(stream: str) -> np.random.Generator:
        return np.random.default_rng([cfg.seed, SEED_STREAMS[stream]])

    n = e.robust_samples
    thin, thick = e.thick_thin_width
    gappy = only(plain, gap_fraction=1.0)
    recipes: dict[str, Callable[[], SplitArrays]] = {
        "ood": lambda: generate(replace(plain, random_colour_fraction=0.0, scale=e.ood_scale, rotation=(0.0, 360.0),
                                        offset=e.ood_offset), e.ood_samples, rng("ood")),
        "unseen_colours": lambda: generate(replace(plain, random_colour_fraction=1.0), e.unseen_colour_samples,
                                           rng("unseen_colours")),
        "gappy": lambda: generate(gappy, n, rng("gappy")),
        "vertex_gaps": lambda: generate(only(plain, gap_fraction=1.0, vertex_gap_fraction=1.0), n, rng("vertex_gaps")),
        "hand_drawn": lambda: generate(only(plain, wobble_fraction=1.0), n, rng("hand_drawn")),
        "thick_thin": lambda: _thick_thin(plain, thin, thick, n, rng("thick_thin")),
        "novel_shapes": lambda: generate(only(plain, novel_shape_fraction=1.0), n, rng("novel_shapes")),
        "jpeg": lambda: generate(replace(only(plain, jpeg_fraction=1.0), jpeg_quality=(e.jpeg_quality,) * 2), n,
                                 rng("jpeg")),
        "antialiased": lambda: generate(only(plain, antialias_fraction=1.0), n, rng("antialiased")),
        "pens": lambda: generate(only(plain, pen_fraction=1.0), n, rng("pens")),
        "paper": lambda: generate(only(plain, paper_fraction=1.0), n, rng("paper")),
    }
    counts = {"ood": e.ood_samples, "unseen_colours": e.unseen_colour_samples}
    out = {name: recipe() for name, recipe in recipes.items() if counts.get(name, n) > 0}
    if n > 0:
        for size, name in zip(e.native_sizes, native_names(e)):
            sized_rng = np.random.default_rng([cfg.seed, SEED_STREAMS["native"], size])
            out[name] = generate(at_image_size(plain, size), n, sized_rng)
        for size, name in zip(e.gappy_sizes, gappy_names(e)):
            sized_rng = np.random.default_rng([cfg.seed, SEED_STREAMS["gappy_sized"], size])
            out[name] = generate(at_image_size(gappy, size), n, sized_rng)
    return out


def _thick_thin(plain: IngestConfig, thin: int, thick: int, n: int, rng: np.random.Generator) -> SplitArrays:
    return concat([generate(replace(plain, outline_width=(thin, thin)), n // 2, rng),
                   generate(replace(plain, outline_width=(thick, thick)), n - n // 2, rng)])


def check_names(e: EvaluateConfig) -> None:
    """Extra set names become eval.json keys and MLflow metric names: letters, digits, _ or -, and not a name the
    stage uses itself."""
    for name in e.extra_sets:
        if not SET_NAME.match(name):
            raise PolycolorError(f"evaluate.extra_sets: name {name!r} must be letters, digits, _ or - "
                                 "(it becomes an eval.json key and an MLflow metric name)")
        if name in (VAL, BEHAVIOUR, *generated_names(e)) or name.startswith(("native_", "gappy_")):
            raise PolycolorError(f"evaluate.extra_sets: name {name!r} is reserved, choose another")


def load_sets(cfg: Config, data_dir: str | Path) -> tuple[list[EvalSet], dict[str, str]]:
    """The sets to score, val first, and {name: reason} for sets left out (a missing optional extra set, a sample
    count of 0).

    A missing val folder or a missing required extra set is a PolycolorError; a malformed set is one too, required
    or not (only absence is forgiven).
    """
    check_names(cfg.evaluate)
    val = load_split(data_dir, None)
    sets = [EvalSet(VAL, val)]
    skipped: dict[str, str] = {}
    for name, extra in cfg.evaluate.extra_sets.items():
        path = repo_path(extra.path)
        if not path.exists():
            if extra.required:
                raise PolycolorError(f"evaluate.extra_sets.{name}: required set {path} does not exist")
            skipped[name] = f"{path} does not exist"
            continue
        sets.append(EvalSet(name, load_split(path, None)))
    made = generated_sets(cfg, val.inputs.shape[1])
    for name in generated_names(cfg.evaluate):
        if name in made:
            sets.append(EvalSet(name, made[name]))
        else:
            skipped[name] = "its sample count in evaluate is 0"
    return sets, skipped


def subset(arrays: SplitArrays, keep: np.ndarray) -> SplitArrays:
    """The samples at indices `keep` (1-D int array)."""
    return SplitArrays(inputs=arrays.inputs[keep], targets=arrays.targets[keep],
                       colours=[arrays.colours[i] for i in keep], rgb=arrays.rgb[keep],
                       shapes=[arrays.shapes[i] for i in keep])
