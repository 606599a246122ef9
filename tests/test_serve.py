"""`mlflow models serve -m models:/polycolor@champion --env-manager local` answers a request on loopback."""

from __future__ import annotations

import base64
import io
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import log_evaluation
from PIL import Image
from services import running

from polycolor.config.serving import PromoteConfig
from polycolor.config.training import ModelConfig
from polycolor.nn import modelio
from polycolor.nn.model import ConditionalUNet
from polycolor.stack import free_port

STARTUP_TIMEOUT_S = 120  # importing mlflow + torch and loading the model on a busy 2-core machine
REQUEST_TIMEOUT_S = 30


def post_json(url: str, payload: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as resp:
        return json.loads(resp.read())


@pytest.fixture
def champion_store(tmp_path, monkeypatch) -> Path:
    """A sqlite store holding a training run, a packaged + registered tiny model, promoted to @champion."""
    import mlflow

    from polycolor.serving import package, registry
    from polycolor.tracking.store import configure, ensure_experiment

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    configure()
    with mlflow.start_run(experiment_id=ensure_experiment("polycolor-test")) as run:
        pass
    torch.manual_seed(0)
    model = ConditionalUNet(ModelConfig(widths=(4, 8)), ("red", "blue"), 32)
    with torch.no_grad():
        model.out.bias.fill_(50.0)  # the mask head paints every pixel: the answer's colour is checkable
    modelio.save_model(tmp_path / "model.pt", model, meta={})
    eval_json = log_evaluation(run.info.run_id, tmp_path, {"val": {"net": {"psnr_mean": 30.0}}})
    result = package.package_model(model_path=tmp_path / "model.pt", out_dir=tmp_path / "package",
                                   run_info={"run_id": run.info.run_id}, eval_path=eval_json, name="polycolor")
    decision = registry.promote("polycolor", PromoteConfig(gates=()), version=result.version)
    assert decision.decision == "promoted", decision
    return tmp_path


@contextmanager
def serving(store: Path) -> Iterator[str]:
    """`mlflow models serve` of the store's @champion on a free loopback port; yields its base URL, then stops it."""
    port = free_port()
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")  # MLflow execs `uvicorn`
    log = store / "serve.log"
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/polycolor@champion",
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    with running(cmd, f"http://127.0.0.1:{port}/ping", log, cwd=store, env=env, timeout=STARTUP_TIMEOUT_S):
        yield f"http://127.0.0.1:{port}"


@pytest.mark.slow
def test_serve_champion_answers_with_an_image_of_the_requested_colour(champion_store):
    with serving(champion_store) as url:
        outline = Image.new("RGB", (48, 40), "white")  # not the model's size: the answer keeps it
        outline.paste((0, 0, 0), (10, 10, 38, 12))
        buf = io.BytesIO()
        outline.save(buf, format="PNG")
        request = {"dataframe_split": {"columns": ["image", "colour"],
                                       "data": [[base64.b64encode(buf.getvalue()).decode(), "magenta"]]}}
        answer = post_json(f"{url}/invocations", request)
        net = post_json(f"{url}/invocations", request | {"params": {"painter": "net"}})  # the network's own output
    (row,) = answer["predictions"]
    with Image.open(io.BytesIO(base64.b64decode(net["predictions"][0]["image"]))) as im:
        assert (np.asarray(im.convert("RGB")) == (255, 0, 255)).all(), "the net alone paints every pixel"
    with Image.open(io.BytesIO(base64.b64decode(row["image"]))) as im:
        assert im.format == "PNG" and im.size == (48, 40), (im.format, im.size)
        pixels = np.asarray(im.convert("RGB")).reshape(-1, 3)
        stroke = np.asarray(im.convert("RGB"))[10:12, 10:38]
    assert {tuple(c) for c in np.unique(pixels, axis=0).tolist()} == {(255, 0, 255), (255, 255, 255)}
    assert (stroke == (255, 0, 255)).all(), "the stroke, at least, painted magenta"


def post_expecting_error(url: str, payload: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.slow
def test_serve_refuses_bad_rows_with_the_reason_and_no_traceback(champion_store):
    """A 5000 x 5000 PNG (a few KB, 25 Mpx > serving.max_pixels' default 16.7 Mpx) and bytes that are no image:
    HTTP 400 whose top-level `message` says why (MLflow prefixes it with the request), no server traceback."""
    big = io.BytesIO()
    Image.new("1", (5000, 5000), 1).save(big, format="PNG")
    rows = {"too large: 5000 x 5000 px, limit 16777216 px": base64.b64encode(big.getvalue()).decode(),
            "the base64 data is not a decodable image": base64.b64encode(b"plain text, not a PNG").decode()}
    with serving(champion_store) as url:
        answers = {reason: post_expecting_error(f"{url}/invocations", {"dataframe_split": {
            "columns": ["image", "colour"], "data": [[text, "red"]]}}) for reason, text in rows.items()}
    for reason, (status, body) in answers.items():
        assert status == 400, (status, body)
        assert body["error_code"] == "INVALID_PARAMETER_VALUE", body
        assert f"row 0: {reason}" in body["message"], body["message"]
        assert "stack_trace" not in body and "Traceback" not in json.dumps(body), body
        assert str(champion_store) not in json.dumps(body) and "polycolor-pyfunc-" not in json.dumps(body), body
