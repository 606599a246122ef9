"""`polycolor monitor` (and the `monitor` DVC stage): a window of the prediction log against its version's reference,
written as Evidently HTML and JSON, logged to MLflow as a monitoring run, added to an Evidently workspace, and
said in words with the commands that close the loop.

Exit codes: 0 no drift; 1 drift (a test failed), so cron or CI can act on it; 2 no verdict (an empty log, too few
records in the window, a version without a reference profile), said in one line.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from polycolor.config.monitoring import MonitorConfig
from polycolor.errors import PolycolorError
from polycolor.fileio import atomic_output, write_json_atomic
from polycolor.monitoring.log import SAMPLES, Location, is_database, read_log
from polycolor.monitoring.profile import REFERENCE_ARTIFACT, load_reference
from polycolor.monitoring.report import Drift, run_report, verdict

PASSED, DRIFT, NO_VERDICT = 0, 1, 2
MONITORING_KIND = "monitoring"  # tag polycolor.kind of a monitoring run
PROJECT = "polycolor"  # the Evidently workspace's project

# Which data share covers a drifted descriptor: the `dvc exp run -S` flag that closes the loop.
REMEDY = {
    "blockiness": "ingest.jpeg_fraction=0.5", "near_white": "ingest.jpeg_fraction=0.5",
    "page_grey": "ingest.paper_fraction=0.5", "page_noise": "ingest.paper_fraction=0.5",
    "ink_saturation": "ingest.pen_fraction=0.4", "line_width": "ingest.outline_width=[1,16]",
    "ink_share": "ingest.outline_width=[1,16]", "closed": "ingest.gap_fraction=0.6",
    "height": "ingest.downscale_fraction=0.5", "width": "ingest.downscale_fraction=0.5",
    "drawings": "ingest.novel_shape_fraction=0.5", "ff_agreement": "ingest.novel_shape_fraction=0.5",
    "confidence": "ingest.novel_shape_fraction=0.5", "painted_share": "ingest.wide_pose_fraction=0.5",
}


@dataclass
class Window:
    frame: pd.DataFrame
    sha256: str
    total: int  # records of this model in the log
    corrupt: int  # lines skipped


def select(root: Location, sha256: str | None, last: int, since: str | None, until: str | None) -> Window:
    """The last `last` records of model `sha256` (default: the model of the newest record) in [since, until)."""
    read = read_log(root)
    if not read.records and not read.corrupt:
        raise NoVerdict(f"the prediction log at {root} is empty: nothing to monitor yet")
    if not read.records:
        raise NoVerdict(f"the prediction log at {root} holds no readable record ({read.corrupt} corrupt "
                        "line(s) skipped): nothing to monitor")
    sha = sha256 or read.records[-1]["model_sha256"]
    recs = [r for r in read.records if r["model_sha256"].startswith(sha)
            and (since is None or r["time"] >= since) and (until is None or r["time"] < until)]
    if not recs:
        raise NoVerdict(f"the prediction log at {root} has no record of model {sha[:12]} in that time range")
    return Window(pd.DataFrame(recs[-last:]), recs[-1]["model_sha256"], len(recs), read.corrupt)


class NoVerdict(PolycolorError):
    """Nothing to judge (exit 2): said in one line."""


def reference_for(sha256: str, name: str, package: Path | None) -> tuple[pd.DataFrame, str, str]:
    """The reference profile of the model with content hash `sha256`: from the registered version tagged with it
    (downloaded), else from the local package folder when its model is that one (also when that version was
    registered before monitoring, with no profile). Returns (profile, version, where)."""
    from polycolor.serving import registry

    version, missing = "", ""
    if registry.missing_store() is None:
        registry.connect()
        mv = registry.find_by_content(name, sha256)
        if mv is not None:
            import mlflow

            version, where = str(mv.version), f"{name} version {mv.version}"
            with tempfile.TemporaryDirectory(prefix="polycolor-reference-") as tmp:
                try:
                    local = Path(mlflow.artifacts.download_artifacts(
                        artifact_uri=f"models:/{name}/{mv.version}/{REFERENCE_ARTIFACT}", dst_path=tmp))
                    profile, _ = load_reference(local, where)
                    return profile, version, where
                except Exception:  # noqa: BLE001 - a version registered before monitoring has no such folder
                    missing = (f"{where} has no reference profile (registered before monitoring): repackage it "
                               "with `dvc repro package`")
    if package is not None and (package / "MLmodel").is_file():
        from polycolor.serving.predict import package_identity

        if package_identity(package) == sha256:
            try:
                profile, _ = load_reference(package / "artifacts" / REFERENCE_ARTIFACT, str(package))
            except PolycolorError as e:
                raise NoVerdict(missing or str(e)) from None
            return profile, version, f"{package} (model {sha256[:12]})"
    raise NoVerdict(missing or f"model {sha256[:12]} is neither a registered version of {name!r} nor the package in "
                    f"{package}: no reference profile to compare with")


def loop_commands(drift: Drift, log_root: Location) -> list[str]:
    """The commands that close the loop: the kept inputs as an evaluation set, then the experiment that covers them."""
    flags = sorted({REMEDY[c] for c in drift.drifted if c in REMEDY})
    if drift.embedding_drifted and not flags:
        flags = [REMEDY["drawings"]]
    cmds = [f"polycolor monitor --log {log_root} --export-samples data/monitored   # kept inputs, the flood fill's "
            "painting to correct, to score",
            "dvc exp run -S 'evaluate.extra_sets.monitored={path: data/monitored, required: true}'"
            + "".join(f" -S '{f}'" for f in flags)]
    return cmds


def monitor(cfg: MonitorConfig, *, log_root: Location, name: str, package: Path | None, out_dir: Path,
            workspace: Path | None, sha256: str | None = None, last: int | None = None, since: str | None = None,
            until: str | None = None, log_to_mlflow: bool = True) -> tuple[int, list[str]]:
    """Run the report and everything around it; returns (exit code, the lines to print)."""
    window = select(log_root, sha256, last or cfg.window, since, until)
    lines = [f"window: {len(window.frame)} of {window.total} records of model {window.sha256[:12]} in {log_root}"
             + (f" ({window.corrupt} corrupt line(s) skipped)" if window.corrupt else "")]
    if len(window.frame) < cfg.min_records:
        raise NoVerdict(f"{lines[0]}: fewer than monitor.min_records = {cfg.min_records}, no verdict")
    reference, version, where = reference_for(window.sha256, name, package)
    snapshot, drift = run_report(window.frame, reference, cfg)
    summary = {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model_sha256": window.sha256,
        "version": version, "reference": where, "records": len(window.frame), "reference_records": len(reference),
        "corrupt_lines": window.corrupt, "passed": drift.passed, "drifted": drift.drifted,
        "drift": {k: round(v, 4) for k, v in drift.scores.items()},
        "embedding_drift": round(drift.embedding_score, 4), "tests": drift.tests, "verdict": verdict(drift),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(out_dir / "report.html") as tmp:
        snapshot.save_html(str(tmp))
    with atomic_output(out_dir / "report.json") as tmp:
        snapshot.save_json(str(tmp))
    write_json_atomic(out_dir / "monitor.json", summary, sort_keys=True)
    if workspace is not None:
        add_to_workspace(workspace, snapshot)
    if log_to_mlflow:
        log_run(name, version, window.sha256, drift, out_dir)
    lines.append(f"reference: {where} ({len(reference)} images); report: {out_dir / 'report.html'}")
    if drift.passed:
        lines.append("no drift: every test passed")
        return PASSED, lines
    lines.append("DRIFT: " + "; ".join(summary["verdict"] or ["a test failed"]))
    lines.append("close the loop:")
    lines.extend(f"  {c}" for c in loop_commands(drift, log_root))
    return DRIFT, lines


def judge(cfg: MonitorConfig, **kwargs: Any) -> int:
    """`monitor` for a command line (polycolor monitor, the monitor stage): prints its lines, or the reason there is
    no verdict on stderr, and returns the exit code."""
    import sys

    try:
        code, lines = monitor(cfg, **kwargs)
    except NoVerdict as e:
        print(f"no verdict: {e}", file=sys.stderr)
        return NO_VERDICT
    print("\n".join(lines))
    return code


def add_to_workspace(root: Path, snapshot: Any) -> None:
    """Add the snapshot to the Evidently workspace at `root` (created on first use), project PROJECT, so
    `evidently ui --workspace <root>` shows drift over time."""
    from evidently.ui.workspace import Workspace

    ws = Workspace.create(str(root))
    found = ws.search_project(PROJECT)
    if found:
        project = found[0]
    else:
        project = ws.create_project(PROJECT, description="polycolor's served model: drift of its inputs, outputs "
                                                         "and embeddings against training")
        add_panels(project)
    ws.add_run(project.id, snapshot, include_data=False)


DASHBOARD_DESCRIPTORS = ("line_width", "near_white", "page_grey", "height", "closed", "ff_agreement", "confidence")


def add_panels(project: Any) -> None:
    """The project's dashboard: drifted descriptors, the embedding's drift and a few descriptors' drift over time."""
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import line_plot_panel

    project.dashboard.add_panel(line_plot_panel(
        "Drifted descriptors", [PanelMetric(legend="count", metric="DriftedColumnsCount",
                                            metric_labels={"value_type": "count"})],
        "descriptors past monitor.drift_threshold in each window", size="half"))
    project.dashboard.add_panel(line_plot_panel(
        "Embedding drift", [PanelMetric(legend="ROC AUC", metric="EmbeddingsDrift")],
        "how well a classifier tells the window's embeddings from the reference's", size="half"))
    project.dashboard.add_panel(line_plot_panel(
        "Descriptor drift", [PanelMetric(legend=c, metric="ValueDrift", metric_labels={"column": c})
                             for c in DASHBOARD_DESCRIPTORS],
        "Wasserstein distance in reference standard deviations", size="full"))


def log_run(name: str, version: str, sha256: str, drift: Drift, out_dir: Path) -> None:
    """A monitoring run in the model's MLflow experiment, tied to the version by tags, with the drift figures as
    metrics and the report as artifacts: the MLflow UI shows the history."""
    import mlflow

    from polycolor.tracking.store import configure, ensure_experiment

    configure()
    experiment = ensure_experiment(f"{name}-monitoring")
    with mlflow.start_run(experiment_id=experiment, run_name=f"monitor {version or sha256[:12]}",
                          tags={"polycolor.kind": MONITORING_KIND, "model_name": name, "model_version": version,
                                "model_sha256": sha256}):
        mlflow.log_metrics({f"drift.{k}": v for k, v in drift.scores.items()})
        mlflow.log_metrics({"drifted_descriptors": len(drift.drifted), "embedding_drift": drift.embedding_score,
                            "passed": float(drift.passed)})
        for f in ("report.html", "report.json", "monitor.json"):
            mlflow.log_artifact(str(out_dir / f))


def export_samples(root: Location, out_dir: Path, name: str) -> int:
    """The inputs the log kept (monitor.sample_share) as an Ayna split in `out_dir`: inputs/, data.json, and
    outputs/ painted by the flood fill as a starting point, to be corrected by hand before the split is scored
    (evaluate.extra_sets). Returns the number of entries."""
    import json

    from polycolor.data.ayna import INPUTS, OUTPUTS, load_image, write_data_json, write_png
    from polycolor.evaluation.reference import reference_fill

    if is_database(root):
        raise PolycolorError("inputs are kept only in a folder log (monitor.sample_share): this log is a database")
    root = Path(root)
    kept = [r for r in read_log(root).records if r.get("sample") and r.get("sample_colour")]
    kept = [r for r in kept if (root / SAMPLES / r["sample"]).is_file()]
    if not kept:
        raise PolycolorError(f"the prediction log at {root} kept no input (monitor.sample_share is "
                             "0 in the package that served them): nothing to export")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise PolycolorError(f"{out_dir} exists and is not empty: export into a new folder")
    with atomic_output(out_dir) as tmp:
        (tmp / INPUTS).mkdir(parents=True)
        (tmp / OUTPUTS).mkdir()
        names = []
        for i, r in enumerate(kept):
            image = load_image(root / SAMPLES / r["sample"])
            stem = f"{i:05d}"
            write_png(tmp / INPUTS / f"{stem}.png", image)
            write_png(tmp / OUTPUTS / f"{stem}.png", reference_fill(image[None], [r["sample_colour"]])[0])
            names.append(f"{stem}.png")
        write_data_json(tmp, [r["sample_colour"] for r in kept], names, names)
        (tmp / "log_records.json").write_text(json.dumps(kept, indent=1) + "\n")
    return len(kept)
