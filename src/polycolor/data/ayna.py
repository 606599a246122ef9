"""The Ayna dataset layout: reading, validating and writing splits (atomic writes are fileio's).

A split folder holds `inputs/` (black outlines on white), `outputs/` (the same polygon filled with one colour on
white) and `data.json`, a list of {"input_polygon": "<file in inputs/>", "colour": "<name or #rrggbb>",
"output_image": "<file in outputs/>"}. Several entries may share one input file (the real data does).

Everything that reads or writes this layout goes through this module, so that the stages, the CLI and the tests
share one validator and one writer.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from polycolor.colours import SHAPES, canonical_colour, resolve_colour
from polycolor.errors import PolycolorError

DATA_JSON = "data.json"
INPUTS = "inputs"
OUTPUTS = "outputs"
_KEYS = ("input_polygon", "colour", "output_image")
MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ["split", "input", "output", "colour", "r", "g", "b", "shape"]


@dataclass(frozen=True)
class Sample:
    """One validated data.json entry; the paths exist and the colour resolves."""

    input_path: Path
    output_path: Path
    colour: str  # canonical form (see colours.canonical_colour)
    rgb: tuple[int, int, int]
    shape: str | None  # guessed from the input file name; None when it names no known shape


@dataclass
class SplitArrays:
    """A split held in memory (the data is small: 3000 pairs at 128 px are ~300 MB)."""

    inputs: np.ndarray  # (N, H, W, 3) uint8: black outline on white
    targets: np.ndarray  # (N, H, W, 3) uint8: filled polygon on white
    colours: list[str]  # N canonical colour strings
    rgb: np.ndarray  # (N, 3) uint8: the resolved colours
    shapes: list[str | None]  # N shape names (None when unknown)

    def __len__(self) -> int:
        return len(self.colours)


def guess_shape(file_name: str) -> str | None:
    """The first known shape named in a file name (`red_star.png`, `00012_hexagon.png`), else None."""
    for token in re.split(r"[^a-z0-9]+", Path(file_name).stem.lower()):
        if token in SHAPES:
            return token
    return None


def _entry_file(json_path: Path, i: int, key: str, name: str, folder: Path) -> Path:
    if not name.strip() or Path(name).name != name or name in (".", ".."):
        raise PolycolorError(f"{json_path} entry {i}: {key} {name!r} must be a plain file name inside {folder.name}/")
    path = folder / name
    if not path.is_file():
        raise PolycolorError(f"{json_path} entry {i}: {key} file {path} does not exist")
    return path


def read_split(split_dir: str | Path) -> list[Sample]:
    """Parse and validate `split_dir/data.json`; every problem is a one-line PolycolorError naming the file and entry.

    Checks that the JSON is a non-empty list of objects with string `input_polygon`, `colour` and `output_image`,
    that both files exist inside inputs/ and outputs/, and that the colour resolves. Entry numbers are 0-based.
    Images are not decoded here (see load_image / load_split).
    """
    split_dir = Path(split_dir)
    json_path = split_dir / DATA_JSON
    if not split_dir.is_dir():
        raise PolycolorError(f"split folder {split_dir} does not exist")
    if not json_path.is_file():
        raise PolycolorError(f"{json_path} not found (an Ayna split needs inputs/, outputs/ and data.json)")
    try:
        entries = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise PolycolorError(f"{json_path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PolycolorError(f"cannot read {json_path}: {e}") from None
    if not isinstance(entries, list):
        raise PolycolorError(f"{json_path} must hold a list of entries, got {type(entries).__name__}")
    if not entries:
        raise PolycolorError(f"{json_path} has no entries")
    samples = []
    seen_outputs: dict[str, int] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise PolycolorError(f"{json_path} entry {i}: must be an object with keys {', '.join(_KEYS)}, "
                                 f"got {entry!r}")
        for key in _KEYS:
            if key not in entry:
                raise PolycolorError(f"{json_path} entry {i}: missing key {key!r}")
            if not isinstance(entry[key], str):
                raise PolycolorError(f"{json_path} entry {i}: {key} must be a string, got {entry[key]!r}")
        input_path = _entry_file(json_path, i, "input_polygon", entry["input_polygon"], split_dir / INPUTS)
        output_path = _entry_file(json_path, i, "output_image", entry["output_image"], split_dir / OUTPUTS)
        if entry["output_image"] in seen_outputs:
            raise PolycolorError(f"{json_path} entry {i}: output_image {entry['output_image']!r} is already used by "
                                 f"entry {seen_outputs[entry['output_image']]}")
        seen_outputs[entry["output_image"]] = i
        try:
            rgb = resolve_colour(entry["colour"])
        except PolycolorError as e:
            raise PolycolorError(f"{json_path} entry {i} ({entry['output_image']}): {e}") from None
        samples.append(Sample(input_path, output_path, canonical_colour(entry["colour"]), rgb,
                              guess_shape(entry["input_polygon"])))
    return samples


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode as RGB; transparency is composited over white (the Ayna background), not over black."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit grey: Pillow's convert("RGB") clips instead of scaling, so scale to 8 bits here.
        a = np.asarray(im).astype(np.float64)
        peak = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        grey = np.clip(np.round(a * 255.0 / peak), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=-1), "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # opaque white: the Ayna background
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


class ImageTooLarge(PolycolorError):
    """An image whose header declares more pixels than allowed; raised before its pixels are decoded."""

    def __init__(self, where: str, width: int | None, height: int | None, limit: int, key: str):
        dims = f"{width} x {height} px" if width is not None else "more pixels than Pillow decodes"
        self.reason = f"too large: {dims}, limit {limit} px ({key})"
        super().__init__(f"{where} is {self.reason}")


def _declared_size(path: Path) -> tuple[int, int] | tuple[None, None]:
    """Width and height from the file's header alone. Image.open refuses an image over twice
    Image.MAX_IMAGE_PIXELS (a "decompression bomb") without saying its size; the format's own header parser,
    which Image.open calls before that refusal, reads it without decoding a pixel."""
    Image.init()
    with open(path, "rb") as f:
        prefix = f.read(16)
        for fmt in Image.ID:
            factory, accept = Image.OPEN[fmt]
            if accept is not None and not accept(prefix):
                continue
            f.seek(0)
            try:
                return factory(f, str(path)).size
            except (OSError, SyntaxError, ValueError, IndexError, TypeError):
                continue  # as Image.open does: try the next format that accepts the prefix
    return None, None


def load_image(path: str | Path, size: int | None = None, max_pixels: int | None = None) -> np.ndarray:
    """Decode an image as uint8 (H, W, 3) RGB.

    Any mode is converted to RGB, turned as its EXIF orientation says; when `size` is given and the image is not size x size it is resized with
    NEAREST (so two-valued images stay two-valued). A missing or undecodable file is a PolycolorError naming it.
    With `max_pixels`, an image whose header declares more (width x height) is an ImageTooLarge before decoding:
    a 168 KB PNG can declare 12000 x 12000 px, 7 GB decoded.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            if max_pixels is not None:  # Pillow's "could be a decompression bomb" warning: ours is the limit here
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)  # reads the header only
        with im:
            if max_pixels is not None and im.width * im.height > max_pixels:
                raise ImageTooLarge(f"image {path}", im.width, im.height, max_pixels, "serving.max_pixels")
            im.load()  # decode now, so a truncated file fails here and not later
            # a phone's JPEG stores its pixels unturned and says how to turn them (EXIF orientation): turn them as
            # every viewer does, so the painting matches the picture the person sees
            rgb = _to_rgb(ImageOps.exif_transpose(im))
    except FileNotFoundError:
        raise PolycolorError(f"image {path} does not exist") from None
    except Image.DecompressionBombError:
        w, h = _declared_size(path)
        if max_pixels is not None:
            raise ImageTooLarge(f"image {path}", w, h, max_pixels, "serving.max_pixels") from None
        raise ImageTooLarge(f"image {path}", w, h, int(2 * Image.MAX_IMAGE_PIXELS), "Pillow's bomb limit") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise PolycolorError(f"cannot decode image {path}: {e}") from None
    if size is not None and rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.NEAREST)
    return np.asarray(rgb, dtype=np.uint8).copy()


def load_split(split_dir: str | Path, size: int | None = None) -> SplitArrays:
    """read_split + load_image for every entry, in memory. Shared input files are decoded once.

    With size=None every image must already have the same size (else PolycolorError naming the entry).
    """
    return load_samples(read_split(split_dir), size, Path(split_dir) / DATA_JSON)


def load_samples(samples: Sequence[Sample], size: int | None, json_path: str | Path = DATA_JSON) -> SplitArrays:
    """Decode validated samples (from read_split) into a SplitArrays; errors name `json_path` and the entry."""
    cache: dict[Path, np.ndarray] = {}
    inputs, targets = [], []
    for i, s in enumerate(samples):
        try:
            if s.input_path not in cache:
                cache[s.input_path] = load_image(s.input_path, size)
            inp = cache[s.input_path]
            tgt = load_image(s.output_path, size)
        except PolycolorError as e:
            raise PolycolorError(f"{json_path} entry {i}: {e}") from None
        ref = inputs[0].shape if inputs else inp.shape
        for name, arr in (("input_polygon", inp), ("output_image", tgt)):
            if arr.shape != ref:
                raise PolycolorError(f"{json_path} entry {i}: {name} is {arr.shape[1]}x{arr.shape[0]} but the split's "
                                     f"images are {ref[1]}x{ref[0]}; set a size to resize them")
        inputs.append(inp)
        targets.append(tgt)
    return SplitArrays(
        inputs=np.stack(inputs),
        targets=np.stack(targets),
        colours=[s.colour for s in samples],
        rgb=np.array([s.rgb for s in samples], dtype=np.uint8).reshape(-1, 3),
        shapes=[s.shape for s in samples],
    )


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write a uint8 (H, W, 3) array as an RGB PNG; identical arrays give identical bytes (no time or text chunks)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) array, got {image.dtype} {image.shape}")
    Image.fromarray(image, "RGB").save(path, format="PNG", compress_level=6)


def write_data_json(split_dir: str | Path, colours: Sequence[str], input_names: Sequence[str],
                    output_names: Sequence[str]) -> None:
    """Write `split_dir/data.json` in the Ayna format (2-space indent, like the original)."""
    if not len(colours) == len(input_names) == len(output_names):
        raise ValueError("colours, input_names and output_names must have the same length")
    entries = [{"input_polygon": i, "colour": c, "output_image": o}
               for i, c, o in zip(input_names, colours, output_names)]
    Path(split_dir, DATA_JSON).write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")


def write_split(split_dir: str | Path, inputs: np.ndarray, targets: np.ndarray, colours: Sequence[str],
                input_names: Sequence[str], output_names: Sequence[str]) -> None:
    """Write a split in the Ayna layout: inputs (N, H, W, 3) and targets (N, H, W, 3) uint8 as PNGs, plus data.json.

    Entries may share an input name (as the real data does): it is written once, and the arrays behind a shared
    name must be identical. Output names must be unique.
    """
    split_dir = Path(split_dir)
    n = len(colours)
    if not len(inputs) == len(targets) == len(input_names) == len(output_names) == n:
        raise ValueError("inputs, targets, colours, input_names and output_names must have the same length")
    if len(set(output_names)) != n:
        raise ValueError("output_names must be unique")
    (split_dir / INPUTS).mkdir(parents=True, exist_ok=True)
    (split_dir / OUTPUTS).mkdir(parents=True, exist_ok=True)
    first: dict[str, int] = {}
    for i, name in enumerate(input_names):
        if name in first:
            if not np.array_equal(inputs[first[name]], inputs[i]):
                raise ValueError(f"entries {first[name]} and {i} share input name {name!r} but differ")
            continue
        first[name] = i
        write_png(split_dir / INPUTS / name, inputs[i])
    for i, name in enumerate(output_names):
        write_png(split_dir / OUTPUTS / name, targets[i])
    write_data_json(split_dir, colours, input_names, output_names)


def manifest_rows(split: str, colours: list[str], rgb: np.ndarray, shapes: list[str | None],
                  input_names: list[str], output_names: list[str]) -> list[dict]:
    """Manifest rows of one split; paths are relative to the dataset root (`training/inputs/x.png`)."""
    return [
        {"split": split, "input": f"{split}/{INPUTS}/{i}", "output": f"{split}/{OUTPUTS}/{o}",
         "colour": c, "r": int(v[0]), "g": int(v[1]), "b": int(v[2]), "shape": s or ""}
        for c, v, s, i, o in zip(colours, rgb, shapes, input_names, output_names)
    ]


def write_manifest(path: str | Path, rows: list[dict]) -> pd.DataFrame:
    """Write rows as CSV (columns MANIFEST_COLUMNS first, any extra after) and return the frame."""
    df = pd.DataFrame(rows)
    extra = [c for c in df.columns if c not in MANIFEST_COLUMNS]
    df = df[MANIFEST_COLUMNS + extra]
    df.to_csv(path, index=False, lineterminator="\n")
    return df
