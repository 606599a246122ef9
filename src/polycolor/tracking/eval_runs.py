"""The evaluation run behind a metrics file.

An evaluation run is a child run of the training run (lineage.PARENT_RUN_TAG) that carries the sha256 of the eval.json
it wrote, so the package stage links exactly the evaluation behind the metrics file it packages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from polycolor.errors import PolycolorError
from polycolor.tracking.lineage import PARENT_RUN_TAG
from polycolor.tracking.store import tracking_uri, with_retry

EVAL_DIGEST_TAG = "polycolor.eval_json_sha256"


def file_sha256(path: str | Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def find_evaluation_run(train_run: Any, eval_json: Path) -> Any:
    """The evaluation run (a child of `train_run`) that wrote `eval_json`, by the file's sha256; the newest if the
    same file came out twice. A metrics file no evaluation run in this store wrote is a PolycolorError."""
    import mlflow

    digest = file_sha256(eval_json)
    runs = with_retry(mlflow.MlflowClient().search_runs, [train_run.info.experiment_id],
                      filter_string=f"tags.`{PARENT_RUN_TAG}` = '{train_run.info.run_id}' and "
                                    f"tags.`{EVAL_DIGEST_TAG}` = '{digest}'",
                      order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise PolycolorError(f"{eval_json} was not written by an evaluation run of training run "
                             f"{train_run.info.run_id} in {tracking_uri()} (run the evaluate stage)")
    return runs[0]
