"""`polycolor demo`: a local Gradio page to draw or upload an outline, pick a colour, and see the model's painting
beside the classical flood-fill reference's.

Gradio is an optional extra (`pip install -e '.[demo]'`); it is imported only here. The page runs on 127.0.0.1 and
reaches nothing outside: analytics and Hugging Face telemetry are switched off before gradio is imported, and the
theme uses the browser's own fonts (Gradio's default theme would load fonts from the web). Bad input (an image that
does not decode, an unknown colour, an empty canvas) comes back as a one-line message in the page (gr.Error),
never a stack trace. An upload is decoded by the loader predict and the scoring server use (ayna.load_image), which
refuses an image over serving.max_pixels from its header: gr.Image would decode it first (a 44 KB PNG can declare
12000 x 12000 px, 9 GB and minutes to decode) and log a traceback for a file that is no image.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from polycolor.colours import AYNA_COLOURS, resolve_colour, rgb_to_hex
from polycolor.config.paint import PaintConfig
from polycolor.config.serving import ServingConfig
from polycolor.data.ayna import ImageTooLarge, load_image, read_split
from polycolor.errors import PolycolorError
from polycolor.evaluation.reference import reference_fill
from polycolor.nn.modelio import LoadedModel
from polycolor.painting.snap import ink_mask
from polycolor.monitoring.observe import Watch
from polycolor.serving.predict import watched

UPLOAD, DRAW = "upload", "draw"
MAX_UPLOAD_BYTES = 32 * 1024 * 1024  # Gradio's max_file_size: a larger upload is refused (413) before it is stored
CANVAS = 256  # px, the drawing canvas (the model resizes any input to its own size and back)
MAX_EXAMPLES = 8
DEFAULT_EXAMPLES = "../shared/ayna-dataset/validation"  # the real Ayna validation split, beside the checkout
OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


@dataclass(frozen=True)
class Painted:
    model: np.ndarray  # (H, W, 3) uint8: the model's painting, the input's size
    reference: np.ndarray  # (H, W, 3) uint8: the flood fill of the enclosed region


def as_rgb(image: Any) -> np.ndarray:
    """A canvas or upload value (numpy (H, W), (H, W, 3) or (H, W, 4)) as uint8 (H, W, 3); alpha over white."""
    if image is None:
        raise PolycolorError("no image: upload an outline or draw one first")
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or min(a.shape[:2]) < 8:
        raise PolycolorError(f"not an outline image: got an array of shape {a.shape}")
    if a.shape[2] == 4:  # transparent canvas pixels are white paper
        alpha = a[..., 3:4].astype(np.float32) / 255.0
        a = np.rint(a[..., :3] * alpha + 255.0 * (1.0 - alpha))
    return np.clip(a, 0, 255).astype(np.uint8)


def sketch_image(value: Any) -> Any:
    """The composite image of a gr.Sketchpad value ({"background", "layers", "composite"}), None when empty."""
    if isinstance(value, dict):
        return value.get("composite")
    return value


def paint_one(loaded: LoadedModel, image: Any, colour: str, paint: PaintConfig = PaintConfig(),
              watch: Watch | None = None) -> Painted:
    """The model's and the reference's painting of one outline in `colour` (checked first: a one-line error); the
    model paints as `paint` (the section stored with it) says, logged when `watch` is given."""
    colour = (colour or "").strip()
    resolve_colour(colour)
    rgb = as_rgb(image)
    if not ink_mask(rgb, paint.ink_threshold).any():
        raise PolycolorError("the image is blank: draw or upload a dark outline on a light background")
    (model,) = watched(watch, loaded, [rgb], [colour], paint, "painted")
    return Painted(model=model, reference=reference_fill(rgb[None], [colour])[0])


def examples_from(split_dir: Path | None) -> list[list[str]]:
    """[[input image path, colour], ...] from an Ayna split's data.json (at most MAX_EXAMPLES), [] without one."""
    if split_dir is None or not (Path(split_dir) / "data.json").is_file():
        return []
    return [[str(s.input_path), s.colour] for s in read_split(split_dir)[:MAX_EXAMPLES]]


def read_upload(path: str | Path, name: str, max_pixels: int) -> np.ndarray:
    """An uploaded file as uint8 (H, W, 3), through load_image (refused from its header over `max_pixels`); the
    error names the file as the user called it, not Gradio's copy."""
    try:
        return load_image(path, None, max_pixels)
    except ImageTooLarge as e:
        raise PolycolorError(f"{name} is {e.reason}") from None
    except PolycolorError as e:
        raise PolycolorError(str(e).replace(str(path), name)) from None


def read_uploads_with(upload: Any, max_pixels: int) -> Any:
    """Make the gr.Image `upload` hand its handler the file as read_upload reads it, in place of Gradio's own
    decoder, which runs before any handler. Set on the instance: a subclass of a Gradio component makes Gradio
    write a .pyi stub beside the module that defines it, at import time."""
    import gradio as gr

    def preprocess(payload: Any) -> np.ndarray | None:
        if payload is None:
            return None
        try:
            return read_upload(payload.path, payload.orig_name or Path(payload.path).name, max_pixels)
        except PolycolorError as e:
            raise gr.Error(str(e), print_exception=False) from None

    upload.preprocess = preprocess
    return upload


def build_app(loaded: LoadedModel, *, examples: list[list[str]], model_label: str,
              paint: PaintConfig = PaintConfig(), max_pixels: int = ServingConfig().max_pixels,
              watch: Watch | None = None) -> Any:
    """The gr.Blocks page: an upload tab and a drawing tab, a colour box + picker, the two paintings side by side;
    the model paints as `paint` says. Uploads over `max_pixels` (serving.max_pixels) are refused from their header."""
    os.environ.update(OFFLINE_ENV)
    import gradio as gr

    def run(source: str, upload: Any, sketch: Any, colour: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            p = paint_one(loaded, upload if source == UPLOAD else sketch_image(sketch), colour, paint, watch)
        except PolycolorError as e:
            raise gr.Error(str(e), print_exception=False) from None
        return p.model, p.reference

    def picked(hex_colour: str) -> str:
        try:  # the picker may answer rgba(...) in some browsers; resolve_colour then says what is wrong
            return rgb_to_hex(resolve_colour(hex_colour))
        except PolycolorError as e:
            raise gr.Error(str(e), print_exception=False) from None

    def swatch(name: str) -> Any:
        try:  # the picker follows a typed colour; an unknown one is reported when Paint is pressed
            return rgb_to_hex(resolve_colour(name))
        except PolycolorError:
            return gr.skip()

    with gr.Blocks(title="polycolor demo", analytics_enabled=False) as app:
        gr.Markdown(f"# polycolor\nDraw or upload a polygon outline, choose a colour, press **Paint**. "
                    f"Model: `{model_label}`.")
        source = gr.State(UPLOAD)
        with gr.Row():
            with gr.Column():
                with gr.Tabs():
                    with gr.Tab("Upload", id=UPLOAD) as upload_tab:
                        upload = read_uploads_with(gr.Image(type="numpy", image_mode="RGB", format="png",
                                                            sources=["upload"], label="outline image",
                                                            elem_id="upload"), max_pixels)
                    with gr.Tab("Draw", id=DRAW) as draw_tab:
                        sketch = gr.Sketchpad(type="numpy", image_mode="RGB", format="png", label="canvas",
                                              canvas_size=(CANVAS, CANVAS), fixed_canvas=True,
                                              brush=gr.Brush(colors=["#000000"], default_size=2, color_mode="fixed"),
                                              elem_id="sketch")
                colour = gr.Dropdown(choices=list(AYNA_COLOURS), value="red", allow_custom_value=True,
                                     label="colour: an Ayna name, any CSS name or #rrggbb", elem_id="colour")
                picker = gr.ColorPicker(value="#ff0000", label="or pick one", elem_id="picker")
                paint_button = gr.Button("Paint", variant="primary", elem_id="paint")
            with gr.Column():
                model_out = gr.Image(type="numpy", format="png", label="model", interactive=False, elem_id="model",
                                     buttons=["download", "fullscreen"])
                reference_out = gr.Image(type="numpy", format="png", label="flood-fill reference",
                                         interactive=False, elem_id="reference", buttons=["download", "fullscreen"])
        if examples:
            gr.Examples(examples=examples, inputs=[upload, colour], label="real Ayna validation outlines")
        upload_tab.select(lambda: UPLOAD, outputs=source)
        draw_tab.select(lambda: DRAW, outputs=source)
        picker.input(picked, inputs=picker, outputs=colour)
        colour.change(swatch, inputs=colour, outputs=picker)
        paint_button.click(run, inputs=[source, upload, sketch, colour], outputs=[model_out, reference_out])
    return app


def theme() -> Any:
    """Gradio's default theme on the browser's own fonts, so the page loads nothing from the web."""
    import gradio as gr

    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


@contextmanager
def upload_folder() -> Iterator[Path]:
    """A folder of this demo's own for Gradio's uploads and cache (GRADIO_TEMP_DIR, read when the app is built
    and launched), deleted with all it holds when the demo stops."""
    folder = Path(tempfile.mkdtemp(prefix="polycolor-demo-"))
    before = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    try:
        yield folder
    finally:
        if before is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = before
        shutil.rmtree(folder, ignore_errors=True)


class SameOriginOnly:
    """ASGI middleware: a request that a browser sent from another origin (an Origin header that is not this
    server's own Host) is refused with 403 before Gradio reads it. Gradio's strict_cors only withholds the CORS
    response headers, so a cross-origin form POST to /gradio_api/upload would still be stored."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            origin = headers.get("origin")
            if origin is not None and origin.split("://", 1)[-1].rstrip("/") != headers.get("host", ""):
                from starlette.responses import PlainTextResponse

                await PlainTextResponse("cross-origin request refused", status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def launch(app: Any, *, port: int, block: bool = True, max_upload_bytes: int = MAX_UPLOAD_BYTES) -> Any:
    """Serve `app` on 127.0.0.1:`port` (0: a free port); returns the app once it answers when not `block`.
    Uploads over `max_upload_bytes` and cross-origin requests (SameOriginOnly) are refused; run it inside
    upload_folder() so that its uploads are deleted when it stops."""
    from starlette.middleware import Middleware

    if port == 0:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    app.launch(server_name="127.0.0.1", server_port=port, share=False, inbrowser=False, show_error=False,
               prevent_thread_lock=not block, quiet=not block, theme=theme(), footer_links=[],
               max_file_size=max_upload_bytes, strict_cors=True,
               app_kwargs={"middleware": [Middleware(SameOriginOnly)]})
    return app
