"""The self-describing model file (models/model.pt): weights plus everything inference needs.

Content: format version, state_dict, model config, colour vocabulary, image size, training metadata and (format 2)
`content_sha256`, the file's own content hash: a file whose bytes changed after it was written (a flipped bit in
the DVC cache, which DVC does not see when the mtime is kept) is refused on load instead of painting with the
damaged weights. Format 1 files (no hash) still load. Loading uses `torch.load(weights_only=True)`: only tensors
and plain containers, never arbitrary pickled objects.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from polycolor import signals
from polycolor.config.base import _build
from polycolor.config.training import ModelConfig
from polycolor.errors import ConfigError, PolycolorError, first_line
from polycolor.fileio import atomic_output
from polycolor.nn.model import ConditionalUNet

MODEL_FORMAT_VERSION = 2  # 2: the payload carries its content_sha256
READABLE_FORMAT_VERSIONS = (1, 2)
DIGEST_KEY = "content_sha256"


@dataclass
class LoadedModel:
    model: ConditionalUNet  # in eval mode
    config: ModelConfig
    vocab: tuple[str, ...]
    image_size: int
    meta: dict[str, Any]


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save through fileio.atomic_output: a crash or a full disk never leaves a half-written file. torch.save
    writes through a Python file object: given a path, its C++ writer reports a full disk only as
    "basic_ios::clear: iostream error"; through Python the OSError keeps its errno (ENOSPC), which atomic_output
    turns into one line naming the full filesystem. A stop signal (Ctrl-C, SIGTERM) is held back until the file is
    in place (signals.stop_signals_deferred): raised inside torch's writer it left torch's own RuntimeError in place
    of the KeyboardInterrupt, so an interrupted training ended FAILED instead of KILLED."""
    with signals.stop_signals_deferred(), atomic_output(path) as tmp, open(tmp, "wb") as f:
        try:
            torch.save(obj, f)
        except RuntimeError as e:  # torch's writer may wrap the file's OSError in its own error: unwrap it
            cause = e.__cause__ or e.__context__
            if isinstance(cause, OSError):
                raise cause from None
            raise


def model_payload(model: ConditionalUNet, *, meta: dict[str, Any]) -> dict[str, Any]:
    """The model file's content; the state_dict is copied to CPU so the file loads anywhere. It carries its own
    content_hash, checked on load (verify_digest)."""
    payload = {
        "format_version": MODEL_FORMAT_VERSION,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model_config": _plain(dataclasses.asdict(model.cfg)),
        "vocab": list(model.vocab),
        "image_size": model.image_size,
        "meta": meta,
    }
    payload[DIGEST_KEY] = content_hash(payload)
    return payload


def save_model(path: str | Path, model: ConditionalUNet, *, meta: dict[str, Any]) -> None:
    atomic_torch_save(model_payload(model, meta=meta), path)


def _restore_hint(path: Path) -> str:
    return f"restore it with `dvc checkout {path}` or use a registered version (--model models:/polycolor@champion)"


def load_payload(path: str | Path) -> dict[str, Any]:
    """torch.load(weights_only=True) with one-line errors for a missing, empty, truncated or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise PolycolorError(f"model file not found: {path}")
    # torch.save writes a zip archive whose directory sits at the end: an empty file (torch: IndexError) or a cut
    # one (torch: RuntimeError or OSError Errno 22, depending on where it was cut) is said as such, with the way back.
    size = path.stat().st_size
    if size == 0:
        raise PolycolorError(f"cannot load model file {path}: it is empty (0 bytes); {_restore_hint(path)}")
    if not zipfile.is_zipfile(path):
        raise PolycolorError(f"cannot load model file {path}: it is truncated or not a model file ({size} bytes, "
                             f"no complete torch archive); {_restore_hint(path)}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt or foreign file
        raise PolycolorError(f"cannot load model file {path}: {type(e).__name__}: {first_line(e)}") from None
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise PolycolorError(f"{path} is not a polycolor model file (no state_dict)")
    return payload


def content_hash(payload: dict[str, Any]) -> str:
    """sha256 of what a model file computes: its weights (names, dtypes, shapes, bytes), model config, colour
    vocabulary and image size. `meta` (lineage, epoch) is left out, so the same model written twice (a re-run
    after a fix, a retrained identical model) has one hash: the registry keys versions on it."""
    h = hashlib.sha256()
    spec = {k: payload.get(k) for k in ("format_version", "model_config", "vocab", "image_size")}
    h.update(json.dumps(spec, sort_keys=True).encode())
    for name in sorted(payload["state_dict"]):
        t = payload["state_dict"][name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def verify_digest(payload: dict[str, Any], source: str) -> None:
    """Refuse a format-2 payload whose weights, config, vocabulary or size no longer hash to the content_sha256
    written with them. The file is intact as a zip (torch does not check the archive's CRCs), so only this says it."""
    stored = payload.get(DIGEST_KEY)
    if payload.get("format_version") == 1:
        return  # written before files carried their hash
    actual = content_hash(payload)
    if stored != actual:
        raise PolycolorError(
            f"{source} is corrupt: its content hashes to {actual[:12]}, the file says {str(stored)[:12]}; restore it "
            f"(`dvc checkout --relink {source}`, or `dvc pull` if the DVC cache copy is bad too) or retrain "
            "(`dvc repro --force train`)")


def model_from_payload(payload: dict[str, Any], source: str = "model") -> LoadedModel:
    version = payload.get("format_version")
    if version not in READABLE_FORMAT_VERSIONS:
        raise PolycolorError(f"{source}: model format version {version!r}, this polycolor reads "
                             f"{', '.join(map(str, READABLE_FORMAT_VERSIONS))}")
    verify_digest(payload, source)
    try:
        cfg = _build(ModelConfig, payload["model_config"], "model")
        cfg.validate()
    except ConfigError as e:
        raise PolycolorError(f"{source}: bad model config: {e}") from None
    vocab = tuple(payload["vocab"])
    image_size = int(payload["image_size"])
    model = ConditionalUNet(cfg, vocab, image_size)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return LoadedModel(model, cfg, vocab, image_size, dict(payload.get("meta", {})))


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """A saved model, ready to paint: on `device`, in eval mode, with NHWC (channels_last) weights, which oneDNN's
    convolutions run faster (docs/performance.md item 18; painting.painter feeds it NHWC inputs)."""
    loaded = model_from_payload(load_payload(path), str(path))
    loaded.model.to(device, memory_format=torch.channels_last).eval()
    return loaded


def _plain(obj: Any) -> Any:
    """Tuples to lists, so the payload holds only types weights_only loading accepts."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
