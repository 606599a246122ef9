"""A DVC remote on S3 (the team stack's S3 server, conftest.team_stack) and a bare git remote in a local folder:
after a tiny repro, `dvc push` and `git push`; a fresh clone with `dvc pull` has the same data, checkpoints and
model byte for byte and nothing to reproduce; a named experiment goes out with `dvc exp push` and comes back on a
second clone with `dvc exp pull`.

The S3 keys are the stack's own (stack.s3_keys: generated at its first `up`, the only ones its S3 server accepts), set per clone with `dvc remote modify --local` (.dvc/config.local, which
DVC's own .gitignore keeps out of git), as a team member sets real ones on a new machine."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
from conftest import new_project, sh, tree_digest

from polycolor import stack as stack_mod

pytestmark = pytest.mark.slow

REMOTE = f"s3://{stack_mod.BUCKET}/dvc"
# What a clone must get back from the remote: every cached output of the pipeline.
CACHED = ("data/dataset", "data/augmented", "checkpoints", "models/model.pt", "package")
UP_TO_DATE = "Data and pipelines are up to date"


def dvc(*args: str, cwd: Path, env: dict) -> str:
    p = sh([sys.executable, "-m", "dvc", *args], cwd, env)
    return p.stdout + p.stderr


def set_credentials(repo: Path, env: dict) -> None:
    """The stack's S3 keys in this clone's .dvc/config.local, never in the committed .dvc/config."""
    keys = stack_mod.s3_keys(env["POLYCOLOR_TEST_STACK_DIR"])
    dvc("remote", "modify", "--local", "storage", "access_key_id", keys["AWS_ACCESS_KEY_ID"], cwd=repo, env=env)
    dvc("remote", "modify", "--local", "storage", "secret_access_key", keys["AWS_SECRET_ACCESS_KEY"], cwd=repo,
        env=env)


def digest(repo: Path, out: str) -> dict[str, str] | str:
    p = repo / out
    return tree_digest(p) if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def repos(tmp_path_factory, team_stack):
    """The project (tiny params) with the S3 remote as its default DVC remote and a bare git repo as origin."""
    base = tmp_path_factory.mktemp("remote")
    root, bare = base / "polycolor", base / "origin.git"
    env = new_project(root)
    env = {k: v for k, v in env.items() if not k.startswith("AWS_")}  # only config.local holds keys
    env["POLYCOLOR_TEST_STACK_DIR"] = str(team_stack.dir)  # where set_credentials reads the keys
    dvc("remote", "add", "-d", "storage", REMOTE, cwd=root, env=env)
    dvc("remote", "modify", "storage", "endpointurl", team_stack.s3_endpoint, cwd=root, env=env)
    set_credentials(root, env)
    sh(["git", "init", "-q", "--bare", "-b", "main", str(bare)], base, env)
    sh(["git", "remote", "add", "origin", str(bare)], root, env)
    sh(["git", "add", ".dvc/config"], root, env)
    sh(["git", "commit", "-qm", "S3 remote"], root, env)
    committed = sh(["git", "show", "HEAD:.dvc/config"], root, env).stdout
    assert "secret" not in committed and "access_key" not in committed, "keys must stay out of git"
    return base, root, bare, env


def clone(repos, name: str) -> Path:
    base, _, bare, env = repos
    sh(["git", "clone", "-q", str(bare), name], base, env)
    repo = base / name
    for args in (["git", "config", "user.email", "ci@polycolor.invalid"], ["git", "config", "user.name", "tests"]):
        sh(args, repo, env)
    set_credentials(repo, env)
    return repo


def test_push_then_a_fresh_clone_pulls_everything_and_is_up_to_date(repos):
    _, root, _, env = repos
    dvc("repro", cwd=root, env=env)
    sh(["git", "add", "-A"], root, env)
    sh(["git", "commit", "-qm", "tiny repro"], root, env)
    pushed = dvc("push", cwd=root, env=env)
    assert "pushed" in pushed, pushed
    sh(["git", "push", "-q", "origin", "main"], root, env)

    repo = clone(repos, "clone1")
    assert not any((repo / out).exists() for out in CACHED), "outputs must come from the DVC remote, not git"
    dvc("pull", cwd=repo, env=env)
    for out in CACHED:
        assert digest(repo, out) == digest(root, out), f"{out} differs after dvc pull"
    assert UP_TO_DATE in dvc("status", cwd=repo, env=env)
    assert UP_TO_DATE in dvc("repro", cwd=repo, env=env)


def test_a_named_experiment_travels_through_the_remotes(repos):
    _, root, _, env = repos
    dvc("exp", "run", "-n", "remote-exp", "-S", "train.lr=0.004", cwd=root, env=env)
    model = digest(root, "models/model.pt")
    dvc("exp", "push", "origin", "remote-exp", cwd=root, env=env)

    repo = clone(repos, "clone2")
    dvc("exp", "pull", "origin", "remote-exp", cwd=repo, env=env)
    assert "remote-exp" in dvc("exp", "list", "--name-only", cwd=repo, env=env)
    dvc("exp", "apply", "remote-exp", cwd=repo, env=env)
    assert "lr: 0.004" in (repo / "params.yaml").read_text()
    assert digest(repo, "models/model.pt") == model, "the experiment's model did not come back"
    assert UP_TO_DATE in dvc("status", cwd=repo, env=env)
