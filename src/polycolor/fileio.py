"""Output files that are never half-written (atomic writes of files and folders), JSON read/write, and the content
digest of folders.

A stage that fails leaves its previous output exactly as it was. Stdlib only; imports nothing of the package.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_json_atomic(path: str | Path, obj: Any, *, sort_keys: bool = False) -> None:
    """`obj` as indented JSON (with a final newline) at `path`, through atomic_output."""
    with atomic_output(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n")


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write into (a file or a folder, not yet created).

    On success the temporary replaces `path` (an old output is removed only then); on an exception it is deleted
    and `path` stays exactly as it was. The temporary keeps `path`'s suffix, so writers that infer the format
    from it (PIL, pandas) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{secrets.token_hex(4)}"
    tmp = path.parent / f".{path.name}.tmp-{tag}{path.suffix}"
    try:
        yield tmp
    except OSError as e:
        _remove(tmp)
        raise _as_user_path(e, tmp, path) from None
    except BaseException:
        _remove(tmp)
        raise
    if not (tmp.exists() or tmp.is_symlink()):
        raise FileNotFoundError(f"atomic_output: nothing was written for {path}")
    try:
        _move_into_place(tmp, path, tag)
    except OSError as e:
        _remove(tmp)
        raise _as_user_path(e, tmp, path) from None


def mount_point(path: str | Path) -> Path:
    """The mount point of the filesystem holding `path` (or its nearest existing parent)."""
    p = Path(os.path.abspath(path))
    while not p.exists() or not os.path.ismount(p):
        p = p.parent
    return p


def disk_full(path: str | Path) -> OSError:
    """ENOSPC said as what to do about it: which filesystem is full, and its size (its free space is no figure to
    give: the partial file was just removed)."""
    mount = mount_point(Path(path).parent)
    size_mib = shutil.disk_usage(mount).total / 2**20
    return OSError(errno.ENOSPC, f"cannot write {path}: no space left on device: the filesystem at {mount} "
                                 f"({size_mib:,.1f} MiB) is full; free some space there and rerun")


def _as_user_path(e: OSError, tmp: Path, path: Path) -> OSError:
    """`e` naming `path` (what the user asked for) instead of the hidden temporary beside it, which they never
    named: `[Errno 13] cannot write out.png: Permission denied`; a full disk names its filesystem (disk_full).
    Errors about other files pass unchanged."""
    if e.errno == errno.ENOSPC:
        return disk_full(path)
    names = {str(tmp), tmp.name}
    if e.filename is None or str(e.filename) not in names and not str(e.filename).startswith(str(tmp) + os.sep):
        return e
    return type(e)(e.errno, f"cannot write {path}: {e.strerror}")


def _move_into_place(tmp: Path, path: Path, tag: str) -> None:
    if not (path.exists() or path.is_symlink()):
        os.rename(tmp, path)
    elif not tmp.is_dir() and not path.is_dir():
        os.replace(tmp, path)  # atomic for a file over a file
    else:
        # A folder cannot be renamed over a non-empty folder: move the old one aside, move the new one in,
        # and put the old one back if that fails.
        old = path.parent / f".{path.name}.old-{tag}"
        os.rename(path, old)
        try:
            os.rename(tmp, path)
        except BaseException:
            os.rename(old, path)
            _remove(tmp)
            raise
        _remove(old)


def read_json(path: str | Path) -> Any:
    """The JSON document at `path` (errors propagate: callers say what the file is for)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def folder_digest(*folders: str | Path) -> str:
    """16 hex digits of sha256 over the relative path and the bytes of every file in the folders, in sorted order.

    The one data hash of the project: the train stage records it as `data_hash` (run tag, run.json, model card,
    registry version tag) over the folders the model was fit on, and as the data part of the checkpoint
    fingerprint. Same files, same digest, wherever the folders sit.
    """
    h = hashlib.sha256()
    for folder in folders:
        folder = Path(folder)
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(folder)).encode())
                h.update(p.read_bytes())
    return h.hexdigest()[:16]
