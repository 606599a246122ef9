"""Issue 28, an artifact store with credentials, and a `stack down` that never loses the last dump.

The S3 server (stack.serve_s3) is started for real on loopback, with no PostgreSQL or MLflow around it (seconds):
- only the stack's keys (<dir>/s3-keys, 0600) are accepted; made-up keys, the right key id with a wrong secret,
  and unsigned requests get 403, and moto's admin API (/moto-api/reset, which wiped the bucket, and reset-auth,
  which turns authentication off) is not served;
- `polycolor stack down` on a bucket that is gone (NoSuchBucket) or emptied stops every recorded service, exits 1
  with one line, and leaves the last dump byte for byte; a save that succeeds replaces it whole.
PostgreSQL, as root, runs as a system user made for it, not `nobody` (started for real too)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pwd
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from conftest import REPO, fail_or_skip

from polycolor import stack

pytestmark = pytest.mark.slow  # each test starts the S3 server or PostgreSQL


def require_s3() -> None:
    missing = [m for m in ("moto", "boto3") if importlib.util.find_spec(m) is None]
    if missing:
        fail_or_skip(f"{', '.join(missing)} not installed (pip install -e '.[stack]')")


@pytest.fixture
def stack_dir():
    """A stack folder outside pytest's private basetemp (as root, PostgreSQL's user must enter it)."""
    d = Path(tempfile.mkdtemp(prefix="polycolor-r3-"))
    (d / "logs").mkdir()
    yield d
    if (d / stack.STATE).is_file():
        for s in stack.load(d).services:
            stack._stop_service(s)
    subprocess.run(["rm", "-rf", str(d)], check=False)


def start_s3(d: Path) -> tuple[stack.Service, str]:
    require_s3()
    return stack._start_s3(d, d / "logs", timeout=120.0)


def http(method: str, url: str, data: bytes | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method=method), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_the_s3_server_takes_only_the_stacks_keys_and_serves_no_admin_api(stack_dir):
    from botocore.exceptions import ClientError

    service, endpoint = start_s3(stack_dir)
    try:
        keys = stack.s3_keys(stack_dir)
        assert (stack_dir / stack.S3_KEYS).stat().st_mode & 0o777 == 0o600
        owner = stack.s3_client(endpoint, keys)
        owner.put_object(Bucket=stack.BUCKET, Key="mlflow/1/model.pt", Body=b"champion")
        others = {"made-up keys": {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLEEXAMPLE00", "AWS_SECRET_ACCESS_KEY": "x" * 40},
                  "a wrong secret": {**keys, "AWS_SECRET_ACCESS_KEY": "x" * 40}}
        for who, k in others.items():
            client = stack.s3_client(endpoint, k)
            for call in (lambda: client.list_objects_v2(Bucket=stack.BUCKET),
                         lambda: client.get_object(Bucket=stack.BUCKET, Key="mlflow/1/model.pt"),
                         lambda: client.put_object(Bucket=stack.BUCKET, Key="mlflow/1/model.pt", Body=b"swapped"),
                         lambda: client.delete_object(Bucket=stack.BUCKET, Key="mlflow/1/model.pt"),
                         lambda: client.delete_bucket(Bucket=stack.BUCKET)):
                with pytest.raises(ClientError) as e:
                    call()
                assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403, (who, e.value)
        for method, path, data in (("POST", "/moto-api/reset", b""), ("POST", "/moto-api/reset-auth", b"inf"),
                                   ("GET", "/moto-api/data.json", None), ("GET", "/moto-api/", None),
                                   ("GET", f"/{stack.BUCKET}/mlflow/1/model.pt", None),
                                   ("PUT", f"/{stack.BUCKET}/mlflow/1/model.pt", b"swapped"),
                                   ("DELETE", f"/{stack.BUCKET}/mlflow/1/model.pt", None),
                                   ("GET", f"/{stack.BUCKET}", None), ("DELETE", f"/{stack.BUCKET}", None),
                                   ("GET", "/", None)):
            assert http(method, endpoint + path, data) == 403, f"unsigned {method} {path}"
        body = owner.get_object(Bucket=stack.BUCKET, Key="mlflow/1/model.pt")["Body"].read()
        assert body == b"champion", "nothing another process sent changed the store"
        log = Path(service.log).read_text(errors="replace")
        assert keys["AWS_SECRET_ACCESS_KEY"] not in log and "Traceback" not in log
    finally:
        stack._stop_service(service)


def record(d: Path, *services: stack.Service, endpoint: str) -> None:
    """d/stack.json naming `services`, as `up` writes it (the URIs other than S3's are never used by stop)."""
    stack._save_state(stack.Stack(d, "http://127.0.0.1:1", endpoint, stack.ARTIFACTS, "postgresql://unused",
                                  services))


def sleeper(d: Path, name: str) -> stack.Service:
    """A stand-in for the stack's other services: a process stop() must end, like mlflow, by its group."""
    log = d / "logs" / f"{name}.log"
    with log.open("a") as f:
        proc = stack._spawn(["sleep", "600"], f, dict(os.environ))
    return stack._service(name, proc, log, 15, 0)


def down(d: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "polycolor.cli", "stack", "down", "--dir", str(d)], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_down_keeps_the_last_dump_when_the_bucket_is_gone_or_emptied_and_stops_everything(stack_dir):
    d = stack_dir
    s3, endpoint = start_s3(d)
    other = sleeper(d, "mlflow")
    record(d, s3, other, endpoint=endpoint)
    client = stack.s3_client(endpoint, stack.s3_keys(d))
    for i in range(3):
        client.put_object(Bucket=stack.BUCKET, Key=f"mlflow/{i}.txt", Body=f"object {i}".encode())
    done = down(d)
    assert done.returncode == 0, done.stderr
    dump = d / stack.S3_DUMP
    assert stack._dump_size(d) == 3 and dump.stat().st_mode & 0o777 == 0o600
    good = digest(dump)

    for wipe in ("bucket deleted", "objects deleted"):
        s3, endpoint = start_s3(d)  # puts the dump back
        other = sleeper(d, "mlflow")
        record(d, s3, other, endpoint=endpoint)
        client = stack.s3_client(endpoint, stack.s3_keys(d))
        assert len(client.list_objects_v2(Bucket=stack.BUCKET)["Contents"]) == 3, "up restores the dump"
        for o in client.list_objects_v2(Bucket=stack.BUCKET)["Contents"]:
            client.delete_object(Bucket=stack.BUCKET, Key=o["Key"])
        if wipe == "bucket deleted":
            client.delete_bucket(Bucket=stack.BUCKET)
        t = time.monotonic()
        done = down(d)
        took = time.monotonic() - t
        err = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(err) == 1 and err[0].startswith("error: stopped s3, mlflow, but the "
                                                                             "bucket was not saved"), done.stderr
        assert f"kept the last dump {dump} (3 objects)" in err[0], err[0]
        assert ("NoSuchBucket" if wipe == "bucket deleted" else "is empty") in err[0], err[0]
        assert "Traceback" not in done.stderr
        assert not [s.pid for s in (s3, other) if stack._alive(s)], f"{wipe}: a service was left running"
        assert digest(dump) == good, f"{wipe}: the last dump was changed"
        assert not (d / (stack.S3_DUMP + ".new")).exists()
        print(f"{wipe}: down refused the save and stopped everything in {took:.1f} s")

    s3, endpoint = start_s3(d)  # a save that succeeds replaces the dump whole
    record(d, s3, endpoint=endpoint)
    stack.s3_client(endpoint, stack.s3_keys(d)).put_object(Bucket=stack.BUCKET, Key="mlflow/3.txt", Body=b"new")
    assert down(d).returncode == 0
    assert stack._dump_size(d) == 4 and digest(dump) != good


def test_state_files_are_private(stack_dir):
    s3, endpoint = start_s3(stack_dir)
    try:
        record(stack_dir, s3, endpoint=endpoint)
        assert (stack_dir / stack.STATE).stat().st_mode & 0o777 == 0o600
        record(stack_dir, s3, endpoint=endpoint)  # rewritten: still 0600, never through a readable temporary
        assert (stack_dir / stack.STATE).stat().st_mode & 0o777 == 0o600
        assert json.loads((stack_dir / stack.STATE).read_text())["s3_endpoint"] == endpoint
    finally:
        stack._stop_service(s3)


def test_postgres_runs_as_a_user_made_for_it_not_nobody(stack_dir):
    if os.geteuid() != 0:
        pytest.skip("PostgreSQL runs as the caller when the caller is not root")
    try:
        stack.postgres_bindir()
    except stack.PolycolorError as e:
        fail_or_skip(str(e))
    stack_dir.chmod(0o711)  # as start() leaves it as root: others may enter, not list
    pg = stack_dir / "pg"
    service, _, _ = stack._start_postgres(stack_dir, stack_dir / "logs", 120.0)
    try:
        owner = pwd.getpwuid(pg.stat().st_uid).pw_name
        assert owner == stack.PG_OS_USER != "nobody", owner
        assert psutil.Process(service.pid).username() == stack.PG_OS_USER
        assert pwd.getpwnam(stack.PG_OS_USER).pw_shell.endswith("nologin")
    finally:
        stack._stop_service(service)
    # A cluster an older stack made as `nobody` is handed over, file by file, and starts on its data.
    subprocess.run(["chown", "-R", "nobody:nogroup", str(pg)], check=True)
    service, _, _ = stack._start_postgres(stack_dir, stack_dir / "logs", 120.0)
    try:
        assert psutil.Process(service.pid).username() == stack.PG_OS_USER
        assert {pwd.getpwuid(p.stat().st_uid).pw_name for p in [pg, *pg.rglob("*")]} == {stack.PG_OS_USER}
    finally:
        stack._stop_service(service)


def test_a_corrupt_dump_is_a_one_line_error_at_up(stack_dir):
    require_s3()
    (stack_dir / stack.S3_DUMP).write_bytes(b"not a tar" * 100)
    started = time.time() - 1.0  # the session's own team stack (an older child) is not this test's
    with pytest.raises(stack.PolycolorError, match=r"cannot read the bucket's dump .*s3.tar .*mv .*s3.tar.bad"):
        start_s3(stack_dir)
    left = [p for p in psutil.Process().children(recursive=True)
            if p.status() != psutil.STATUS_ZOMBIE and "polycolor.stack" in " ".join(p.cmdline())
            and p.create_time() >= started]
    assert not left, "the S3 server that could not be filled is stopped again"
