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
`polycolor report --experiments NAME ...` captures from `dvc exp show --json`), `tune` (every trial of the last
`polycolor tune` study, from tune.json), `seeds` (runs that differ only in their seed: mean +- sd of each
headline figure, from seeds.json, captured like experiments.json), `tune_best` (its best trial beside the defaults
trial on the headline figures), `monitoring` (the figures of `polycolor bench --monitor` against their targets, from
monitoring.json) and `targets` (each target of docs/performance.md against its figure, "met" computed, from benchmark.json,
train.json and eval.json, with the date, CPU and matmul rate of the bench run beside it).

`polycolor report --check` compares the workspace's pages with the workspace's metrics; the test suite compares the
committed pages with the committed metrics (`report(..., rev="HEAD")`), which a `make repro` on another machine does
not change.

A block may name its own metrics file after the block name, for a second capture of the same kind:

    <!-- report:experiments metrics/tune_full.json -->
    ...
    <!-- /report:experiments -->
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from polycolor.config.base import flatten
from polycolor.errors import PolycolorError
from polycolor.evaluation.behaviour import BEHAVIOURS
from polycolor.evaluation.names import BEHAVIOUR, SCORERS
from polycolor.fileio import atomic_output

PAGES = ("README.md", "docs/evaluation.md", "docs/experiments.md", "docs/performance.md", "docs/monitoring.md")
EVAL_JSON = "metrics/eval.json"
TRAIN_JSON = "metrics/train.json"
EXPERIMENTS_JSON = "metrics/experiments.json"
HEADLINE_JSON = "metrics/headline.json"
TUNE_JSON = "metrics/tune.json"
BENCH_JSON = "metrics/benchmark.json"
BLOCK = re.compile(r"(<!-- report:(?P<name>[a-z_]+)(?: (?P<source>metrics/[\w.-]+\.json))? -->\n)(?P<body>.*?)"
                   r"(<!-- /report:(?P=name) -->)", re.S)
# The headline figures experiments are compared on: metrics/headline.json key -> column title
FIGURES = (("net.val", "val net"), ("net.val_min", "val net min"), ("net.worst", "worst set net"),
           ("net.worst_min", "worst set net min"), ("net.ayna", "Ayna net"), ("colour_acc", "colour acc."),
           ("behaviour", "behaviour"), ("painted.worst", "worst set painted"))


def _f(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def _assignments(values: dict[str, Any]) -> str:
    """`key=value`, ... as the tables name params."""
    return ", ".join(f"`{k}={v}`" for k, v in values.items())


def _psnr(block: dict[str, Any]) -> str:
    return f"{_f(block.get('psnr_mean'))} / {_f(block.get('psnr_min'))}"


def scored_sets(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The evaluation sets of eval.json, whatever their names: the blocks whose net was scored on n images (not the
    behavioural shares, a skipped set or a summary over sets)."""
    return {k: v for k, v in metrics.items() if isinstance(v, dict) and {"n", "psnr_mean"} <= set(v.get("net", {}))}


def results_table(metrics: dict[str, Any]) -> str:
    """Every scored set: n, then per scorer PSNR mean / min (dB) and IoU."""
    head = ("| set | n | net mean / min | net IoU | painted mean / min | painted IoU | flood fill mean / min "
            "| flood fill IoU |")
    lines = [head, "|" + " --- |" * 8]
    for name, block in scored_sets(metrics).items():
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
    lines = ["| experiment | params | " + " | ".join(t for _, t in FIGURES) + " |",
             "|" + " --- |" * (len(FIGURES) + 2)]
    for row in rows:
        changed = _assignments(row["params"]) or "(the baseline)"
        lines.append(f"| {row['name']} | {changed} | " + " | ".join(_f(row["metrics"].get(k)) for k, _ in FIGURES)
                     + " |")
    return "\n".join(lines)


def seeds_table(experiments: dict[str, Any]) -> str:
    """The spread between runs that differ only in their seed: mean +- sample sd of every headline figure over the
    captured experiments (`polycolor report --experiments s0 s1 s2 --into metrics/seeds.json`), and the largest
    gap between two of them. A difference between two models smaller than about 2 sd is not told from luck."""
    rows = experiments.get("experiments", [])
    if len(rows) < 2:
        return "(fewer than two runs captured: `polycolor report --experiments NAME NAME ... --into FILE`)"
    keys = sorted({k for r in rows for k in r["metrics"]})
    lines = ["| figure | " + " | ".join(r["name"] for r in rows) + " | mean +- sd | max - min |",
             "|" + " --- |" * (len(rows) + 3)]
    for k in keys:
        vals = [r["metrics"].get(k) for r in rows]
        nums = [v for v in vals if isinstance(v, (int, float))]
        mean = sum(nums) / len(nums) if nums else None
        sd = (sum((v - mean) ** 2 for v in nums) / (len(nums) - 1)) ** 0.5 if len(nums) > 1 else None
        spread = f"{_f(mean)} +- {_f(sd, 3)}" if sd is not None else "-"
        gap = _f(max(nums) - min(nums), 3) if len(nums) > 1 else "-"
        lines.append(f"| `{k}` | " + " | ".join(_f(v) for v in vals) + f" | {spread} | {gap} |")
    seeds = "; ".join(f"{r['name']}: {_assignments(r['params']) or '(the baseline)'}" for r in rows)
    lines += ["", f"Runs: {seeds}."]
    return "\n".join(lines)


def tune_table(tune: dict[str, Any]) -> str:
    """Every trial of the study: its params, objective, wall time and state; the best in bold."""
    trials = tune.get("trials", [])
    if not trials:
        return "(no trials yet: `polycolor tune`)"
    keys = list(tune.get("space", {}))
    lines = [f"| trial | {' | '.join(f'`{k}`' for k in keys)} | {tune['objective']} | wall (min) | state |",
             "|" + " --- |" * (len(keys) + 4)]
    for t in trials:
        name = f"{t['experiment']}" + (" (defaults)" if t.get("defaults") else "")
        if t["number"] == tune.get("best"):
            name = f"**{name}, best**"
        wall = _f(t["wall_s"] / 60, 3) if t.get("wall_s") is not None else "-"
        state = t["state"] if not t.get("error") else f"{t['state']}: {t['error']}"
        lines.append(f"| {name} | " + " | ".join(_f(t["params"].get(k), 3) for k in keys)
                     + f" | {_f(t.get('value'))} | {wall} | {state} |")
    fixed = _assignments(tune.get("fixed", {}))
    lines += ["", f"{len(trials)} trials, {tune.get('parallel')} per batch, {tune.get('sampler')} sampler (seed "
                  f"{tune.get('seed')}), {tune['direction']} `{tune['objective']}`"
                  + (f"; every trial ran with {fixed}" if fixed else "")
                  + f"; the study's batches took {_f(tune.get('wall_s', 0) / 60, 3)} min."]
    return "\n".join(lines)


def tune_best_table(tune: dict[str, Any]) -> str:
    """The study's best trial beside its defaults trial (params.yaml's values at the same budget), figure by
    figure."""
    trials = {t["number"]: t for t in tune.get("trials", [])}
    best = trials.get(tune.get("best"))
    base = next((t for t in trials.values() if t.get("defaults")), None)
    if best is None or base is None or not base.get("metrics"):
        return "(no comparison: the study needs a complete best trial and a complete defaults trial)"
    lines = [f"| figure | defaults ({base['experiment']}) | best ({best['experiment']}) | best - defaults |",
             "| --- | --- | --- | --- |"]
    for key, title in FIGURES:
        a, b = base["metrics"].get(key), best["metrics"].get(key)
        diff = f"{b - a:+.4g}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) else "-"
        lines.append(f"| {title} (`{key}`) | {_f(a)} | {_f(b)} | {diff} |")
    fixed = _assignments(tune.get("fixed", {}))
    lines += ["", f"Study `{tune['study']}`: {len(trials)} trials, {tune['direction']} `{tune['objective']}`"
                  + (f", every trial with {fixed}" if fixed else "") + "."]
    return "\n".join(lines)


# The targets of docs/performance.md: the network on every evaluation set (a set may be stricter), the painter
# against the better of the network and the flood fill, the behavioural shares, the repro, inference and training.
SET_TARGET = {"psnr_mean": 40.0, "psnr_min": 30.0, "iou": 0.99, "colour_accuracy": 1.0}  # at least, net
SET_TARGETS = {"ayna_real": {**SET_TARGET, "psnr_min": 35.0}}  # the real validation pairs: min 35 dB
PAINTER_SLACK_DB = 0.1  # painted >= max(net, flood fill) - this, mean and min, on every set
REPRO_S_TARGET = 8 * 60  # whole `make repro`, at most
P50_MS_TARGET = 10.0  # paint one 128 px image at batch 1, at most
RSS_MB_TARGET = 3 * 1024  # peak RSS of training, at most
CONV_SHARE_TARGET = 0.8  # training throughput as a share of the convolution ceiling, at least


def _met(ok: bool | None) -> str:
    return "not measured" if ok is None else "yes" if ok else "**no**"


def _set_row(name: str, net: dict[str, Any]) -> str:
    target = SET_TARGETS.get(name, SET_TARGET)
    ok = all(net.get(k, float("-inf")) >= v for k, v in target.items())
    want = (f">= {_f(target['psnr_mean'])} / {_f(target['psnr_min'])}, IoU >= {_f(target['iou'])}, colour "
            f"{_f(target['colour_accuracy'])}")
    got = f"{_psnr(net)}, IoU {_f(net.get('iou'))}, colour {_f(net.get('colour_accuracy'), 3)}"
    return f"| `{name}`: net mean / min dB, IoU, colour accuracy | {want} | {got} | {_met(ok)} |"


def _painter_row(sets: dict[str, dict[str, Any]]) -> str:
    short = []
    for name, block in sets.items():
        for key in ("psnr_mean", "psnr_min"):
            better = max(block["net"][key], block["flood_fill"][key])
            if block["painted"][key] < better - PAINTER_SLACK_DB:
                short.append(f"`{name}` {key.removeprefix('psnr_')} {_f(block['painted'][key])} < {_f(better)}")
    return (f"| painter vs the better of net and flood fill, every set | >= it - {PAINTER_SLACK_DB} dB, mean and "
            f"min | {'; '.join(short) or 'none below'} | {_met(not short)} |")


def targets_table(bench: dict[str, Any], train: dict[str, Any], evaluation: dict[str, Any]) -> str:
    """Each target beside its figure and whether the figure meets it; speed figures dated with the bench run's
    machine and matmul rate."""
    sets = scored_sets(evaluation)
    lines = ["| target | wanted | figure | met |", "| --- | --- | --- | --- |"]
    lines += [_set_row(name, block["net"]) for name, block in sets.items()]
    lines += [f"| `{k}` (not scored) | | {v['skipped']} | - |" for k, v in evaluation.items()
              if isinstance(v, dict) and "skipped" in v]
    lines.append(_painter_row({k: v for k, v in sets.items() if all(s in v for s in SCORERS)}))
    shares = evaluation.get(BEHAVIOUR, {}).get("net")
    if shares:
        got = ", ".join(f"{k} {_f(shares[k])}" for k in BEHAVIOURS)
        met = _met(all(shares[k] >= 1 for k in BEHAVIOURS))
        lines.append(f"| behavioural shares of the net | 1 each | {got} | {met} |")
    repro = bench.get("stage_wall_s", {}).get("total")
    lines.append(f"| whole `make repro` | <= {REPRO_S_TARGET // 60} min | "
                 + (f"{repro / 60:.1f} min (`polycolor bench --repro`)" if repro else "not in benchmark.json "
                    "(`polycolor bench --repro`)") + f" | {_met(None if repro is None else repro <= REPRO_S_TARGET)} |")
    p50 = bench.get("infer_ms_p50")
    sizes = ", ".join(f"{k.removeprefix('infer_ms_p50_')} {_f(v, 3)} ms" for k, v in bench.items()
                      if k.startswith("infer_ms_p50_"))
    met = _met(None if p50 is None else p50 <= P50_MS_TARGET)
    lines.append(f"| inference p50, batch 1, 128 px | <= {_f(P50_MS_TARGET)} ms | {_f(p50, 3)} ms (p95 "
                 f"{_f(bench.get('infer_ms_p95'), 3)}; {sizes}) | {met} |")
    rss = train.get("peak_rss_mb")
    lines.append(f"| training peak RSS | <= {RSS_MB_TARGET:,} MB | {_f(rss)} MB | "
                 f"{_met(None if rss is None else rss <= RSS_MB_TARGET)} |")
    share = bench.get("conv_ceiling_ratio")
    conv = (f"{_f(share, 3)} ({_f(bench.get('conv_train_gflop_per_image'), 3)} GFLOP/image x "
            f"{_f(bench.get('train_images_per_s'), 3)} images/s / {_f(bench.get('conv_ceiling_gflops'), 3)} GFLOP/s)"
            if share is not None else "not in benchmark.json (a `polycolor bench` before the conv ceiling)")
    lines.append(f"| training throughput / conv ceiling | >= {CONV_SHARE_TARGET} | {conv} | "
                 f"{_met(None if share is None else share >= CONV_SHARE_TARGET)} |")
    lines.append(f"| training throughput / matmul rate | (reported) | {_f(bench.get('train_ceiling_ratio'), 3)} | - |")
    lines.append(f"| training in the pipeline | (reported) | {_f(train.get('images_per_s'), 3)} images/s, "
                 f"{_f(train.get('train_wall_s'))} s | - |")
    rates = ", ".join(f"{k} {_f(v, 3)}" for k, v in bench.get("infer_images_per_s", {}).items())
    lines.append(f"| paint throughput, images/s by batch | (reported) | {rates} | - |")
    lines.append(f"| parameters / model file | (reported) | {_f(bench.get('parameters'))} / "
                 f"{_f(bench.get('model_file_mb'), 3)} MB | - |")
    lines += ["", f"Speed figures: `polycolor bench` of {bench.get('date', 'an undated run')} on "
                  f"{bench.get('cpu', 'an unnamed CPU')}, {bench.get('cpu_count')} cores, torch {bench.get('torch')}, "
                  f"{bench.get('torch_threads')} threads, matmul {_f(bench.get('matmul_gflops'), 3)} GFLOP/s. Quality "
                  f"from eval.json (the network's own figures), training from train.json."]
    return "\n".join(lines)


def capture_experiments(names: Iterable[str], show: dict | list) -> dict[str, Any]:
    """From `dvc exp show --json` output: each named experiment's headline figures and the params in which it
    differs from the first named one (the baseline). A name is an experiment's or a branch's name, or a commit's
    hash (7 or more hex digits: a baseline that is no branch head, as experiments queued before later commits
    have)."""
    names = list(names)
    found: dict[str, dict[str, Any]] = {}

    def named(node: dict) -> str | None:
        if node.get("name") in names:
            return node["name"]
        rev = str(node.get("rev") or "")
        return next((n for n in names if re.fullmatch(r"[0-9a-f]{7,40}", n) and rev.startswith(n)), None)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            name = named(node)
            if name is not None and isinstance(node.get("data"), dict) and name not in found:
                data = node["data"]
                params = flatten((data.get("params") or {}).get("params.yaml", {}).get("data", {}))
                metrics = flatten((data.get("metrics") or {}).get(HEADLINE_JSON, {}).get("data", {}))
                found[name] = {"params": params, "metrics": metrics}
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


MONITORING_JSON = "metrics/monitoring.json"
LOG_P95_MS_TARGET = 2.0  # the prediction log adds at most this at p95 per image to serving
MONITOR_S_TARGET = 30.0  # `polycolor monitor` over 10,000 logged predictions, at most


def monitoring_table(m: dict[str, Any]) -> str:
    """The monitoring figures of `polycolor bench --monitor` against their targets."""
    s, mon, clean = m["serving"], m["monitor_10k"], m["clean_windows"]
    rows = ["| figure | measured | target | met |", "| --- | --- | --- | --- |",
            f"| serving p95 per image, log off / on (ms; {s['requests']} requests) | {_f(s['off']['p95_ms'], 3)} / "
            f"{_f(s['on']['p95_ms'], 3)} | - | - |",
            f"| added by the log at p95 (ms) | {_f(s['added_p95_ms'], 3)} | <= {LOG_P95_MS_TARGET:g} | "
            f"{_met(s['added_p95_ms'] <= LOG_P95_MS_TARGET)} |",
            f"| `polycolor monitor` over {mon['records']:,} predictions (s) | {_f(mon['seconds'], 3)} | "
            f"<= {MONITOR_S_TARGET:g} | {_met(mon['seconds'] <= MONITOR_S_TARGET)} |",
            f"| alarms in {clean['windows']} windows of training-like traffic | {clean['alarms']} (largest drift "
            f"{_f(clean['max_drift'], 3)}) | 0 | {_met(clean['alarms'] == 0)} |"]
    for kind, f in m["shifts"].items():
        found = ", ".join(f"{c} {_f(v, 3)}" for c, v in f["scores"].items()) or "nothing drifted"
        rows.append(f"| 200 `{kind}` in a window of 500 | {'alarm' if f['alarm'] else 'no alarm'} ({found}) | "
                    f"alarm | {_met(f['alarm'])} |")
    return "\n".join(rows)


HOW_TO_MAKE = {EXPERIMENTS_JSON: "`polycolor report --experiments NAME ...`",  # else the pipeline writes it
               TUNE_JSON: "`polycolor tune`", BENCH_JSON: "`polycolor bench`",
               MONITORING_JSON: "`polycolor bench --monitor`"}
# block name -> (the metrics files it reads, the renderer taking their contents in that order); a one-file block
# may name another file of the same kind in its marker
RENDERERS: dict[str, tuple[tuple[str, ...], Callable[..., str]]] = {
    "results": ((EVAL_JSON,), results_table),
    "behaviour": ((EVAL_JSON,), behaviour_table),
    "train": ((TRAIN_JSON,), train_table),
    "experiments": ((EXPERIMENTS_JSON,), experiments_table),
    "seeds": (("metrics/seeds.json",), seeds_table),
    "tune": ((TUNE_JSON,), tune_table),
    "tune_best": ((TUNE_JSON,), tune_best_table),
    "targets": ((BENCH_JSON, TRAIN_JSON, EVAL_JSON), targets_table),
    "monitoring": ((MONITORING_JSON,), monitoring_table),
}
Reader = Callable[[str], str]  # a repo-relative path -> its text; FileNotFoundError when there is none


def workspace_reader(root: Path) -> Reader:
    return lambda rel: (root / rel).read_text()


def git_reader(root: Path, rev: str) -> Reader:
    """Files as committed at `rev` (e.g. HEAD), not as the workspace has them."""
    inside = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=root,
                            capture_output=True, text=True)
    if inside.returncode != 0:
        raise PolycolorError(f"{root} is not a git checkout with a commit {rev!r}")

    def read(rel: str) -> str:
        p = subprocess.run(["git", "show", f"{rev}:{rel}"], cwd=root, capture_output=True, text=True)
        if p.returncode != 0:
            raise FileNotFoundError(rel)
        return p.stdout

    return read


def render_page(text: str, root: Path, read: Reader | None = None) -> str:
    """`text` with every marked block re-rendered from the metrics files that `read` gives (by default those under
    `root`)."""
    read = read or workspace_reader(root)
    known = {r for sources, _ in RENDERERS.values() for r in sources}
    cache: dict[str, dict[str, Any]] = {}

    def load(rel: str) -> dict[str, Any]:
        if rel not in cache:
            try:
                cache[rel] = json.loads(read(rel))
            except FileNotFoundError:
                how = HOW_TO_MAKE.get(rel, "the pipeline (make repro)" if rel in known
                                      else f"`polycolor report --experiments NAME ... --into {rel}`")
                raise PolycolorError(f"{rel} not found: run {how} first") from None
        return cache[rel]

    def block(m: re.Match) -> str:
        name = m.group("name")
        if name not in RENDERERS:
            raise PolycolorError(f"unknown report block {name!r} (known: {', '.join(RENDERERS)})")
        sources, render = RENDERERS[name]
        if m.group("source"):
            if len(sources) != 1:
                raise PolycolorError(f"report block {name!r} reads {', '.join(sources)}: it cannot name a file")
            sources = (m.group("source"),)
        stamp = f"<!-- generated by `polycolor report` from {', '.join(sources)} -->"
        return f"{m.group(1)}{render(*(load(s) for s in sources))}\n{stamp}\n{m.group(5)}"

    return BLOCK.sub(block, text)


def report(root: Path, check: bool = False, rev: str | None = None) -> list[str]:
    """Render every page's blocks; with `check`, write nothing. With `rev` (check only), the pages and the metrics
    are both read as committed at that revision. Every page is rendered before any is written, so a missing
    metrics file changes no page. Returns the pages that changed (or would)."""
    if rev is not None and not check:
        raise ValueError("report(rev=...) only checks: it cannot write a commit's pages")
    read = git_reader(root, rev) if rev is not None else workspace_reader(root)
    rendered = {}
    for rel in PAGES:
        try:
            text = read(rel)
        except FileNotFoundError:
            continue
        rendered[rel] = (text, render_page(text, root, read))
    stale = [rel for rel, (old, new) in rendered.items() if new != old]
    if not check:
        for rel in stale:
            _write(root / rel, rendered[rel][1])
    return stale


def main_experiments(root: Path, names: list[str], into: str = EXPERIMENTS_JSON) -> Path:
    """Capture the named experiments (or a branch's commit, e.g. main) from `dvc exp show --json` into `into`."""
    p = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json", "--all-commits"], cwd=root,
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise PolycolorError(f"dvc exp show failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
    if not re.fullmatch(r"metrics/[\w.-]+\.json", into):
        raise PolycolorError(f"--into must be a metrics/NAME.json file, got {into!r}")
    out = root / into
    _write(out, json.dumps(capture_experiments(names, json.loads(p.stdout)), indent=2) + "\n")
    return out


def _write(path: Path, text: str) -> None:
    with atomic_output(path) as tmp:
        Path(tmp).write_text(text)
