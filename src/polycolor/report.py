"""Figures in the docs that cannot go stale: the README's and docs' tables are rendered from the metrics files the
pipeline writes, between markers, by one command (`polycolor report`); `polycolor report --check` (and a test)
fails when a committed page disagrees with the committed metrics.

A marked block in a Markdown page:

    <!-- report:results -->
    ...generated, never edited by hand...
    <!-- /report:results -->

Blocks: `results` (every evaluation set: net / painted / flood fill PSNR mean / min and IoU, from eval.json),
`behaviour` (the behavioural shares of each painter), `train` (the training's figures, from train.json), and
`experiments` (queued experiments side by side on the net's headline figures, from experiments.json, which
`polycolor report --experiments NAME ...` captures from `dvc exp show --json`).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from polycolor.config import flatten
from polycolor.errors import PolycolorError
from polycolor.evaluation.behaviour import BEHAVIOURS
from polycolor.evaluation.names import BEHAVIOUR, SCORERS
from polycolor.fileio import atomic_output

PAGES = ("README.md", "docs/evaluation.md", "docs/experiments.md", "docs/performance.md")
EVAL_JSON = "metrics/eval.json"
TRAIN_JSON = "metrics/train.json"
EXPERIMENTS_JSON = "metrics/experiments.json"
HEADLINE_JSON = "metrics/headline.json"
BLOCK = re.compile(r"(<!-- report:(?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- /report:(?P=name) -->)", re.S)


def _f(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def _psnr(block: dict[str, Any]) -> str:
    return f"{_f(block.get('psnr_mean'))} / {_f(block.get('psnr_min'))}"


def results_table(metrics: dict[str, Any]) -> str:
    """Every scored set: n, then per scorer PSNR mean / min (dB) and IoU."""
    head = ("| set | n | net mean / min | net IoU | painted mean / min | painted IoU | flood fill mean / min "
            "| flood fill IoU |")
    lines = [head, "|" + " --- |" * 8]
    for name, block in metrics.items():
        if name == BEHAVIOUR or "net" not in block:
            continue
        cells = [f"`{name}`", _f(block["net"].get("n"))]
        for scorer in SCORERS:
            cells += [_psnr(block[scorer]), _f(block[scorer].get("iou"))]
        lines.append("| " + " | ".join(cells) + " |")
    skipped = [f"`{k}` ({v['skipped']})" for k, v in metrics.items() if "skipped" in v]
    if skipped:
        lines += ["", "Not scored: " + "; ".join(skipped) + "."]
    return "\n".join(lines)


def behaviour_table(metrics: dict[str, Any]) -> str:
    """The behavioural shares: mean agreement (share of samples exact) per painter."""
    b = metrics.get(BEHAVIOUR, {})
    if "net" not in b:
        return "(no behavioural shares: evaluate.behaviour_samples is 0)"
    lines = ["| behaviour | net | painted | flood fill |", "| --- | --- | --- | --- |"]
    for k in BEHAVIOURS:
        lines.append(f"| {k} | " + " | ".join(f"{_f(b[s][k])} ({_f(b[s][k + '_exact'], 3)} exact)"
                                               for s in SCORERS) + " |")
    lines.append(f"\nMeasured on {b['net']['n']} validation samples.")
    return "\n".join(lines)


def train_table(train: dict[str, Any]) -> str:
    keys = ("epochs", "best_val_loss", "images_per_s", "train_wall_s", "peak_rss_mb", "parameters")
    return "| " + " | ".join(keys) + " |\n|" + " --- |" * len(keys) + "\n| " + " | ".join(
        _f(train.get(k)) for k in keys) + " |"


def experiments_table(experiments: dict[str, Any]) -> str:
    """Queued experiments side by side: the params in which each differs from the baseline (the first), then the
    net's figures and the painter's on gappy outlines."""
    rows = experiments.get("experiments", [])
    if not rows:
        return "(no experiments captured: `polycolor report --experiments NAME ...`)"
    figures = [("net.val", "val net"), ("net.val_min", "val net min"), ("net.gappy", "gappy net"),
               ("net.gappy_min", "gappy net min"), ("net.ayna", "Ayna net"), ("colour_acc", "colour acc."),
               ("behaviour", "behaviour"), ("painted.gappy", "gappy painted")]
    lines = ["| experiment | params | " + " | ".join(t for _, t in figures) + " |",
             "|" + " --- |" * (len(figures) + 2)]
    for row in rows:
        changed = ", ".join(f"`{k}={v}`" for k, v in row["params"].items()) or "(the baseline)"
        lines.append(f"| {row['name']} | {changed} | " + " | ".join(_f(row["metrics"].get(k)) for k, _ in figures)
                     + " |")
    return "\n".join(lines)


def capture_experiments(names: Iterable[str], show: dict | list) -> dict[str, Any]:
    """From `dvc exp show --json` output: each named experiment's headline figures and the params in which it
    differs from the first named one (the baseline)."""
    names = list(names)
    found: dict[str, dict[str, Any]] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("name") in names and isinstance(node.get("data"), dict):
                data = node["data"]
                params = flatten((data.get("params") or {}).get("params.yaml", {}).get("data", {}))
                metrics = flatten((data.get("metrics") or {}).get(HEADLINE_JSON, {}).get("data", {}))
                found[node["name"]] = {"params": params, "metrics": metrics}
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(show)
    missing = [n for n in names if n not in found]
    if missing:
        raise PolycolorError(f"no experiment named {', '.join(missing)} in `dvc exp show` (see `dvc exp list`)")
    base = found[names[0]]["params"]
    return {"source": "dvc exp show --json", "baseline": names[0], "experiments": [
        {"name": n, "params": {k: v for k, v in sorted(found[n]["params"].items()) if base.get(k) != v},
         "metrics": found[n]["metrics"]} for n in names]}


HOW_TO_MAKE = {EXPERIMENTS_JSON: "`polycolor report --experiments NAME ...`"}  # else the pipeline writes it
RENDERERS: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
    "results": (EVAL_JSON, results_table),
    "behaviour": (EVAL_JSON, behaviour_table),
    "train": (TRAIN_JSON, train_table),
    "experiments": (EXPERIMENTS_JSON, experiments_table),
}


def render_page(text: str, root: Path) -> str:
    """`text` with every marked block re-rendered from the metrics files under `root`."""
    cache: dict[str, dict[str, Any]] = {}

    def load(rel: str) -> dict[str, Any]:
        if rel not in cache:
            try:
                cache[rel] = json.loads((root / rel).read_text())
            except FileNotFoundError:
                how = HOW_TO_MAKE.get(rel, "the pipeline (make repro)")
                raise PolycolorError(f"{rel} not found: run {how} first") from None
        return cache[rel]

    def block(m: re.Match) -> str:
        name = m.group("name")
        if name not in RENDERERS:
            raise PolycolorError(f"unknown report block {name!r} (known: {', '.join(RENDERERS)})")
        source, render = RENDERERS[name]
        stamp = f"<!-- generated by `polycolor report` from {source} -->"
        return f"{m.group(1)}{render(load(source))}\n{stamp}\n{m.group(4)}"

    return BLOCK.sub(block, text)


def report(root: Path, check: bool = False) -> list[str]:
    """Render every page's blocks; with `check`, write nothing. Every page is rendered before any is written, so
    a missing metrics file changes no page. Returns the pages that changed (or would)."""
    rendered = {}
    for rel in PAGES:
        page = root / rel
        if page.is_file():
            text = page.read_text()
            rendered[rel] = (text, render_page(text, root))
    stale = [rel for rel, (old, new) in rendered.items() if new != old]
    if not check:
        for rel in stale:
            _write(root / rel, rendered[rel][1])
    return stale


def main_experiments(root: Path, names: list[str]) -> Path:
    """Capture the named experiments from `dvc exp show --json` into metrics/experiments.json."""
    p = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=root, capture_output=True,
                       text=True)
    if p.returncode != 0:
        raise PolycolorError(f"dvc exp show failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
    out = root / EXPERIMENTS_JSON
    _write(out, json.dumps(capture_experiments(names, json.loads(p.stdout)), indent=2) + "\n")
    return out


def _write(path: Path, text: str) -> None:
    with atomic_output(path) as tmp:
        Path(tmp).write_text(text)
