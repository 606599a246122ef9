"""The committed docs and metrics agree, and the committed evaluation of the default model says what the project
claims: its figures are the README's (polycolor report --check against HEAD), it passes the default promotion gates,
and where the post-processing changes the network's output it never scores below it.

Everything here reads the files as committed (`git show HEAD:...`), never the workspace: a `make repro` on another
machine rewrites metrics/ with that machine's figures, and `make test` after it must still pass."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from polycolor import report
from polycolor.config.params import parse_config
from polycolor.errors import PolycolorError
from polycolor.evaluation.logging import flat_metrics
from polycolor.serving.registry import gate_failures

REPO = Path(__file__).resolve().parents[1]
try:
    COMMITTED: report.Reader | None = report.git_reader(REPO, "HEAD")
except PolycolorError:
    COMMITTED = None  # a source tree without git history: nothing committed to check
needs_git = pytest.mark.skipif(COMMITTED is None, reason=f"{REPO} is not a git checkout: no committed files to check")
EVAL = json.loads(COMMITTED(report.EVAL_JSON)) if COMMITTED else {}


def _post_processed(eval_json: dict) -> list[str]:
    """The sets on which the painter's PSNR differs from the network's (elsewhere the painter is the network, and
    painted >= net holds by construction)."""
    return [k for k, v in report.scored_sets(eval_json).items()
            if any(v["painted"][key] != v["net"][key] for key in ("psnr_mean", "psnr_min"))]


@needs_git
def test_committed_pages_match_committed_metrics():
    stale = report.report(REPO, check=True, rev="HEAD")
    assert not stale, f"{stale} disagree with metrics/ at HEAD: run `polycolor report` and commit both"
    assert "<!-- report:results -->" in COMMITTED("README.md"), "the README's results table is generated"
    assert "<!-- report:targets -->" in COMMITTED("docs/performance.md"), "performance.md's figures are generated"


def test_the_check_reads_commits_not_the_workspace(tmp_path, tmp_path_factory):
    """A page and metrics committed together pass; a workspace whose metrics a repro changed does not change it."""
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "train.json").write_text(json.dumps({"epochs": 5}))
    (tmp_path / "README.md").write_text("<!-- report:train -->\n<!-- /report:train -->\n")
    report.report(tmp_path)
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "pages and metrics")
    (tmp_path / "metrics" / "train.json").write_text(json.dumps({"epochs": 7}))  # another machine's repro
    assert report.report(tmp_path, check=True) == ["README.md"], "the workspace check sees the change"
    assert report.report(tmp_path, check=True, rev="HEAD") == [], "the committed check does not"
    with pytest.raises(PolycolorError, match="not a git checkout"):
        report.git_reader(tmp_path_factory.mktemp("no_git"), "HEAD")


@needs_git
def test_the_committed_default_model_passes_the_default_gates():
    # Only the committed promote section: the rest of params.yaml may be ahead of or behind this checkout's config.
    gates = parse_config({"promote": yaml.safe_load(COMMITTED("params.yaml"))["promote"]}).promote.gates
    assert gates, "the default promote section has gates"
    assert gate_failures(gates, flat_metrics(EVAL)) == []


@pytest.mark.parametrize("name", list(report.scored_sets(EVAL)) if COMMITTED else [pytest.param("-", marks=needs_git)])
def test_the_painter_is_the_better_of_net_and_flood_fill(name):
    # The painter is at least the better of the net and the flood fill, within PAINTER_SLACK_DB, mean and min: a
    # post-processing step that costs quality on any set of the committed evaluation fails here.
    from polycolor.report import PAINTER_SLACK_DB

    for key in ("psnr_mean", "psnr_min"):
        best = max(EVAL[name]["net"][key], EVAL[name].get("flood_fill", {}).get(key, float("-inf")))
        painted = EVAL[name]["painted"][key]
        assert painted >= best - PAINTER_SLACK_DB, f"{name}: painted {key} {painted} < {best} - {PAINTER_SLACK_DB}"


def test_post_processed_sets_are_those_the_painter_changed():
    def block(net, painted):
        return {"net": {"psnr_mean": net, "psnr_min": net, "n": 2}, "painted": {"psnr_mean": painted,
                                                                                "psnr_min": painted, "n": 2}}

    got = _post_processed({"same": block(30.0, 30.0), "worse": block(30.0, 20.0), "better": block(30.0, 40.0),
                           "behaviour": {"net": {"n": 32, "rot_flip": 1.0}}})
    assert got == ["worse", "better"]


def test_targets_say_met_from_the_figures():
    def scored(net, painted=None, flood=None):
        return {"net": {**net, "n": 4}, "painted": painted or net, "flood_fill": flood or net}

    good = {"psnr_mean": 45.0, "psnr_min": 32.0, "iou": 0.995, "colour_accuracy": 1.0}
    evaluation = {"some_set": scored(good), "ayna_real": scored(good),  # 32 dB min: below the real pairs' 35
                  "closed": scored(good, flood={**good, "psnr_mean": 100.0}),  # the painter misses the flood fill
                  "skipped_set": {"skipped": "evaluate.x is 0"},
                  "behaviour": {"net": {"rot_flip": 0.98, "colour_change": 1.0, "all_white": 1.0, "shift": 1.0}}}
    bench = {"infer_ms_p50": 10.25, "infer_ms_p95": 11.0, "conv_ceiling_ratio": 0.85, "conv_ceiling_gflops": 50.0,
             "conv_train_gflop_per_image": 4.0, "train_images_per_s": 10.6, "matmul_gflops": 201.0,
             "date": "2030-01-02", "cpu": "Some CPU, AVX2"}
    rows = {ln.split(" | ")[0].lstrip("| "): ln.rsplit(" | ", 1)[1].rstrip(" |")
            for ln in report.targets_table(bench, {"peak_rss_mb": 3500.0}, evaluation).splitlines()
            if ln.startswith("| ") and " | " in ln}
    assert rows["`some_set`: net mean / min dB, IoU, colour accuracy"] == "yes"
    assert rows["`ayna_real`: net mean / min dB, IoU, colour accuracy"] == "**no**"
    assert rows["`skipped_set` (not scored)"] == "-"
    assert rows["painter vs the better of net and flood fill, every set"] == "**no**"
    assert rows["behavioural shares of the net"] == "**no**"
    assert rows["inference p50, batch 1, 128 px"] == "**no**", "10.25 ms misses a 10 ms target"
    assert rows["training peak RSS"] == "**no**"
    assert rows["training throughput / conv ceiling"] == "yes"
    assert rows["whole `make repro`"] == "not measured"
    table = report.targets_table({**bench, "stage_wall_s": {"total": 470.0}}, {}, evaluation)
    assert "| whole `make repro` | <= 8 min | 7.8 min (`polycolor bench --repro`) | yes |" in table
    assert "2030-01-02 on Some CPU, AVX2" in table and "matmul 201 GFLOP/s" in table


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
                "metrics": {"net.val": value, "net.worst": 30.0} if value else {}}

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
    assert "| val net (`net.val`) | 40 | 45.5 | +5.5 |" in best and "| worst set net (`net.worst`) | 30 | 30 | +0 |" in best
    assert "no comparison" in report.tune_best_table({**tune, "trials": tune["trials"][1:]})


def test_the_seed_spread_is_the_sample_sd_of_each_figure():
    runs = {"experiments": [{"name": f"s{i}", "params": {"train.seed": i} if i else {},
                             "metrics": {"net.val": v, "net.worst": w}}
                            for i, (v, w) in enumerate(((60.0, 30.0), (62.0, 31.0), (64.0, 35.0)))]}
    table = report.seeds_table(runs)
    assert "| `net.val` | 60 | 62 | 64 | 62 +- 2 | 4 |" in table, table
    assert "| `net.worst` | 30 | 31 | 35 | 32 +- 2.65 | 5 |" in table, table
    assert "fewer than two" in report.seeds_table({"experiments": runs["experiments"][:1]})


def test_a_baseline_commit_is_found_by_its_hash():
    show = [{"rev": "abc1234def", "name": None, "data": {"params": {"params.yaml": {"data": {"train": {"seed": 0}}}},
                                                      "metrics": {"metrics/headline.json": {"data": {"net": {"val": 50.0}}}}},
             "experiments": [{"revs": [{"rev": "99", "name": "s1", "data": {
                 "params": {"params.yaml": {"data": {"train": {"seed": 1}}}},
                 "metrics": {"metrics/headline.json": {"data": {"net": {"val": 52.0}}}}}}]}]}]
    got = report.capture_experiments(["abc1234", "s1"], show)
    assert [e["name"] for e in got["experiments"]] == ["abc1234", "s1"]
    assert got["experiments"][1] == {"name": "s1", "params": {"train.seed": 1}, "metrics": {"net.val": 52.0}}
    with pytest.raises(PolycolorError, match="no experiment named abc12"):
        report.capture_experiments(["abc12"], show)  # too short to be a hash
