"""The `polycolor` command line: one subparser and one handler per command, joined by the COMMANDS table.

  polycolor predict --model MODEL --input in.png --colour red --output out.png [--painter net|painted]
  polycolor predict --model MODEL --data SPLIT_DIR --output OUT_DIR
  polycolor promote [--version N] [--force] | --rollback
  polycolor models
  polycolor preset NAME          (prints `-S key=value` flags for `dvc exp run`)
  polycolor bench [--repro]      (speed figures -> metrics/benchmark.json)
  polycolor stack up|down [--purge] [--dir .stack]   (PostgreSQL + S3 + MLflow server on loopback; see polycolor.stack)
  polycolor demo [--model MODEL] [--port 7860]   (a local web page to draw and paint; the `demo` extra)
  polycolor tune [--config tune.yaml] [--storage URL] [--best]   (an Optuna study of DVC experiments)
  polycolor monitor [--log DIR] [--last N]   (drift of what the served model paints; exit 1 on drift, 2 no verdict)

Exit codes: 0 done; 1 an error (one line `error: ...` on stderr, never a traceback for bad input); 2 a usage
error (argparse); 3 `promote` refused the candidate.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from polycolor.config.base import flatten
from polycolor.config.paint import PAINTERS, PaintConfig
from polycolor.config.params import Config, load_params, parse_config
from polycolor.errors import PolycolorError, first_line, run_guarded
from polycolor.paths import repo_root

REFUSED_EXIT = 3  # `promote` refused: distinct from 1 (an error) and 2 (a usage error)


def _load_cfg(args: argparse.Namespace, *, required: bool) -> Config:
    """params from --params; without it params.yaml when present, else (when not `required`) the defaults."""
    if args.params is not None:
        return load_params(args.params)
    if Path("params.yaml").is_file():
        return load_params("params.yaml")
    if required:
        raise PolycolorError("params.yaml not found here: run from the repo root or pass --params")
    return Config()


def _model_name(args: argparse.Namespace, *, params_required: bool) -> tuple[str, Config]:
    cfg = _load_cfg(args, required=params_required)
    return (args.name or cfg.mlflow.registered_model), cfg


# ------------------------------------------------------------------------------------------- handlers

def cmd_predict(args: argparse.Namespace) -> int:
    """Paint one image (--input, --colour) or a split (--data) with --model (default: @champion, else package/)."""
    from polycolor.colours import resolve_colour
    from polycolor.data.ayna import load_image, read_split

    if args.input is not None and args.colour is None:
        args.parser.error("--input needs --colour")
    if args.data is not None and args.colour is not None:
        args.parser.error("--colour goes with --input; with --data the colours come from data.json")
    name, cfg = _model_name(args, params_required=False)
    max_pixels = cfg.serving.max_pixels
    # Bad inputs fail before the model (torch, perhaps a registry download) is loaded.
    if args.input is not None:
        resolve_colour(args.colour)
        image = load_image(args.input, None, max_pixels)  # (H, W, 3) uint8, any mode converted as ingest does
    else:
        read_split(args.data)
    from polycolor.serving import predict

    served = predict.load_with_paint(args.model, name, cfg.monitor, face="predict")
    if args.model is None:
        print(f"model: {served.origin}", file=sys.stderr)
    paint, source = _paint_section(args, cfg, served.paint)
    if args.data is not None:
        written = predict.predict_split(served.loaded, Path(args.data), Path(args.output), max_pixels, paint,
                                        args.painter, served.watch)
        print(f"wrote {len(written)} images to {args.output}")
    else:
        predict.paint_to_file(served.loaded, image, args.colour, Path(args.output), paint, args.painter,
                              served.watch)
        print(f"wrote {args.output}")
    if args.painter == "painted":
        print(f"painted with {source}", file=sys.stderr)
    return 0


def _paint_section(args: argparse.Namespace, cfg: Config, stored: PaintConfig | None) -> tuple[PaintConfig, str]:
    """The paint section a model paints with, and where it came from: a package's or registered model's own;
    for a bare model file (stored None) the params' (--params, else ./params.yaml), else the defaults."""
    if stored is not None:
        return stored, "the paint section stored with the model"
    if args.params is not None:
        return cfg.paint, f"the paint section of {args.params}"
    if Path("params.yaml").is_file():
        return cfg.paint, "the paint section of params.yaml"
    return cfg.paint, "the default paint section (no params.yaml here)"


def cmd_promote(args: argparse.Namespace) -> int:
    """Promote @candidate (or --version) to @champion when it wins, or --rollback; REFUSED_EXIT when refused."""
    from polycolor.serving import registry

    if args.rollback and (args.version is not None or args.force):
        args.parser.error("--rollback takes neither --version nor --force")
    name, cfg = _model_name(args, params_required=True)
    registry.connect()
    if args.rollback:
        decision = registry.rollback(name)
    else:
        decision = registry.promote(name, cfg.promote, version=args.version, force=args.force)
    print(decision.line())
    return REFUSED_EXIT if decision.refused else 0


def cmd_models(args: argparse.Namespace) -> int:
    """Print the registered model's versions, aliases, promotion decisions and metrics as a table."""
    from polycolor.serving import registry

    name, cfg = _model_name(args, params_required=False)
    registry.connect()
    metrics = list(dict.fromkeys([cfg.promote.metric, *(g.metric for g in cfg.promote.gates),
                                  *registry.TABLE_METRICS]))
    print(f"registered model {name}")
    print(registry.format_table(registry.list_versions(name, metrics)))
    return 0


def preset_flags(path: Path) -> list[str]:
    """A preset file (a partial params.yaml) as `dvc exp run` flags: ["-S", "train.lr=0.02", ...].
    Values are written as tuning.dvcexp.flag_value writes them, without spaces (lists as [1,2]), so that
    `$(polycolor preset NAME)` splits into words safely."""
    import yaml

    from polycolor.tuning.dvcexp import flag_value
    from polycolor.tuning.space import with_overrides

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise PolycolorError(f"cannot read preset {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise PolycolorError(f"preset {path} is not valid YAML: {first_line(e)}") from None
    if not isinstance(data, dict):
        raise PolycolorError(f"preset {path} must be a mapping of params sections")
    flat = flatten(data)
    # a preset that would not validate is refused here, not half-way through a run
    parse_config(with_overrides({}, flat))
    out = []
    for key, value in flat.items():
        text = flag_value(value)
        if any(c.isspace() for c in text):
            raise PolycolorError(f"preset {path}: {key} holds whitespace, which -S flags cannot carry: {text!r}")
        out += ["-S", f"{key}={text}"]
    return out


def cmd_preset(args: argparse.Namespace) -> int:
    path = Path(args.preset)
    if not path.suffix:
        path = repo_root() / "presets" / f"{args.preset}.yaml"
    print(" ".join(preset_flags(path)))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Speed figures (see polycolor.bench) as a table and as JSON in --out."""

    from polycolor import bench
    from polycolor.fileio import write_json_atomic

    cfg = load_params(args.params)
    if args.monitor:
        from polycolor import monitor_bench

        figures = monitor_bench.run_monitor_bench(cfg, Path(args.package))
        print(monitor_bench.format_monitor(figures))
        write_json_atomic(args.monitor_out, figures)
        print(f"-> {args.monitor_out}")
        return 0
    figures = bench.run_bench(cfg, repo_root(), model_path=Path(args.model), train_metrics=Path(args.train_metrics),
                              repro=args.repro)
    print(bench.format_table(figures))
    write_json_atomic(args.out, figures)
    print(f"-> {args.out}")
    return 0


def cmd_stack(args: argparse.Namespace) -> int:
    """`up`: start what of the team stack is not running (on its existing data) and print its export lines on
    stdout; `down`: stop it by its recorded PIDs, keeping the data (`--purge`: discarding it)."""
    from polycolor import stack

    d = Path(args.dir) if args.dir else repo_root() / ".stack"
    if args.action == "up":
        dead = stack.dead_services(d)
        started = stack.start(d, timeout=args.timeout)
        if dead:
            print(f"restarted {', '.join(dead)} on the existing data in {started.dir}", file=sys.stderr)
        print(started.exports())
    else:
        stopped = stack.stop(d, purge=args.purge)
        kept = "discarded its data" if args.purge else f"kept its data in {Path(d).resolve()} (--purge discards it)"
        print(f"stopped {', '.join(stopped) or 'nothing (no service was still running)'}; {kept}", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Serve the drawing page (serving.demo) with --model (resolved as `predict` resolves it) on 127.0.0.1."""
    try:
        import gradio  # noqa: F401  (only to say how to get it when it is missing)
    except ImportError:
        raise PolycolorError("the demo needs gradio: pip install -e '.[demo]'") from None
    from polycolor.paths import repo_path
    from polycolor.serving import demo, predict

    name, cfg = _model_name(args, params_required=False)
    label = args.model or predict.champion_uri(name) or predict.DEFAULT_PACKAGE
    served = predict.load_with_paint(args.model, name, cfg.monitor, face="demo")
    paint, source = _paint_section(args, cfg, served.paint)
    split = demo.DEFAULT_EXAMPLES if args.examples is None else args.examples
    examples = demo.examples_from(repo_path(split) if split else None)
    print(f"polycolor demo on http://127.0.0.1:{args.port} (model {label}, painting with {source}; Ctrl-C stops it)")
    with demo.upload_folder():  # the uploads go when the demo stops
        demo.launch(demo.build_app(served.loaded, examples=examples, model_label=label, paint=paint,
                                   max_pixels=cfg.serving.max_pixels, watch=served.watch), port=args.port)
    return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    """A window of the prediction log against its version's reference profile (polycolor.monitor)."""
    from polycolor import monitor
    from polycolor.monitoring import log

    name, cfg = _model_name(args, params_required=False)
    root = (args.log if log.is_database(args.log) else Path(args.log).expanduser()) if args.log else log.location()
    if root is None:
        raise PolycolorError(f"the prediction log is off (${log.ENV}=off): pass --log FOLDER")
    if args.export_samples:
        n = monitor.export_samples(root, Path(args.export_samples), name)
        print(f"wrote {n} kept input(s) as an Ayna split in {args.export_samples}")
        return 0
    return monitor.judge(
        cfg.monitor, log_root=root, name=name, package=Path(args.package) if args.package else None,
        out_dir=Path(args.out), workspace=None if args.workspace == "" else Path(args.workspace),
        sha256=args.model_sha256, last=args.last, since=args.since, until=args.until,
        log_to_mlflow=not args.no_mlflow)


def cmd_report(args: argparse.Namespace) -> int:
    """Render the docs' generated tables from the metrics files (or --check that they are current)."""
    from polycolor import report

    root = repo_root()
    if args.experiments:
        print(f"wrote {report.main_experiments(root, args.experiments, args.into).relative_to(root)}")
    stale = report.report(root, check=args.check)
    if args.check and stale:
        print(f"stale: {', '.join(stale)} disagree with metrics/ (run `polycolor report`)", file=sys.stderr)
        return 1
    print(("stale: " if args.check else "updated: ") + (", ".join(stale) or "nothing, every page is current"))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """Run (or continue) the study tune.yaml describes, batch by batch; --best prints its best trial."""
    from polycolor import signals
    from polycolor.tuning import dvcexp, study
    from polycolor.tuning.space import load_tune

    root = repo_root()
    # The objective is checked against the declared metrics files before anything is queued (when they exist).
    names = None if args.best else dvcexp.workspace_metric_names(root)
    cfg = load_tune(root / args.config, root / "params.yaml", names)
    storage = study.study_storage(root, args.storage)
    with study.storage_errors(storage):
        if args.best:
            print(study.best_report(study.open_study(cfg, storage, create=False), cfg))
            return 0
        if names is None:
            print(f"note: no metrics file in the workspace yet: {cfg.objective.metric} is checked on the first trial")
        try:
            study.run_study(cfg, root, storage, metric_known=names is not None)
        except signals.Terminated as e:  # reported like Ctrl-C: "error: interrupted", exit 130
            raise KeyboardInterrupt from e
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "predict": cmd_predict,
    "monitor": cmd_monitor,
    "promote": cmd_promote,
    "models": cmd_models,
    "preset": cmd_preset,
    "bench": cmd_bench,
    "stack": cmd_stack,
    "demo": cmd_demo,
    "report": cmd_report,
    "tune": cmd_tune,
}


# ------------------------------------------------------------------------------------------- parser

def _registry_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default=None, help="params file for the registered model name and the promote "
                                                  "config (default: params.yaml)")
    p.add_argument("--name", default=None, help="registered model name (default: params mlflow.registered_model)")


def build_parser() -> argparse.ArgumentParser:
    """The `polycolor` parser: one add_parser per command; the handler is looked up in COMMANDS by name."""
    ap = argparse.ArgumentParser(prog="polycolor", description="Fill polygon outlines with a colour; manage models.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("predict", help="paint one image or a whole Ayna split",
                       description="Paint one image (--input, --colour) or every entry of an Ayna split (--data).")
    p.add_argument("--model", default=None,
                   help="package folder, .pt model file or MLflow URI such as models:/polycolor@champion "
                        "(default: the registry's @champion, else package/)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--input", default=None, help="an image file (any size and mode)")
    mode.add_argument("--data", default=None, help="an Ayna split folder (inputs/, outputs/, data.json)")
    p.add_argument("--colour", "--color", default=None, help="name or #rrggbb (with --input)")
    p.add_argument("--output", required=True, help="output PNG (with --input) or folder (with --data)")
    p.add_argument("--painter", choices=PAINTERS, default="painted",
                   help="painted (default): the full painter, with the params `paint` section (canonical form, "
                        "snapping); net: the network's own output, resized back, no post-processing. The paint "
                        "section is the one stored with a package or registered model; for a bare .pt model file "
                        "it is --params' (default ./params.yaml) `paint` section, else the defaults")
    _registry_options(p)
    p.set_defaults(parser=p)

    p = sub.add_parser("promote", help="move @champion to @candidate if it passes the gates and is better",
                       description="Compare @candidate (or --version N) with @champion on the promote config in "
                                   f"params; exit {REFUSED_EXIT} when refused. --rollback restores the previous "
                                   "champion.")
    p.add_argument("--version", type=int, default=None, help="the version to consider (default: @candidate)")
    p.add_argument("--force", action="store_true", help="promote even if refused (the reason is recorded)")
    p.add_argument("--rollback", action="store_true", help="restore the previous champion")
    _registry_options(p)
    p.set_defaults(parser=p)

    p = sub.add_parser("models", help="list registered versions, aliases and metrics")
    _registry_options(p)
    p.set_defaults(parser=p)

    p = sub.add_parser("preset", help="print a preset's params as `dvc exp run -S` flags",
                       description="Usage: dvc exp run -n tiny $(polycolor preset tiny). NAME is a file in presets/ "
                                   "(without .yaml) or a path to a YAML file.")
    p.add_argument("preset", metavar="NAME")
    p.set_defaults(parser=p)

    p = sub.add_parser("bench", help="measure training and inference speed; write metrics/benchmark.json",
                       description="Training images/s against this machine's matmul ceiling, inference latency and "
                                   "throughput, model size, peak RSS of the last training; --repro also times "
                                   "each stage of a full dvc repro in a scratch copy.")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--model", default="models/model.pt")
    p.add_argument("--train-metrics", default="metrics/train.json")
    p.add_argument("--out", default="metrics/benchmark.json")
    p.add_argument("--repro", action="store_true", help="also time a full dvc repro, stage by stage (minutes)")
    p.add_argument("--monitor", action="store_true",
                   help="instead: the monitoring figures (serving latency with and without the prediction log, "
                        "`polycolor monitor` over 10,000 predictions, false and true drift alarms; minutes)")
    p.add_argument("--package", default="package", help="--monitor: the package it serves (default package/)")
    p.add_argument("--monitor-out", default="metrics/monitoring.json", help="--monitor: where its figures go")
    p.set_defaults(parser=p)

    p = sub.add_parser("stack", help="start or stop the team stack (PostgreSQL, S3, MLflow server) on loopback",
                       description="up: start PostgreSQL, an S3-compatible server (moto) and `mlflow server` on "
                                   "free 127.0.0.1 ports and print `export MLFLOW_TRACKING_URI=...` (use: eval "
                                   "\"$(polycolor stack up)\"); up again restarts a service that died, on the existing "
                                   "data; down: stop them and keep the data; down --purge: discard it too. "
                                   "Needs the `stack` extra and PostgreSQL.")
    p.add_argument("action", choices=("up", "down"))
    p.add_argument("--purge", action="store_true", help="down: also discard the runs, models, artifacts and "
                                                        "passwords (keeps the logs)")
    p.add_argument("--dir", default=None, help="state, data and logs (default: .stack in the repo root)")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds each service may take to answer (up)")
    p.set_defaults(parser=p)

    p = sub.add_parser("demo", help="a local web page: draw or upload an outline, pick a colour, see the paintings",
                       description="Serve a Gradio page on 127.0.0.1 that paints an outline with the model and with "
                                   "the flood-fill reference, side by side. Needs the demo extra.")
    p.add_argument("--model", default=None,
                   help="package folder, .pt model file or MLflow URI (default: @champion, else package/); it "
                        "paints with the paint section stored with it, or for a bare .pt file with --params' "
                        "(default ./params.yaml), else the defaults")
    p.add_argument("--port", type=int, default=7860, help="port on 127.0.0.1 (default 7860)")
    p.add_argument("--examples", default=None,
                   help="an Ayna split whose outlines are offered as examples (default: the real Ayna "
                        "validation split at ../shared/ayna-dataset/validation when present; '' for none)")
    _registry_options(p)
    p.set_defaults(parser=p)

    p = sub.add_parser("monitor", help="drift of the served model's inputs and outputs against its training data",
                       description="Compare a window of the prediction log (every painting of serve, predict and "
                                   "the demo) with the reference profile stored with its model version: an "
                                   "Evidently report (HTML, JSON), a monitoring run in MLflow, a snapshot in the "
                                   "Evidently workspace. Exit 0 no drift, 1 drift, 2 no verdict "
                                   "(docs/monitoring.md).")
    p.add_argument("--log", default=None, help="the log: a folder or a postgresql:// URL (default: "
                                               "$POLYCOLOR_PREDICTION_LOG, else ~/.polycolor/predictions)")
    p.add_argument("--last", type=int, default=None, help="window: the last N records (default monitor.window)")
    p.add_argument("--since", default=None, help="window: records at or after this UTC ISO time")
    p.add_argument("--until", default=None, help="window: records before this UTC ISO time")
    p.add_argument("--model-sha256", default=None,
                   help="the model (content hash or a prefix) whose records to judge (default: the newest record's)")
    p.add_argument("--package", default="package", help="a package folder to take the reference from when the "
                                                        "model is not in the registry (default package/)")
    p.add_argument("--out", default="metrics/monitor", help="where report.html, report.json and monitor.json go")
    p.add_argument("--workspace", default="monitoring/workspace",
                   help="the Evidently workspace (`evidently ui --workspace ...`); '' for none")
    p.add_argument("--no-mlflow", action="store_true", help="do not log a monitoring run")
    p.add_argument("--export-samples", default=None, metavar="DIR",
                   help="instead: write the kept inputs (monitor.sample_share) as an Ayna split, with the flood "
                        "fill's painting as outputs to correct by hand, to score as an evaluation set")
    _registry_options(p)
    p.set_defaults(parser=p)

    p = sub.add_parser("report", help="render the README's and docs' tables from metrics/ (or --check them)",
                       description="Re-render every <!-- report:NAME --> block of README.md and docs/*.md from the "
                                   "metrics files; --check writes nothing and exits 1 when a page is stale; "
                                   "--experiments NAME ... first captures those DVC experiments' headline figures "
                                   "into metrics/experiments.json (or --into).")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 when a page disagrees with metrics/")
    p.add_argument("--experiments", nargs="+", default=None, metavar="NAME",
                   help="DVC experiment names (or a branch, e.g. main) to capture from `dvc exp show --json` first")
    p.add_argument("--into", default="metrics/experiments.json", metavar="FILE",
                   help="where --experiments writes (a metrics/NAME.json; a block names it: "
                        "<!-- report:experiments FILE -->)")
    p.set_defaults(parser=p)

    p = sub.add_parser("tune", help="an Optuna study whose trials are DVC experiments, tracked in MLflow",
                       description="Run the study in tune.yaml in batches: ask Optuna for `parallel` trials, queue "
                                   "each as DVC experiment <study>-<n>, dvc queue start -j parallel, read the "
                                   "metrics back, tell Optuna. Run again to continue a killed study "
                                   "(docs/experiments.md).")
    p.add_argument("--config", default="tune.yaml", help="the search space (default: tune.yaml in the repo root)")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL (default: sqlite optuna.db in the repo root, or the team stack's "
                        "PostgreSQL when MLFLOW_TRACKING_URI is the stack's server)")
    p.add_argument("--best", action="store_true",
                   help="print the best trial's params and DVC experiment (restore: dvc exp apply NAME)")
    p.set_defaults(parser=p)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `polycolor` console script; returns the exit code."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep stderr for errors
    args = build_parser().parse_args(argv)
    return run_guarded(lambda: COMMANDS[args.command](args))


if __name__ == "__main__":
    sys.exit(main())
