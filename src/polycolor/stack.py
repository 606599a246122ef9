"""The team stack on loopback, started for real: PostgreSQL (MLflow's tracking and registry store), an S3-compatible
object store (moto's S3 backend behind serve_s3, with authentication on) and `mlflow server` proxying artifacts to it.

    stack = start(Path(".stack"))   # or: polycolor stack up [--dir .stack]
    stack.tracking_uri              # http://127.0.0.1:PORT, what MLFLOW_TRACKING_URI gets
    stop(Path(".stack"))            # or: polycolor stack down [--dir .stack]

Every service listens on 127.0.0.1 on a free port, logs to <dir>/logs/<service>.log (errors name the file) and is
stopped by its PID, recorded in <dir>/stack.json (0600) with its start time so that a reused PID is never signalled.
<dir> itself is 0700 (0711 as root, so that PostgreSQL's user can reach its data), every state file in it 0600.

Credentials stay out of URIs, params, tags and logs. PostgreSQL gets a password generated when its cluster is made;
the MLflow server reads it from a libpq password file (PGPASSFILE, mode 0600, in <dir>) so the backend URI carries
none. The MLflow server runs MLflow's basic authentication (`--app-name basic-auth`, users in the PostgreSQL
database mlflow_auth): one admin user, CLIENT_USER, whose password is generated the same way and kept in
<dir>/mlflow-password (0600); `up` prints exports that read it from there (the password itself never reaches
stdout or a log). An unauthenticated client can neither read nor write; users an admin adds get
default_permission READ. The object store accepts only the keys generated at the first `up` and kept in
<dir>/s3-keys (0600; s3_keys), set only in the environment of the S3 and MLflow servers: a request signed with other
keys, or not signed, gets 403, and moto's admin API (/moto-api/reset, reset-auth, ...) is not served. MLflow
clients need no S3 credentials at all, since artifacts go through the server (mlflow-artifacts:/).

The data lives in <dir> and outlives the processes. `up` starts what is not running, on the recorded ports and
the existing data: after a crash of one service (PostgreSQL killed) it restarts that one and leaves the others.
`down` stops every service and keeps the data: PostgreSQL's cluster in <dir>/pg, and the bucket, which moto keeps
in memory, copied to <dir>/s3.tar first (a new file that replaces the last dump only when complete) and put back by
the next `up` (objects written after the last `down` are lost when the S3 service itself crashes). A save that
fails leaves the last dump, and `down` still stops every service, then says so in one line. `down --purge`
discards everything. Production swaps these for a managed PostgreSQL and a real bucket, with only the URIs
changed: see docs/scaling.md.

PostgreSQL refuses to run as root: as root, initdb and postgres run as PG_OS_USER, a system user created for it at
the first `up` (useradd), which owns the cluster and must be able to enter <dir> (pick a folder under /tmp when
the default sits below a private home folder).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from polycolor.errors import PolycolorError, one_line
from polycolor.fileio import read_json

HOST = "127.0.0.1"
DB_USER = "polycolor"
DB_NAME = "mlflow"
BUCKET = "polycolor"
ARTIFACTS = f"s3://{BUCKET}/mlflow"   # the server's --artifacts-destination
PG_OS_USER = "polycolor-pg"           # who runs PostgreSQL when we are root: a system user made for it
S3_USER = "polycolor-stack"           # the S3 server's only user (serve_s3)
S3_KEYS = "s3-keys"                   # its access key id and secret, generated at the first `up`, 0600
AWS_REGION = {"AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
STATE = "stack.json"
STOP_TIMEOUT_S = 30.0
AUTH_DB = "mlflow_auth"              # MLflow's basic-auth users and permissions, beside the tracking database
CLIENT_USER = "polycolor"            # the pipeline's MLflow user: the registry's admin (its owner)
PASSWORD_FILE = "mlflow-password"    # CLIENT_USER's password, 0600
SECRET_FILE = "flask-secret"         # the auth app's CSRF key (MLFLOW_FLASK_SERVER_SECRET_KEY), 0600
AUTH_INI = "basic_auth.ini"          # MLFLOW_AUTH_CONFIG_PATH of the server, 0600 (holds the admin password)
S3_DUMP = "s3.tar"                   # the bucket's objects while the stack is down (a tar: one file, swapped whole)
S3_DUMP_V1 = "s3"                    # the folder older stacks dumped to: read by `up` when there is no tar
# What `down --purge` removes besides the logs (which stay, as after any run).
DATA = ("pg", "pgpass", PASSWORD_FILE, SECRET_FILE, AUTH_INI, S3_KEYS, S3_DUMP, S3_DUMP_V1, STATE)


@dataclass(frozen=True)
class Service:
    name: str
    pid: int
    started: float  # psutil create_time of the PID, so that a PID reused after a crash is never signalled
    log: str
    stop_signal: int  # postgres: SIGINT is its "fast shutdown"; the Python servers stop on SIGTERM
    port: int = 0     # where it listens; `up` restarts it there, so the URIs clients hold stay valid


@dataclass(frozen=True)
class Stack:
    dir: Path
    tracking_uri: str   # http://127.0.0.1:PORT: MLFLOW_TRACKING_URI for every client
    s3_endpoint: str    # http://127.0.0.1:PORT: the object store (DVC remote endpointurl, boto3 endpoint_url)
    artifacts: str      # s3://polycolor/mlflow: where the server puts artifacts
    backend_uri: str    # postgresql+psycopg2://polycolor@127.0.0.1:PORT/mlflow (no password: see PGPASSFILE)
    services: tuple[Service, ...]

    def exports(self) -> str:
        """Shell lines for `eval "$(polycolor stack up)"`: the server and the pipeline's login (the password read
        from its 0600 file by the shell, so it is never printed), then comments."""
        return "\n".join([
            f"export MLFLOW_TRACKING_URI={self.tracking_uri}",
            f"export MLFLOW_TRACKING_USERNAME={CLIENT_USER}",
            f'export MLFLOW_TRACKING_PASSWORD="$(cat {shlex.quote(str(self.dir / PASSWORD_FILE))})"',
            f"# tracking store {self.backend_uri}; artifacts {self.artifacts} via the server",
            f"# S3 endpoint {self.s3_endpoint} (bucket {BUCKET}; its only keys in {self.dir / S3_KEYS}); "
            f"logs in {self.dir / 'logs'}",
            f"# stop with: polycolor stack down --dir {self.dir} (keeps the data; --purge discards it)",
        ])

    def database_url(self, name: str) -> str:
        """The URL of database `name` beside MLflow's on the stack's PostgreSQL, created on first use (Optuna's
        study storage, the prediction log). The password comes from the stack's libpq password file (PGPASSFILE,
        set here), never the URL."""
        import sqlalchemy as sa

        os.environ.setdefault("PGPASSFILE", str(self.dir / "pgpass"))
        base, _, _ = self.backend_uri.rpartition("/")
        engine = sa.create_engine(self.backend_uri, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as c:
                if c.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).scalar() is None:
                    c.execute(sa.text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return f"{base}/{name}"

    def client_env(self) -> dict[str, str]:
        """The environment the pipeline's MLflow client needs: what exports() sets, with the password read."""
        return {"MLFLOW_TRACKING_URI": self.tracking_uri, "MLFLOW_TRACKING_USERNAME": CLIENT_USER,
                "MLFLOW_TRACKING_PASSWORD": (self.dir / PASSWORD_FILE).read_text().strip()}


# ------------------------------------------------------------------------------------------- helpers

def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (bind to port 0, let the kernel choose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def postgres_bindir() -> Path:
    """The folder of initdb/postgres/pg_isready: POLYCOLOR_PG_BINDIR, else Debian's newest
    /usr/lib/postgresql/N/bin, else wherever `postgres` is on PATH."""
    env = os.environ.get("POLYCOLOR_PG_BINDIR")
    found = [Path(env)] if env else sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                                           key=lambda p: int(re.sub(r"\D", "", p.parent.name) or 0), reverse=True)
    on_path = shutil.which("postgres")
    found += [Path(on_path).parent] if on_path else []
    for d in found:
        if (d / "postgres").is_file() and (d / "initdb").is_file():
            return d
    raise PolycolorError("PostgreSQL server binaries (initdb, postgres) not found: install them "
                         "(Debian: apt-get install -y postgresql) or set POLYCOLOR_PG_BINDIR")


def _log_tail(log: Path) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"


def answers(url: str, timeout: float = 2.0) -> bool:
    """Whether GET `url` answers HTTP 200 within `timeout` s."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except OSError:  # refused, reset, timed out, HTTP errors (URLError and HTTPError are OSErrors)
        return False


def wait_ready(name: str, proc: subprocess.Popen, log: Path, ready: Callable[[], bool], timeout: float) -> None:
    """Poll `ready()` until it is true; raise PolycolorError naming the log when the process exits or `timeout`
    passes. The one way every server polycolor starts (the stack's, the benchmarks', the tests') is waited for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PolycolorError(f"{name} exited with code {proc.returncode} while starting; see {log} "
                                 f"(last line: {_log_tail(log)})")
        if ready():
            return
        time.sleep(0.5)
    raise PolycolorError(f"{name} did not answer within {timeout:.0f} s; see {log} (last line: {_log_tail(log)})")


def _as_user() -> dict[str, Any]:
    """Popen arguments that drop root to PG_OS_USER (PostgreSQL refuses to run as root); none otherwise."""
    if os.geteuid() != 0:
        return {}
    import pwd

    try:
        pw = pwd.getpwnam(PG_OS_USER)
    except KeyError:
        _make_pg_user()
        pw = pwd.getpwnam(PG_OS_USER)
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def _make_pg_user() -> None:
    """Create PG_OS_USER, a system user (and group) of its own with no home and no login shell, so that the
    cluster's files belong to no one else (not `nobody`, which other daemons share)."""
    import pwd

    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    for _ in range(10):
        done = subprocess.run([useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                               "--shell", "/usr/sbin/nologin", "--comment", "polycolor stack PostgreSQL", PG_OS_USER],
                              capture_output=True, text=True, check=False)
        if done.returncode in (0, 9):  # 9: it exists (another `up` made it meanwhile)
            return
        try:  # two `up`s at once: the other one's useradd held /etc/passwd's lock, and may have made the user
            pwd.getpwnam(PG_OS_USER)
            return
        except KeyError:
            time.sleep(0.5)
    raise PolycolorError(f"cannot create the system user {PG_OS_USER} that runs PostgreSQL as root: "
                         f"useradd exit {done.returncode}: {done.stderr.strip() or done.stdout.strip()}")


def _own_cluster(pgdata: Path) -> None:
    """As root, hand a cluster made by an older stack (owned by `nobody`) to PG_OS_USER, file by file."""
    ids = _as_user()
    if not ids or pgdata.stat().st_uid == ids["user"]:
        return
    for root, dirs, files in os.walk(pgdata):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            os.chown(name, ids["user"], ids["group"], follow_symlinks=False)


def _give_to_pg_user(path: Path) -> None:
    ids = _as_user()
    if ids:
        os.chown(path, ids["user"], ids["group"])


def _write_secret(path: Path, text: str) -> None:
    """`text` in a file created 0600 (never readable by others, not even for a moment)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _service(name: str, proc: subprocess.Popen, log: Path, stop_signal: int, port: int) -> Service:
    import psutil

    return Service(name, proc.pid, psutil.Process(proc.pid).create_time(), str(log), int(stop_signal), port)


def _spawn(args: list[str], log: IO, env: dict[str, str], **kw: Any) -> subprocess.Popen:
    # A session of its own: the servers outlive `polycolor stack up`, and a Ctrl-C there does not reach them.
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True, **kw)


def _child_env(**extra: str) -> dict[str, str]:
    """This environment without MLflow, AWS and libpq settings of the caller, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_", "PG"))}
    # MLflow's server starts uvicorn from the bin/ of this Python
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


# ------------------------------------------------------------------------------------------- services

def _start_postgres(d: Path, logs: Path, timeout: float, port: int = 0) -> tuple[Service, int, Path]:
    """Start postgres on d/pg (on `port` when given), first making the cluster when there is none: initdb
    (password auth over TCP only, no unix socket), then the MLflow and auth databases. An existing cluster is
    started as it is (after a crash, PostgreSQL replays its write-ahead log: committed transactions survive).
    Returns the service, its port and the libpq password file."""
    bindir = postgres_bindir()
    pgdata, passfile = d / "pg", d / "pgpass"
    fresh = not ((pgdata / "PG_VERSION").is_file() and passfile.is_file())
    if fresh:
        _init_postgres(d, logs, bindir)
    else:
        _own_cluster(pgdata)
    port = port or free_port()
    env = _child_env(LC_ALL="C")
    log_path = logs / "postgres.log"
    with log_path.open("a") as log:
        proc = _spawn([str(bindir / "postgres"), "-D", str(pgdata), "-h", HOST, "-p", str(port), "-k", ""],
                      log, env, **_as_user())
    pg_env = _child_env(PGPASSFILE=str(passfile))

    def ready() -> bool:
        return subprocess.run([str(bindir / "pg_isready"), "-q", "-h", HOST, "-p", str(port), "-U", DB_USER,
                               "-d", "postgres"], env=pg_env, check=False).returncode == 0

    service = _service("postgres", proc, log_path, signal.SIGINT, port)
    try:
        wait_ready(f"postgres (port {port})", proc, log_path, ready, timeout)
        for db in ((DB_NAME, AUTH_DB) if fresh else ()):
            done = subprocess.run([str(bindir / "createdb"), "-h", HOST, "-p", str(port), "-U", DB_USER, db],
                                  env=pg_env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise PolycolorError(f"createdb {db} failed: {done.stderr.strip()}")
    except BaseException:
        _stop_service(service)
        raise
    return service, port, passfile


def _init_postgres(d: Path, logs: Path, bindir: Path) -> None:
    """initdb a new cluster in d/pg with a generated password for DB_USER, kept in the libpq file d/pgpass."""
    pgdata, pwfile, passfile = d / "pg", d / "pg-initpw", d / "pgpass"
    shutil.rmtree(pgdata, ignore_errors=True)
    pgdata.mkdir(mode=0o700)
    _give_to_pg_user(pgdata)
    password = secrets.token_urlsafe(24)
    as_user = _as_user()
    env = _child_env(LC_ALL="C")
    if as_user and subprocess.run(["test", "-w", str(pgdata)], check=False, **as_user).returncode != 0:
        raise PolycolorError(f"PostgreSQL runs as {PG_OS_USER} (it refuses root), who cannot enter {pgdata}: "
                             "pass a --dir that others can enter, e.g. /tmp/polycolor-stack")
    # The initial password goes through a 0600 file readable only by the PostgreSQL user, removed right after.
    _write_secret(pwfile, password + "\n")
    _give_to_pg_user(pwfile)
    init_log = logs / "initdb.log"
    try:
        with init_log.open("w") as log:
            rc = subprocess.run([str(bindir / "initdb"), "-D", str(pgdata), "-U", DB_USER, f"--pwfile={pwfile}",
                                 "--auth=scram-sha-256", "--no-locale", "--encoding=UTF8", "--no-sync"],
                                stdout=log, stderr=subprocess.STDOUT, env=env, check=False, **as_user).returncode
    finally:
        pwfile.unlink(missing_ok=True)
    if rc != 0:
        raise PolycolorError(f"initdb failed (exit {rc}); see {init_log} (last line: {_log_tail(init_log)})")
    # libpq's password file: the MLflow server and createdb find the password here, the URIs carry none.
    _write_secret(passfile, f"{HOST}:*:*:{DB_USER}:{password}\n")


def s3_keys(d: str | Path) -> dict[str, str]:
    """The stack's S3 keys (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), kept in d/s3-keys (0600) and generated
    there at the first `up`: the S3 server accepts no others."""
    path = Path(d) / S3_KEYS
    if not path.is_file():
        keys = {"AWS_ACCESS_KEY_ID": "AKIA" + secrets.token_hex(8).upper(),
                "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30)}
        _write_secret(path, json.dumps(keys) + "\n")
    return json.loads(path.read_text())


def s3_client(endpoint: str, keys: dict[str, str]):
    """A boto3 S3 client for the local object store with `keys` (s3_keys) passed explicitly (not via the
    environment, which may hold other ones)."""
    import boto3
    from botocore.config import Config as BotoConfig

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
                        region_name=AWS_REGION["AWS_DEFAULT_REGION"],
                        config=BotoConfig(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1}))


def _start_s3(d: Path, logs: Path, timeout: float, port: int = 0) -> tuple[Service, str]:
    """The S3 server (serve_s3, on `port` when given, else a free one), with the artifacts bucket created and the
    objects saved by the last `down` (d/s3.tar, or an older stack's folder d/s3) put back."""
    from botocore.exceptions import BotoCoreError, ClientError

    port = port or free_port()
    endpoint = f"http://{HOST}:{port}"
    log_path = logs / "s3.log"
    keys = s3_keys(d)
    with log_path.open("a") as log:
        proc = _spawn([sys.executable, "-m", "polycolor.stack", "s3", HOST, str(port)], log,
                      _child_env(**AWS_REGION, **keys))
    service = _service("s3", proc, log_path, signal.SIGTERM, port)
    client = s3_client(endpoint, keys)

    def ready() -> bool:
        try:
            client.list_buckets()
            return True
        except (BotoCoreError, ClientError):
            return False

    try:
        wait_ready(f"S3 server (moto, port {port})", proc, log_path, ready, timeout)
        client.create_bucket(Bucket=BUCKET)
        _restore_bucket(client, d)
    except BaseException:
        _stop_service(service)
        raise
    return service, endpoint


def _restore_bucket(client: Any, d: Path) -> None:
    """Put the objects of the last dump back: d/s3.tar (read member by member, nothing is extracted to disk), or
    the folder d/s3 an older stack wrote."""
    import tarfile

    dump, folder = d / S3_DUMP, d / S3_DUMP_V1
    if dump.is_file():
        try:
            with tarfile.open(dump) as tar:
                for member in tar:
                    if member.isfile():
                        client.upload_fileobj(tar.extractfile(member), BUCKET, member.name)
        except tarfile.TarError as e:
            raise PolycolorError(f"cannot read the bucket's dump {dump} ({one_line(e)}): restore it from a backup, "
                                 f"or move it aside (mv {dump} {dump}.bad) to start with an empty bucket") from None
    elif folder.is_dir():
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                client.upload_file(str(f), BUCKET, f.relative_to(folder).as_posix())


def _save_bucket(client: Any, d: Path) -> int:
    """Copy every object of the bucket into d/s3.tar (moto keeps them only in memory); returns their number.

    The objects go to d/s3.tar.new, which replaces the dump (one rename) only when every object is in it and it
    is on disk: a failed save (the server gone, NoSuchBucket, a full disk) leaves the last dump as it was. An
    empty bucket never replaces a dump that holds objects (an emptied bucket is the likelier cause than a
    deliberate clean-up): PolycolorError, and the dump stays."""
    import tarfile

    dump, tmp = d / S3_DUMP, d / (S3_DUMP + ".new")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    count = 0
    try:
        with os.fdopen(fd, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w") as tar:
                for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
                    for obj in page.get("Contents", []):
                        body = client.get_object(Bucket=BUCKET, Key=obj["Key"])
                        info = tarfile.TarInfo(obj["Key"])
                        info.size, info.mtime = body["ContentLength"], body["LastModified"].timestamp()
                        tar.addfile(info, body["Body"])
                        count += 1
            raw.flush()
            os.fsync(raw.fileno())
        if count == 0 and (held := _dump_size(d)):
            raise PolycolorError(f"the bucket {BUCKET} is empty but the last dump {dump} holds {held} objects: "
                                 f"kept that dump (the next up puts them back); if the bucket was emptied on "
                                 f"purpose, remove {dump} first")
        os.replace(tmp, dump)
    finally:
        tmp.unlink(missing_ok=True)
    shutil.rmtree(d / S3_DUMP_V1, ignore_errors=True)  # an older stack's folder: the tar holds it all now
    return count


def _dump_size(d: Path) -> int | None:
    """How many objects the last dump holds (the tar, or an older stack's folder); None when the tar is
    unreadable."""
    import tarfile

    if (d / S3_DUMP).is_file():
        try:
            with tarfile.open(d / S3_DUMP) as tar:
                return sum(m.isfile() for m in tar)
        except (tarfile.TarError, OSError):
            return None
    folder = d / S3_DUMP_V1
    return sum(f.is_file() for f in folder.rglob("*")) if folder.is_dir() else 0


def _secret(path: Path) -> str:
    """The secret kept in `path` (0600), generated on first use."""
    if not path.is_file():
        _write_secret(path, secrets.token_urlsafe(24) + "\n")
    return path.read_text().strip()


def _auth_setup(d: Path, pg_port: int, passfile: Path) -> dict[str, str]:
    """Write the auth app's config (users in PostgreSQL's AUTH_DB; CLIENT_USER the admin, its password from
    d/mlflow-password), create its tables once (the server's workers would race to), and return the environment
    the server needs for it."""
    auth_uri = f"postgresql+psycopg2://{DB_USER}@{HOST}:{pg_port}/{AUTH_DB}"
    ini = d / AUTH_INI
    _write_secret(ini, "\n".join([
        "[mlflow]",
        "default_permission = READ",
        f"database_uri = {auth_uri}",
        f"admin_username = {CLIENT_USER}",
        f"admin_password = {_secret(d / PASSWORD_FILE)}",  # read only when the user does not exist yet
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
        ""]))
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_FLASK_SERVER_SECRET_KEY": _secret(d / SECRET_FILE)}
    done = subprocess.run([sys.executable, "-c", "from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore; "
                           f"SqlAlchemyStore().init_db({auth_uri!r})"],
                          env=_child_env(PGPASSFILE=str(passfile), **env), capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise PolycolorError(f"creating MLflow's auth tables in {AUTH_DB} failed: {last}")
    return env


def _start_mlflow(d: Path, pg_port: int, s3_endpoint: str, passfile: Path, logs: Path, timeout: float,
                  workers: int, port: int = 0) -> tuple[Service, str]:
    port = port or free_port()
    uri = f"http://{HOST}:{port}"
    log_path = logs / "mlflow.log"
    backend_uri = f"postgresql+psycopg2://{DB_USER}@{HOST}:{pg_port}/{DB_NAME}"
    # No job runner: it serves GenAI scoring and trace archival, which polycolor does not use, at the cost of seven
    # huey consumer processes on a 2-core machine and ~20 s to stop.
    env = _child_env(PGPASSFILE=str(passfile), MLFLOW_S3_ENDPOINT_URL=s3_endpoint,
                     MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **AWS_REGION, **s3_keys(d),
                     **_auth_setup(d, pg_port, passfile))
    with log_path.open("a") as log:
        proc = _spawn([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
                       "--artifacts-destination", ARTIFACTS, "--host", HOST, "--port", str(port),
                       "--workers", str(workers), "--app-name", "basic-auth"], log, env)
    service = _service("mlflow", proc, log_path, signal.SIGTERM, port)

    try:
        # The first start creates MLflow's schema in PostgreSQL (its migrations): tens of seconds on 2 cores.
        wait_ready(f"mlflow server (port {port})", proc, log_path, lambda: answers(f"{uri}/health"), timeout)
    except BaseException:
        _stop_service(service)
        raise
    return service, uri


# ------------------------------------------------------------------------------------------- up / down

def _alive(s: Service) -> bool:
    import psutil

    try:
        p = psutil.Process(s.pid)
        return abs(p.create_time() - s.started) < 1e-3 and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _stop_service(s: Service) -> None:
    """Stop one service by its PID (its process group for the Python servers, whose workers are children):
    its stop signal, up to STOP_TIMEOUT_S, then SIGKILL."""
    if not _alive(s):
        return
    group = s.name != "postgres"  # postgres stops its own backends; signalling them directly is discouraged
    send = (lambda sig: os.killpg(s.pid, sig)) if group else (lambda sig: os.kill(s.pid, sig))
    try:
        send(s.stop_signal)
        if not _gone(s, STOP_TIMEOUT_S):
            os.killpg(s.pid, signal.SIGKILL)
            _gone(s, STOP_TIMEOUT_S)
    except ProcessLookupError:
        pass


def _gone(s: Service, timeout: float) -> bool:
    """Wait until `s` has exited (a zombie that another process has yet to reap counts as exited), reaping it when
    it is our child; False when it still runs after `timeout` s."""
    import psutil

    deadline = time.monotonic() + timeout
    while _alive(s):
        if time.monotonic() > deadline:
            return False
        try:
            psutil.Process(s.pid).wait(0.2)
        except psutil.TimeoutExpired:
            pass
        except psutil.NoSuchProcess:
            break
    return True


def dead_services(d: str | Path) -> list[str]:
    """The recorded services of the stack in `d` that are not running (all of them after `down`; none when no
    stack is recorded)."""
    d = Path(d).resolve()
    return [s.name for s in load(d).services if not _alive(s)] if (d / STATE).is_file() else []


def start(d: str | Path, *, timeout: float = 180.0, workers: int = 2) -> Stack:
    """Start whatever of PostgreSQL, the S3 server and the MLflow server is not running in `d`, on the recorded
    ports (free loopback ports the first time) and the existing data, record them in d/stack.json and return
    their URIs. Services that were running are left alone; whatever this call started is stopped again if a later
    step fails. Everything running already is an error."""
    d = Path(d).resolve()
    prev = load(d) if (d / STATE).is_file() else None
    alive = {s.name: s for s in (prev.services if prev else ()) if _alive(s)}
    if prev and len(alive) == len(prev.services):
        raise PolycolorError(f"a stack is already up in {d}: polycolor stack down --dir {d}")
    ports = {s.name: s.port for s in prev.services} if prev else {}
    logs = d / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # Only this user lists or reads the folder; as root, PostgreSQL's user must still enter it to reach its data.
    d.chmod(0o711 if os.geteuid() == 0 else 0o700)
    started: list[Service] = []
    try:
        if "postgres" in alive:
            pg, pg_port, passfile = alive["postgres"], alive["postgres"].port, d / "pgpass"
        else:
            pg, pg_port, passfile = _start_postgres(d, logs, timeout, ports.get("postgres", 0))
            started.append(pg)
        if "s3" in alive:
            s3, s3_endpoint = alive["s3"], prev.s3_endpoint
        else:
            s3, s3_endpoint = _start_s3(d, logs, timeout, ports.get("s3", 0))
            started.append(s3)
        if "mlflow" in alive:
            ml, uri = alive["mlflow"], prev.tracking_uri
        else:
            ml, uri = _start_mlflow(d, pg_port, s3_endpoint, passfile, logs, timeout, workers, ports.get("mlflow", 0))
            started.append(ml)
    except BaseException:
        for s in reversed(started):
            _stop_service(s)
        raise
    backend = f"postgresql+psycopg2://{DB_USER}@{HOST}:{pg_port}/{DB_NAME}"
    stack = Stack(d, uri, s3_endpoint, ARTIFACTS, backend, (pg, s3, ml))
    _save_state(stack)
    return stack


def _save_state(stack: Stack) -> None:
    """d/stack.json, 0600 from its creation: written to a private temporary, then renamed over the old one."""
    state = {**asdict(stack), "dir": str(stack.dir), "services": [asdict(s) for s in stack.services]}
    tmp = stack.dir / (STATE + ".new")
    _write_secret(tmp, json.dumps(state, indent=2) + "\n")
    os.replace(tmp, stack.dir / STATE)


def load(d: str | Path) -> Stack:
    """The stack recorded in d/stack.json."""
    d = Path(d).resolve()
    try:
        raw = read_json(d / STATE)
    except FileNotFoundError:
        raise PolycolorError(f"no stack recorded in {d} ({STATE} missing): nothing to stop") from None
    services = tuple(Service(**s) for s in raw.pop("services"))
    return Stack(**{**raw, "dir": d, "services": services})


def stop(d: str | Path, *, purge: bool = False) -> list[str]:
    """Stop every service recorded in d/stack.json, newest first; returns the names of those that were still
    running. The data stays for the next `up` (the bucket is saved to d/s3.tar first, see _save_bucket); with
    `purge` it goes: PostgreSQL's d/pg, the saved bucket, the keys and password files and the record (the logs
    stay). A save that fails does not stop the stop: every service is stopped, then one PolycolorError line says
    that the bucket was not saved and which dump was kept."""
    from botocore.exceptions import BotoCoreError, ClientError

    stack = load(d)
    running = [s.name for s in stack.services if _alive(s)]
    unsaved = None
    if "s3" in running and not purge:
        try:
            _save_bucket(s3_client(stack.s3_endpoint, s3_keys(stack.dir)), stack.dir)
        except (BotoCoreError, ClientError, OSError, PolycolorError) as e:
            unsaved = e
    failed = []
    for s in reversed(stack.services):  # every one, even when stopping another failed
        try:
            _stop_service(s)
        except OSError as e:
            failed.append(f"{s.name} (pid {s.pid}: {one_line(e)})")
    if failed:
        raise PolycolorError(f"could not stop {', '.join(failed)}; the others are stopped; the data is kept in "
                             f"{stack.dir}" + ("" if unsaved is None else f", but the bucket was not saved "
                                                                        f"({type(unsaved).__name__})"))
    if purge:
        for name in DATA:
            path = stack.dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    if unsaved is not None:
        held = _dump_size(stack.dir)
        dump = stack.dir / (S3_DUMP if (stack.dir / S3_DUMP).is_file() else S3_DUMP_V1)
        kept = (f"kept the last dump {dump} ({'unreadable' if held is None else f'{held} objects'})"
                if dump.exists() else "there is no earlier dump")
        raise PolycolorError(f"stopped {', '.join(running)}, but the bucket was not saved "
                             f"({type(unsaved).__name__}: {one_line(unsaved)}); {kept}")
    return running


# ------------------------------------------------------------------------------------------- the S3 server

S3_REFUSED = ("/moto-api", "/favicon.ico")  # moto's admin API (reset, reset-auth, data, dashboard): never served


def serve_s3(host: str, port: int) -> None:
    """The stack's S3 server, in this process (`python -m polycolor.stack s3 HOST PORT`): moto's S3 backend and
    nothing else, with IAM authentication on from the first request (moto's INITIAL_NO_AUTH_ACTION_COUNT = 0). Its
    only user, S3_USER, holds the keys in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY of this process's environment
    (the stack's <dir>/s3-keys, 0600); every request must be signed with them, and moto's admin endpoints
    (/moto-api/reset, /moto-api/reset-auth, ...) answer 403: moto's own server would serve them to anyone."""
    os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"  # read by moto.settings at import
    from moto import settings
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.iam.models import iam_backends
    from moto.moto_server.werkzeug_app import MotoRequestHandler, create_backend_app
    from werkzeug.serving import run_simple

    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    key_id, secret = os.environ.pop("AWS_ACCESS_KEY_ID"), os.environ.pop("AWS_SECRET_ACCESS_KEY")
    iam = iam_backends[DEFAULT_ACCOUNT_ID]["aws"]
    iam.create_user("us-east-1", S3_USER)
    key = iam.create_access_key(S3_USER)  # moto generates a key: ours replaces it, under its own id
    del iam.access_keys[key.physical_resource_id]
    key.access_key_id, key.secret_access_key = key_id, secret
    iam.access_keys[key.physical_resource_id] = key
    iam.put_user_policy(S3_USER, "s3", json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    s3_app = create_backend_app("s3")

    def app(environ: dict[str, Any], start_response: Callable) -> Any:
        # moto checks the signature of a request with an Authorization header; one without (anonymous, or a
        # presigned URL, which the stack never hands out) would reach its ACL code or fail inside it.
        refused = ("moto's admin API is off on the polycolor stack" if environ.get("PATH_INFO", "").startswith(
            S3_REFUSED) else None if environ.get("HTTP_AUTHORIZATION") else "sign the request with the stack's keys")
        if refused:
            start_response("403 Forbidden", [("Content-Type", "application/xml")])
            return [f"<Error><Code>AccessDenied</Code><Message>{refused}</Message></Error>\n".encode()]
        return s3_app(environ, start_response)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run_simple(host, port, app, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__" and sys.argv[1:2] == ["s3"]:
    serve_s3(sys.argv[2], int(sys.argv[3]))
