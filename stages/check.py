"""DVC stage `check`: every param (the whole params.yaml) and the data source, before any other stage runs.

DVC deletes a stage's outputs before it runs the stage's command, so a typo that only the train stage would notice
(`train.lr: "fast"`) used to cost models/model.pt and the train metrics, and a bad `ingest.source` cost data/dataset.
This stage depends on the whole params file and ingest depends on its output, so every `dvc repro` that changed a
param runs it first; it fails in about a second and nothing else has been touched. Its output is constant: a
passing check never makes a later stage rerun.

When MLFLOW_TRACKING_URI names a tracking server (http/https), the check also asks it one question, within
tracking.store.PROBE_TIMEOUT_S: a server that refuses, never answers, rejects the login or fails fails the check in
seconds with one line naming the URI, instead of the train stage failing minutes later after DVC deleted
models/model.pt (issue 19).
"""

from __future__ import annotations

import argparse
import sys

from polycolor.config.params import load_params
from polycolor.data.ingest import check_source
from polycolor.errors import ConfigError, run_guarded
from polycolor.fileio import write_json_atomic
from polycolor.tracking.store import check_server, is_server, tracking_uri

CHECKED = ["params", "ingest.source", "train.device"]  # constant: the server probe is not recorded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file")
    parser.add_argument("--out", default="metrics/check.json", help="what was checked (constant JSON)")
    args = parser.parse_args(argv)
    return run_guarded(lambda: run(args))


def run(args: argparse.Namespace) -> None:
    cfg = load_params(args.params)  # every section, cross-section rules included
    check_source(cfg.ingest)  # the source's layout and data.json entries, nothing decoded
    import torch  # only here: a params-only failure should not wait for torch to import

    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but this machine has no CUDA device (use auto or cpu)")
    uri = tracking_uri()
    if is_server(uri):
        check_server(uri)
    write_json_atomic(args.out, {"checked": CHECKED})
    server = f"; tracking server {uri} answers" if is_server(uri) else ""
    print(f"check: params and data source ({cfg.ingest.source}) are usable{server}")


if __name__ == "__main__":
    sys.exit(main())
