"""`polycolor demo` in a real headless browser: upload an Ayna outline, choose a colour, paint, and compare the
page's images pixel for pixel with the model's painting and with the Ayna target (which the flood-fill reference
reproduces exactly); bad input shows a one-line message in the page."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from polycolor.config.data import IngestConfig
from polycolor.config.training import ModelConfig
from polycolor.data.ayna import load_image, read_split
from polycolor.errors import PolycolorError
from polycolor.nn import modelio
from polycolor.nn.model import ConditionalUNet
from polycolor.serving import demo
from polycolor.serving.predict import paint_images

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, str, np.ndarray]:
    """(outline PNG, colour, expected painting): an entry of the real Ayna validation split when it is beside the
    checkout, else a synthetic pair in the same format."""
    from conftest import AYNA_DIR

    split = AYNA_DIR / "validation"
    if (split / "data.json").is_file():
        s = read_split(split)[0]
        return s.input_path, s.colour, load_image(s.output_path)
    from polycolor.data import ayna, synth

    a = synth.generate(IngestConfig(image_size=128, shapes=("star",)), 1, 3)
    out = tmp_path_factory.mktemp("outline")
    ayna.write_split(out, a.inputs, a.targets, a.colours, ["star.png"], ["star_out.png"])
    return out / "inputs" / "star.png", a.colours[0], a.targets[0]


# The README's screenshot comes from the default model: after `make repro`,
#   POLYCOLOR_DEMO_MODEL=models/model.pt POLYCOLOR_SCREENSHOTS=docs pytest tests/test_demo.py -k browser
# runs this test with that model and writes docs/demo.png.
DEMO_MODEL = os.environ.get("POLYCOLOR_DEMO_MODEL")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> modelio.LoadedModel:
    """$POLYCOLOR_DEMO_MODEL when set, else a tiny untrained model (widths (4, 8), 32 px, rgb encoding): what it
    paints is arbitrary but deterministic."""
    if DEMO_MODEL:
        return modelio.load_model(DEMO_MODEL)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    modelio.save_model(path, ConditionalUNet(ModelConfig(widths=(4, 8), colour_encoding="rgb"), (), 32), meta={})
    return modelio.load_model(path)


@pytest.fixture(scope="module")
def page_url(model, sample):
    label = f"{DEMO_MODEL}" if DEMO_MODEL else "tiny test model"
    app = demo.build_app(model, examples=[[str(sample[0]), sample[1]]], model_label=label)
    demo.launch(app, port=0, block=False)
    try:
        yield app.local_url
    finally:
        app.close()


def shown_image(page, elem_id: str) -> np.ndarray:
    """The PNG an output gr.Image shows, fetched from the page's own server, as uint8 (H, W, 3)."""
    img = page.locator(f"#{elem_id} img").first
    img.wait_for(state="visible", timeout=60_000)
    body = page.request.get(img.get_attribute("src")).body()
    with Image.open(io.BytesIO(body)) as im:
        return np.asarray(im.convert("RGB"))


def choose_colour(page, colour: str) -> None:
    box = page.locator("#colour input")
    box.fill(colour)
    box.press("Enter")


def test_upload_colour_paint_in_the_browser(browser, page_url, model, sample, screenshots):
    path, colour, target = sample
    page = browser.new_page(viewport={"width": 1200, "height": 1100})
    outside = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(("http://127.0.0.1", "data:",
                                                                                 "blob:")) else None)
    page.goto(page_url)
    page.locator("#paint").wait_for()
    page.locator("#upload input[type=file]").set_input_files(str(path))
    page.locator("#upload img").first.wait_for(state="visible", timeout=60_000)
    choose_colour(page, colour)
    page.locator("#paint").click()

    expected = paint_images(model, [load_image(path)], [colour])[0]
    got = shown_image(page, "model")
    assert got.shape == expected.shape and np.array_equal(got, expected), "the page shows the model's painting"
    reference = shown_image(page, "reference")
    assert np.array_equal(reference, target), "the flood fill paints the Ayna outline exactly as its target"
    page.screenshot(path=str(screenshots / ("demo.png" if DEMO_MODEL else "demo-test.png")), full_page=True)

    # draw a square outline on the canvas (Draw tab, brush tool) and paint it cyan
    page.get_by_role("tab", name="Draw").click()
    page.locator("#sketch button[aria-label='Brush']").first.click()
    box = page.locator("#sketch canvas").first.bounding_box()
    corners = [(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy)
               for fx, fy in ((0.3, 0.3), (0.7, 0.3), (0.7, 0.7), (0.3, 0.7), (0.3, 0.3))]
    page.mouse.move(*corners[0])
    page.mouse.down()
    for corner in corners[1:]:
        page.mouse.move(*corner, steps=15)
    page.mouse.up()
    choose_colour(page, "cyan")
    before = reference
    page.locator("#paint").click()
    page.wait_for_function("src => document.querySelector('#reference img').src !== src",
                           arg=page.locator("#reference img").first.get_attribute("src"), timeout=60_000)
    drawn = shown_image(page, "reference")
    assert drawn.shape == (demo.CANVAS, demo.CANVAS, 3) and drawn.shape != before.shape
    assert (drawn[demo.CANVAS // 2, demo.CANVAS // 2] == (0, 255, 255)).all(), "inside the drawn square: cyan"
    assert (drawn[5, 5] == 255).all(), "outside it: white"

    choose_colour(page, "not-a-colour")
    page.locator("#paint").click()
    toast = page.get_by_text("unknown colour 'not-a-colour'")
    toast.first.wait_for(timeout=30_000)
    assert "Traceback" not in page.content()
    assert outside == [], f"the page reached outside: {outside}"
    page.close()


def test_bad_inputs_are_one_line_errors(model):
    with pytest.raises(PolycolorError, match="no image"):
        demo.paint_one(model, None, "red")
    with pytest.raises(PolycolorError, match="unknown colour"):
        demo.paint_one(model, np.zeros((32, 32, 3), np.uint8), "blurple")
    with pytest.raises(PolycolorError, match="blank"):
        demo.paint_one(model, np.full((32, 32, 4), 0, np.uint8), "red")  # a transparent, untouched canvas
    drawn = np.zeros((40, 40, 4), np.uint8)
    drawn[10:30, 10] = drawn[10:30, 29] = drawn[10, 10:30] = drawn[29, 10:30] = (0, 0, 0, 255)
    p = demo.paint_one(model, drawn, "#00ff00")
    assert p.model.shape == p.reference.shape == (40, 40, 3)
    assert (p.reference[15, 15] == (0, 255, 0)).all() and (p.reference[2, 2] == 255).all()



def test_a_huge_or_non_image_upload_is_one_line_and_no_traceback(page_url, tmp_path, capfd):
    """Through the running page's own API (gradio_client, as the page's Paint button calls it): a 12000 x 12000
    PNG (a few KB, 9 GB decoded) is refused from its header by the loader predict uses, before anything decodes it;
    a text file is refused as no image; each is one line naming the file, and the server log has no traceback."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError
    from test_reliability import png_of_size

    big = png_of_size(tmp_path / "huge.png", 12000, 12000)
    text = tmp_path / "notes.png"
    text.write_text("not an image\n")
    client = Client(page_url, verbose=False)
    said = {}
    for path in (text, big):  # the first call also opens the client's queue connection
        t0 = time.monotonic()
        with pytest.raises(AppError) as e:
            client.predict(handle_file(str(path)), None, "red", api_name="/run")  # the source: gr.State, upload
        said[path.name] = (str(e.value), time.monotonic() - t0)
    assert said["huge.png"][0] == ("huge.png is too large: 12000 x 12000 px, limit 16777216 px "
                                   "(serving.max_pixels)"), said
    assert said["notes.png"][0].startswith("cannot decode image notes.png: ") and "/tmp/gradio" not in \
        said["notes.png"][0], said
    assert all("\n" not in m for m, _ in said.values()), said
    log = capfd.readouterr()
    assert "Traceback" not in log.err + log.out, log.err[-3000:]
    print(f"demo: huge upload refused {said['huge.png'][1]:.2f} s after the call, a text file "
          f"{said['notes.png'][1]:.2f} s")


def test_uploads_are_capped_same_origin_only_and_deleted_when_the_demo_stops(model, tmp_path):
    """Issue 28: an upload over the cap is refused (413) and a cross-origin one (403), neither stored; a
    same-origin upload is stored in the demo's own folder, which is gone once the demo stops."""
    import urllib.error
    import urllib.request
    import uuid

    def upload(url: str, data: bytes, origin: str | None) -> int:
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n"
                f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        if origin is not None:
            headers["Origin"] = origin
        req = urllib.request.Request(f"{url}gradio_api/upload", data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    png = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(png, format="PNG")
    with demo.upload_folder() as folder:
        app = demo.build_app(model, examples=[], model_label="tiny")
        demo.launch(app, port=0, block=False, max_upload_bytes=10_000)
        try:
            url = app.local_url
            assert upload(url, b"\0" * 20_000, None) == 413, "an upload over max_upload_bytes is refused"
            assert upload(url, png.getvalue(), "http://evil.example") == 403, "a cross-origin upload is refused"
            assert upload(url, png.getvalue(), url.rstrip("/")) == 200, "the page's own upload is taken"
            assert any(p.is_file() for p in folder.rglob("*")), "uploads go into the demo's own folder"
        finally:
            app.close()
    assert not folder.exists(), "the demo's uploads are deleted when it stops"
