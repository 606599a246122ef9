"""The MLflow pyfunc that serves a polycolor model ("models from code": MLflow runs this file, nothing is unpickled).

The package stage passes the path of `pyfunc_entry.py` (beside this file) as `python_model`; MLflow copies that file
into the model folder and executes it on load, where `mlflow.models.set_model` hands over a `PolycolorModel`. This
module itself has no import side effects. The weights come in as the artifact
`model` (models/model.pt), loaded with modelio.load_model (torch.load weights_only=True).

Wire format (one row per image):
  input:  DataFrame with columns `image` (base64-encoded PNG, any size and mode) and `colour` (name or #rrggbb);
  output: DataFrame with column `image` (base64-encoded RGB PNG of the input's size).
Prediction itself is polycolor.nn.inference.paint (through predict.paint_images, which groups rows by size);
this file only decodes and encodes.
"""

from __future__ import annotations

import base64
import binascii
import io
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from PIL import Image

from polycolor.data.ayna import load_image
from polycolor.errors import PolycolorError
from polycolor.nn import modelio
from polycolor.serving.predict import MODEL_ARTIFACT, paint_images

INPUT_COLUMNS = ("image", "colour")
OUTPUT_COLUMN = "image"


def encode_png(image: np.ndarray) -> str:
    """uint8 (H, W, 3) RGB -> base64 text of its PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image), "RGB").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_png(text: str, scratch: Path, where: str = "image") -> np.ndarray:
    """base64 text of an image file -> uint8 (H, W, 3) RGB, converted exactly as ingest converts files.

    The bytes go through a file in `scratch` so that ayna.load_image (the one converter of modes) decodes them.
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
        return load_image(path, None)
    except PolycolorError:
        raise PolycolorError(f"{where}: the base64 data is not a decodable image") from None


def predict_frame(loaded: modelio.LoadedModel, frame: pd.DataFrame) -> pd.DataFrame:
    """Paint every row of `frame` (columns image, colour); returns a DataFrame with column image, same row order."""
    missing = [c for c in INPUT_COLUMNS if c not in frame.columns]
    if missing:
        raise PolycolorError(f"input needs columns {', '.join(INPUT_COLUMNS)}; missing {', '.join(missing)}")
    colours = [str(c) for c in frame["colour"].tolist()]
    with tempfile.TemporaryDirectory(prefix="polycolor-pyfunc-") as scratch:
        images = [decode_png(t, Path(scratch), f"row {i}") for i, t in enumerate(frame["image"].tolist())]
    painted = paint_images(loaded, images, colours)  # each (H_i, W_i, 3), the input's size
    out = [encode_png(im) for im in painted]
    return pd.DataFrame({OUTPUT_COLUMN: out})


class PolycolorModel(mlflow.pyfunc.PythonModel):
    """pyfunc over a polycolor model file; `predict` takes and returns DataFrames (see the module docstring)."""

    def load_context(self, context: Any) -> None:
        """Load the model file (artifact `model`) with torch.load(weights_only=True), once per process."""
        self.loaded = modelio.load_model(context.artifacts[MODEL_ARTIFACT])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """DataFrame (image: base64 PNG, colour) -> DataFrame (image: base64 PNG of the input's size)."""
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        return predict_frame(self.loaded, model_input)

