"""The MLflow pyfunc that serves a polycolor model ("models from code": MLflow runs this file, nothing is unpickled).

The package stage passes the path of `pyfunc_entry.py` (beside this file) as `python_model`; MLflow copies that file
into the model folder and executes it on load, where `mlflow.models.set_model` hands over a `PolycolorModel`. This
module itself has no import side effects. The weights come in as the artifact
`model` (models/model.pt), read once with modelio.load_payload (torch.load weights_only=True).

Wire format (one row per image):
  input:  DataFrame with columns `image` (base64-encoded PNG, any size and mode) and `colour` (name or #rrggbb);
  params: `painter`, "painted" (default: the full painter, with the `paint` section stored in the package's
          model_config) or "net" (the network's own output);
  output: DataFrame with column `image` (base64-encoded RGB PNG of the input's size).
Prediction itself is a polycolor.painting.painter painter (through predict.paint_images, which groups rows by
size); this file only decodes and encodes. At load, the registry vouches for the weights (registry.vouch_for): a
package whose content no version of its registered model records is refused before anything is served.
"""

from __future__ import annotations

import base64
import binascii
import io
import sys
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from PIL import Image

from polycolor.config.paint import PaintConfig
from polycolor.config.serving import ServingConfig
from polycolor.data.ayna import ImageTooLarge, load_image
from polycolor.errors import PolycolorError, one_line
from polycolor.nn import modelio
from polycolor.monitoring.observe import Watch
from polycolor.serving.predict import MODEL_ARTIFACT, paint_from_model_config, watched

INPUT_COLUMNS = ("image", "colour")
MAX_PIXELS_KEY = "max_pixels"  # the package's model_config key holding serving.max_pixels
NAME_KEY = "registered_model"  # ... the registered model's name (the prediction log's records name it)
MONITOR_KEY = "monitor"  # ... the monitor section (what the prediction log keeps)
MAX_PIXELS_DEFAULT = ServingConfig().max_pixels  # for packages saved without it
OUTPUT_COLUMN = "image"
MAX_ROWS = 16  # images per request: a request's memory grows with its rows (issue 28: 6 rows of 2048^2 took 1 GB)
PAINTER_PARAM = "painter"  # the predict param naming the painter (config.PAINTERS)
DEFAULT_PAINTER = "painted"


def encode_png(image: np.ndarray) -> str:
    """uint8 (H, W, 3) RGB -> base64 text of its PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image), "RGB").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_png(text: str, scratch: Path, where: str = "image", max_pixels: int | None = None) -> np.ndarray:
    """base64 text of an image file -> uint8 (H, W, 3) RGB, converted exactly as ingest converts files; an image
    over `max_pixels` is refused from its header, before it is decoded.

    The bytes go through a file in `scratch` so that ayna.load_image (the one converter of modes) decodes them.
    Errors name the row (`where`), never the scratch file: the client must not see server paths.
    """
    if not isinstance(text, str) or not text.strip():
        raise PolycolorError(f"{where}: expected a base64-encoded PNG string, got {type(text).__name__}")
    try:
        data = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise PolycolorError(f"{where}: not valid base64") from None
    path = scratch / f"{where.replace(' ', '_')}.img"
    path.write_bytes(data)
    try:
        return load_image(path, None, max_pixels)
    except ImageTooLarge as e:
        raise PolycolorError(f"{where}: {e.reason}") from None
    except PolycolorError:
        raise PolycolorError(f"{where}: the base64 data is not a decodable image") from None


def predict_frame(loaded: modelio.LoadedModel, frame: pd.DataFrame, max_pixels: int = MAX_PIXELS_DEFAULT,
                  cfg: PaintConfig = PaintConfig(), painter_name: str = DEFAULT_PAINTER,
                  watch: Watch | None = None) -> pd.DataFrame:
    """Paint every row of `frame` (columns image, colour) with the painter `painter_name` ("painted" paints as
    `cfg` says), logged when `watch` is given; returns a DataFrame with column image, same row order. Every image is
    checked against
    `max_pixels` before it is decoded in full; a request holds at most MAX_ROWS rows and `max_pixels` pixels
    over all its rows, so its memory is bounded as one image at the limit."""
    missing = [c for c in INPUT_COLUMNS if c not in frame.columns]
    if missing:
        raise PolycolorError(f"input needs columns {', '.join(INPUT_COLUMNS)}; missing {', '.join(missing)}")
    if len(frame) > MAX_ROWS:
        raise PolycolorError(f"request has {len(frame)} rows, over the cap of {MAX_ROWS} rows per request: "
                             "send fewer images per request")
    colours = [str(c) for c in frame["colour"].tolist()]
    images: list[np.ndarray] = []
    total = 0
    with tempfile.TemporaryDirectory(prefix="polycolor-pyfunc-") as scratch:
        for i, text in enumerate(frame["image"].tolist()):
            images.append(decode_png(text, Path(scratch), f"row {i}", max_pixels))
            total += images[-1].shape[0] * images[-1].shape[1]
            if total > max_pixels:  # before any painting, which is what takes the memory
                raise PolycolorError(f"request has over {total} pixels by row {i}, over the cap of {max_pixels} "
                                     "pixels per request (serving.max_pixels, summed over rows): send fewer or "
                                     "smaller images per request")
    painted = watched(watch, loaded, images, colours, cfg, painter_name)  # each (H_i, W_i, 3), the input's size
    out = [encode_png(im) for im in painted]
    return pd.DataFrame({OUTPUT_COLUMN: out})


class PolycolorModel(mlflow.pyfunc.PythonModel):
    """pyfunc over a polycolor model file; `predict` takes and returns DataFrames (see the module docstring)."""

    def load_context(self, context: Any) -> None:
        """Load the model file (artifact `model`) with torch.load(weights_only=True), once per process, and the
        pixel limit and paint section the package stage saved in the model_config (serving does not read
        params.yaml; a package saved without a paint section paints with the defaults)."""
        from mlflow.exceptions import MlflowException

        from polycolor.config.monitoring import parse_monitor
        from polycolor.monitoring.observe import watch_for
        from polycolor.monitoring.profile import REFERENCE_ARTIFACT
        from polycolor.serving import registry

        path = context.artifacts[MODEL_ARTIFACT]
        payload = modelio.load_payload(path)  # read once: the model and the registry's digest below both need it
        self.loaded = modelio.model_from_payload(payload, path)
        self.loaded.model.to(memory_format=torch.channels_last)  # NHWC weights, as modelio.load_model gives them
        config = context.model_config or {}
        self.max_pixels = int(config.get(MAX_PIXELS_KEY, MAX_PIXELS_DEFAULT))
        self.paint = paint_from_model_config(config, "the package")
        # Every painting is logged (monitoring.log; $POLYCOLOR_PREDICTION_LOG=off turns it off), keyed on the
        # registry's content hash of this package, so `polycolor monitor` finds the version and its reference.
        digest = registry.package_digest(payload, config.get(registry.PAINT_KEY) or {})
        name = str(config.get(NAME_KEY, ""))
        # The registry's own hash decides: weights or a paint section swapped in the artifact store after
        # registration are refused before this process serves anything (docs/reliability.md says what it cannot
        # cover: this file itself, swapped too). With no registry to ask, it serves and says so.
        try:
            registry.vouch_for(name, digest)
        except registry.UnregisteredContent:
            raise
        except (PolycolorError, MlflowException, OSError) as e:
            print(f"polycolor pyfunc: not checked against the registry: {one_line(e)}", file=sys.stderr)
        reference = context.artifacts.get(REFERENCE_ARTIFACT)
        self.watch = watch_for("serve", name, "", digest,
                               Path(reference) if reference else None, parse_monitor(config.get(MONITOR_KEY)))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """DataFrame (image: base64 PNG, colour) -> DataFrame (image: base64 PNG of the input's size), painted by
        the painter params["painter"] names (default "painted").

        Bad input is MLflow's own exception with INVALID_PARAMETER_VALUE, so the scoring server answers HTTP 400
        with the reason as `message`; any other exception there becomes a generic message plus a server traceback.
        """
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        painter_name = str((params or {}).get(PAINTER_PARAM) or DEFAULT_PAINTER)
        try:
            return predict_frame(self.loaded, model_input, self.max_pixels, self.paint, painter_name,
                                 getattr(self, "watch", None))
        except PolycolorError as e:
            raise MlflowException(one_line(e), error_code=INVALID_PARAMETER_VALUE) from None

