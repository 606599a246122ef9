"""The one exception type that the stages and the CLI turn into a one-line error and exit code 1."""

from __future__ import annotations

import sys
from collections.abc import Callable


class PolycolorError(Exception):
    """A user-facing error: bad params, bad input data, a missing model. Its message is one line."""


class ConfigError(PolycolorError, ValueError):
    """A params.yaml key holds a value we cannot use; the message names the key and the value."""


def one_line(e: BaseException) -> str:
    """The whole message of `e` on one line (whitespace runs, newlines included, as one space); its type's name when
    it has no message."""
    return " ".join(str(e).split()) or type(e).__name__


def first_line(e: BaseException) -> str:
    """The first line of the message of `e`, for errors whose later lines are context (YAML's marks, torch's
    unpickling hints, a database's SQL); its type's name when it has no message."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def run_guarded(body: Callable[[], int | None]) -> int:
    """Run a stage's or a command's body and return its exit code. Bad input (PolycolorError), a failed file
    operation (OSError) and an MLflow refusal (MlflowException) become `error: <one line>` on stderr and exit 1;
    Ctrl-C exits 130. Anything else is a bug and keeps its traceback."""
    try:
        return body() or 0
    except (PolycolorError, OSError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        mlflow_errors = sys.modules.get("mlflow.exceptions")  # only loaded when the body used MLflow
        if mlflow_errors is not None and isinstance(e, mlflow_errors.MlflowException):
            print(f"error: MLflow: {one_line(e)}", file=sys.stderr)
            return 1
        raise
