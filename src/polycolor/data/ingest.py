"""Build data/dataset: the training and validation splits in the Ayna layout, plus manifest.csv.

Two sources (ingest.source): `synthetic` draws pairs with polycolor.data.synth (seeded, no network, no shared files;
`ingest.workers` processes draw and write them, the same bytes for any number);
anything else is a folder or .zip in the Ayna layout, every sample of which is validated, converted to RGB and
resized (nearest) to ingest.image_size before it is written again.
"""

from __future__ import annotations

import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from polycolor.config.data import IngestConfig
from polycolor.data import ayna, synth
from polycolor.data.workers import ordered_map
from polycolor.errors import PolycolorError

SPLITS = ("training", "validation")
# Independent random streams per use of the global seed: np.random.default_rng([seed, stream]).
SEED_STREAMS = {"training": 0, "validation": 1}  # evaluate's out-of-distribution set should use another, e.g. 2
def _render_pair(job: tuple[Path, int, synth.PolygonSpec, int]) -> tuple[str, str]:
    """Draw pair i of a split and write its two PNGs: (input name, output name). A pure function of the job, run by
    any worker."""
    split_dir, i, spec, image_size = job
    inp, tgt = synth.render(spec, image_size)
    in_name, out_name = synth.file_names(i, spec)
    ayna.write_png(split_dir / ayna.INPUTS / in_name, inp)
    ayna.write_png(split_dir / ayna.OUTPUTS / out_name, tgt)
    return in_name, out_name


def _write_synthetic_split(split_dir: Path, specs: list[synth.PolygonSpec], image_size: int,
                           workers: int) -> tuple[list, list]:
    """Render and write each pair as it is drawn, on `workers` processes (ingest.workers), so memory stays small at
    any sample count; the names come back in the specs' order."""
    (split_dir / ayna.INPUTS).mkdir(parents=True)
    (split_dir / ayna.OUTPUTS).mkdir(parents=True)
    jobs = ((split_dir, i, spec, image_size) for i, spec in enumerate(specs))
    names = list(ordered_map(_render_pair, jobs, workers))
    input_names, output_names = [n[0] for n in names], [n[1] for n in names]
    ayna.write_data_json(split_dir, [s.colour for s in specs], input_names, output_names)
    return input_names, output_names


def ingest_synthetic(cfg: IngestConfig, seed: int, out_dir: Path) -> list[dict]:
    """Write both synthetic splits under out_dir; returns the manifest rows."""
    rows: list[dict] = []
    for split, n in (("training", cfg.train_samples), ("validation", cfg.val_samples)):
        rng = np.random.default_rng([seed, SEED_STREAMS[split]])
        specs = synth.sample_specs(cfg, n, rng)
        input_names, output_names = _write_synthetic_split(out_dir / split, specs, cfg.image_size, cfg.workers)
        rgb = np.array([s.rgb for s in specs], dtype=np.uint8).reshape(-1, 3)
        rows += ayna.manifest_rows(split, [s.colour for s in specs], rgb, [s.shape for s in specs],
                              input_names, output_names)
    return rows


@contextmanager
def open_source(source: str | Path) -> Iterator[Path]:
    """Yield the folder that holds training/ and validation/ for a source folder or .zip.

    A zip is extracted to a temporary folder (removed afterwards); its splits may sit at the top or inside one
    top-level folder. A source without both splits is a PolycolorError.
    """
    source = Path(source)
    if source.is_dir():
        yield _find_root(source, source)
        return
    if not source.is_file():
        raise PolycolorError(f"ingest.source {str(source)!r} is neither 'synthetic' nor an existing folder or .zip")
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as e:
        raise PolycolorError(f"ingest.source {source} is not a readable .zip: {e}") from None
    with zf, tempfile.TemporaryDirectory(prefix="polycolor-ingest-") as tmp:
        try:
            zf.extractall(tmp)  # extractall drops absolute paths and '..' parts, so nothing lands outside tmp
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise PolycolorError(f"cannot extract {source}: {e}") from None
        yield _find_root(Path(tmp), source)


def _find_root(folder: Path, source: Path) -> Path:
    def has_splits(p: Path) -> bool:
        return all((p / s).is_dir() for s in SPLITS)

    if has_splits(folder):
        return folder
    subdirs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX"))]
    if len(subdirs) == 1 and has_splits(subdirs[0]):
        return subdirs[0]
    raise PolycolorError(f"ingest.source {source} does not hold the Ayna layout: expected "
                         f"{' and '.join(s + '/' for s in SPLITS)} (each with inputs/, outputs/, data.json)")


def ingest_folder(cfg: IngestConfig, root: Path, out_dir: Path) -> list[dict]:
    """Validate, convert and write both splits of an Ayna-layout folder; returns the manifest rows.

    Every split is read and checked before anything is written, so a bad sample costs no work.
    """
    loaded = []
    for split in SPLITS:
        samples = ayna.read_split(root / split)
        arrays = ayna.load_samples(samples, cfg.image_size, root / split / ayna.DATA_JSON)
        loaded.append((split, samples, arrays))
    rows: list[dict] = []
    for split, samples, arrays in loaded:
        input_names = [s.input_path.name for s in samples]
        output_names = [s.output_path.name for s in samples]
        ayna.write_split(out_dir / split, arrays.inputs, arrays.targets, arrays.colours, input_names, output_names)
        rows += ayna.manifest_rows(split, arrays.colours, arrays.rgb, arrays.shapes, input_names, output_names)
    return rows


def check_source(cfg: IngestConfig) -> None:
    """The cheap half of ingest_folder, without decoding or writing: the source exists, holds the Ayna layout and
    each split's data.json is valid (entries, files present, colours). A PolycolorError otherwise.

    The check stage runs it before any other stage, so bad data fails before DVC deletes an output."""
    if cfg.source == "synthetic":
        return
    with open_source(cfg.source_path()) as root:
        for split in SPLITS:
            ayna.read_split(root / split)


def ingest(cfg: IngestConfig, seed: int, out_dir: str | Path) -> pd.DataFrame:
    """Write the dataset into out_dir (created; it must not exist yet) and return its manifest.

    Use inside fileio.atomic_output so that a failure leaves the previous dataset as it was.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True)
    if cfg.source == "synthetic":
        rows = ingest_synthetic(cfg, seed, out_dir)
    else:
        with open_source(cfg.source_path()) as root:
            rows = ingest_folder(cfg, root, out_dir)
    return ayna.write_manifest(out_dir / ayna.MANIFEST, rows)
