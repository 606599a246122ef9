"""The committed docs and metrics agree, and the committed evaluation of the default model says what the project
claims: its figures are the README's (polycolor report --check), it passes the default promotion gates, and the
full painter never scores below the network alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from polycolor import report
from polycolor.config import load_params
from polycolor.errors import PolycolorError
from polycolor.evaluation.logging import flat_metrics
from polycolor.serving.registry import gate_failures

REPO = Path(__file__).resolve().parents[1]
EVAL = json.loads((REPO / "metrics" / "eval.json").read_text())


def test_committed_pages_match_committed_metrics():
    stale = report.report(REPO, check=True)
    assert not stale, f"{stale} disagree with metrics/: run `polycolor report` and commit"
    readme = (REPO / "README.md").read_text()
    assert "<!-- report:results -->" in readme, "the README's results table is generated"


def test_the_committed_default_model_passes_the_default_gates():
    gates = load_params(REPO / "params.yaml").promote.gates
    assert gates, "the default promote section has gates"
    assert gate_failures(gates, flat_metrics(EVAL)) == []


@pytest.mark.parametrize("name", [k for k, v in EVAL.items() if "painted" in v and k != "behaviour"])
def test_post_processing_never_costs_quality(name):
    net, painted = EVAL[name]["net"], EVAL[name]["painted"]
    for key in ("psnr_mean", "psnr_min"):
        assert painted[key] >= net[key] - 1e-9, f"{name}: painted {key} {painted[key]} < net {net[key]}"


def test_render_replaces_only_marked_blocks(tmp_path):
    (tmp_path / "metrics").mkdir()
    metrics = {"val": {s: {"psnr_mean": 40.0, "psnr_min": 30.0, "iou": 0.99, "n": 4} for s in report.SCORERS},
               "ood": {"skipped": "evaluate.ood_samples is 0"}}
    (tmp_path / "metrics" / "eval.json").write_text(json.dumps(metrics))
    page = "intro\n<!-- report:results -->\nold\n<!-- /report:results -->\noutro 12.3 dB\n"
    out = report.render_page(page, tmp_path)
    assert out.startswith("intro\n<!-- report:results -->\n| set | n |") and out.endswith("outro 12.3 dB\n")
    assert "| `val` | 4 | 40 / 30 | 0.99 |" in out and "`ood` (evaluate.ood_samples is 0)" in out
    assert report.render_page(out, tmp_path) == out, "rendering is idempotent"
    with pytest.raises(PolycolorError, match="unknown report block"):
        report.render_page("<!-- report:nope -->\n<!-- /report:nope -->", tmp_path)
    with pytest.raises(PolycolorError, match="train.json not found"):
        report.render_page("<!-- report:train -->\n<!-- /report:train -->", tmp_path)


def test_capture_experiments_keeps_the_params_that_differ():
    def exp(name, lr, psnr):
        return {"name": name, "data": {"params": {"params.yaml": {"data": {"train": {"lr": lr, "epochs": 5}}}},
                                       "metrics": {report.HEADLINE_JSON: {"data": {"net": {"val": psnr}}}}}}

    show = [{"rev": "workspace", "data": {}, "experiments": [{"revs": [exp("a", 0.1, 40.0)]},
                                                             {"revs": [exp("b", 0.2, 41.0)]}]}]
    got = report.capture_experiments(["a", "b"], show)
    assert got["experiments"] == [{"name": "a", "params": {}, "metrics": {"net.val": 40.0}},
                                  {"name": "b", "params": {"train.lr": 0.2}, "metrics": {"net.val": 41.0}}]
    table = report.experiments_table(got)
    assert "| a | (the baseline) | 40 |" in table and "| b | `train.lr=0.2` | 41 |" in table
    with pytest.raises(PolycolorError, match="no experiment named c"):
        report.capture_experiments(["a", "c"], show)


def test_a_block_can_name_its_own_file(tmp_path):
    (tmp_path / "metrics").mkdir()
    got = {"experiments": [{"name": "main", "params": {}, "metrics": {"net.val": 70.0}}]}
    (tmp_path / "metrics" / "full.json").write_text(json.dumps(got))
    page = "<!-- report:experiments metrics/full.json -->\nold\n<!-- /report:experiments -->\n"
    out = report.render_page(page, tmp_path)
    assert "| main | (the baseline) | 70 |" in out and "from metrics/full.json -->" in out
    assert report.render_page(out, tmp_path) == out
    with pytest.raises(PolycolorError, match="other.json not found: run `polycolor report --experiments"):
        report.render_page(page.replace("full.json", "other.json"), tmp_path)


def test_tune_tables_show_every_trial_and_the_best_beside_the_defaults():
    def trial(n, lr, value, defaults=False, state="COMPLETE", error=None):
        return {"number": n, "experiment": f"t-{n}", "state": state, "params": {"train.lr": lr}, "value": value,
                "wall_s": 120.0, "error": error, "defaults": defaults,
                "metrics": {"net.val": value, "net.gappy": 30.0} if value else {}}

    tune = {"study": "t", "objective": "net.val", "direction": "maximize", "space": {"train.lr": "float[0.001, 0.01]"},
            "fixed": {"train.epochs": 2}, "sampler": "tpe", "seed": 0, "parallel": 2, "wall_s": 360.0, "best": 1,
            "trials": [trial(0, 0.003, 40.0, defaults=True), trial(1, 0.006, 45.5),
                       trial(2, 0.5, None, state="FAIL", error="error: train.lr too high")]}
    table = report.tune_table(tune)
    assert "| t-0 (defaults) | 0.003 | 40 | 2 | COMPLETE |" in table
    assert "| **t-1, best** | 0.006 | 45.5 | 2 | COMPLETE |" in table
    assert "| t-2 | 0.5 | - | 2 | FAIL: error: train.lr too high |" in table
    assert "every trial ran with `train.epochs=2`; the study's batches took 6 min" in table
    best = report.tune_best_table(tune)
    assert "| val net (`net.val`) | 40 | 45.5 | +5.5 |" in best and "| gappy net (`net.gappy`) | 30 | 30 | +0 |" in best
    assert "no comparison" in report.tune_best_table({**tune, "trials": tune["trials"][1:]})
