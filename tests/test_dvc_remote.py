"""Sharing runs through a DVC remote, as README "Share runs with your team" does it, on a tiny
copy of the project (see test_dvc_pipeline.py): a local folder remote and an S3-compatible
server started here on 127.0.0.1 (moto's server mode: the test double of a real service).

Clone A runs the pipeline and an experiment, commits, `dvc push`es and `dvc exp push`es; clone B
(a fresh clone of the shared git repository) `dvc pull`s: `dvc status` is clean and `dvc repro`
runs nothing; A's experiment shows in B's `dvc exp show` with its metrics, and `dvc exp apply` +
`dvc pull` restore its model. `dvc get` gives the trained head (and the tuned encoders its
features came from) without a clone, and `localize` runs on it."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from test_dvc_pipeline import tiny_copy

pytestmark = pytest.mark.slow

EXPERIMENT = "cmbs1"
S3 = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
      "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("dvc_s3")
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    before = {k: os.environ.get(k) for k in S3}
    os.environ.update(S3)  # the dvc processes' credentials (the clones copy os.environ)
    boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket="team")
    yield url
    server.stop()
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _dvc(sh, *args, **kw):
    return sh(sys.executable, "-m", "dvc", *args, **kw)


def _named(node, name: str):
    """The entry of ``dvc exp show --json`` named ``name`` (with its ``data``), or None."""
    if isinstance(node, dict):
        if node.get("name") == name and "data" in node:
            return node
        node = list(node.values())
    if isinstance(node, list):
        for child in node:
            found = _named(child, name)
            if found is not None:
                return found
    return None


def _ran(out: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", out))


@pytest.fixture(scope="module")
def shared(tmp_path_factory, s3_endpoint):
    """Clone A: the project with both remotes configured (the folder one the default), its demo
    run committed as the baseline and pushed to a bare git repository, and one experiment."""
    base = tmp_path_factory.mktemp("remote")
    a, git_remote, folder = base / "a", base / "shared.git", base / "dvc-store"
    a.mkdir()
    sh = tiny_copy(a)
    subprocess.run(["git", "init", "-q", "--bare", str(git_remote)], check=True)
    _dvc(sh, "remote", "add", "-d", "folder", str(folder))
    _dvc(sh, "remote", "add", "s3", "s3://team/ave")
    _dvc(sh, "remote", "modify", "s3", "endpointurl", s3_endpoint)
    _dvc(sh, "repro")
    sh("git", "add", "-A")  # README command 1's commit (dvc.lock, reports), and .dvc/config
    sh("git", "commit", "-q", "-m", "Baseline: the demo run on this machine")
    sh("git", "remote", "add", "origin", str(git_remote))
    sh("git", "push", "-q", "origin", "HEAD:main")
    exp = _dvc(sh, "exp", "run", "-n", EXPERIMENT, "-S", "train.head=cmbs", "-S", "train.epochs=1")
    assert _ran(exp.stdout) == {"resolve", "train", "evaluate"}, exp.stdout
    model = (a / "models" / "best.pt").read_bytes()
    metrics = json.loads((a / "reports" / "evaluate.json").read_text())
    sh("git", "checkout", "-q", "--", ".")  # back to the baseline, as a user after an experiment
    _dvc(sh, "checkout", "-f", "-q")
    return {"a": a, "sh": sh, "git": git_remote, "model": model, "metrics": metrics, "base": base}


@pytest.mark.parametrize("remote", ["folder", "s3"])
def test_push_from_one_clone_pull_in_another(shared, remote):
    sh, base = shared["sh"], shared["base"]
    pushed = _dvc(sh, "push", "-r", remote)
    print(f"A$ dvc push -r {remote}\n{pushed.stdout.strip()}")
    exp_pushed = _dvc(sh, "exp", "push", "-r", remote, "origin", EXPERIMENT)
    print(f"A$ dvc exp push -r {remote} origin {EXPERIMENT}\n{exp_pushed.stdout.strip()}")

    b = base / f"b-{remote}"
    subprocess.run(["git", "clone", "-q", "-b", "main", str(shared["git"]), str(b)], check=True)
    env = {**os.environ, "PYTHONPATH": ".", "DVC_NO_ANALYTICS": "1",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    env.pop("DVC_ROOT", None)

    def dvc_b(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=b, env=env,
                              capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        print(f"B$ dvc {' '.join(args)}\n{proc.stdout.strip()}")
        return proc

    dvc_b("pull", "-r", remote)
    assert "up to date" in dvc_b("status").stdout
    assert not _ran(dvc_b("repro").stdout)  # everything came from the remote

    dvc_b("exp", "pull", "-r", remote, "origin", EXPERIMENT)
    table = json.loads(dvc_b("exp", "show", "--json").stdout)
    found = _named(table, EXPERIMENT)
    assert found is not None, table
    got = found["data"]["metrics"]["reports/evaluate.json"]["data"]
    assert got == shared["metrics"], (got, shared["metrics"])
    dvc_b("exp", "apply", EXPERIMENT)
    dvc_b("pull", "-r", remote)
    assert (b / "models" / "best.pt").read_bytes() == shared["model"]


def test_dvc_get_gives_a_head_localize_runs(shared, tmp_path):
    a = shared["a"]
    _dvc(shared["sh"], "push")  # the default remote (the folder); nothing new if already pushed
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(a)}
    env.pop("DVC_ROOT", None)
    user = tmp_path / "user"  # no clone: the head and the tuned encoders its features came from
    user.mkdir()
    for path in ("models/best.pt", "data/finetune"):
        proc = subprocess.run([sys.executable, "-m", "dvc", "get", str(shared["git"]), path,
                               "--rev", "main", "-o", path], cwd=user, env=env,
                              capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    clip = next((a / "raw" / "demo" / "AVE").glob("*.mp4"))
    proc = subprocess.run([sys.executable, "-m", "pipeline.localize", str(clip), "--model",
                           "models/best.pt", "--out", "localized"], cwd=user, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((user / "localized" / f"{clip.stem}.json").read_text())
    assert len(result["segments"]) == 10, result
