"""The DVC pipeline as a user drives it, on a tiny copy of the project (a temporary git + DVC
repository, the demo profile shrunk by params): after `dvc repro` and a commit, runtime knobs
leave `dvc status` clean, queued head-only experiments (`dvc queue start -j 2`) run `train` and
`evaluate` alone, and an evaluate-only experiment runs `evaluate` alone."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# The demo profile shrunk to seconds a stage (every stage of dvc.yaml still runs).
TINY = {
    "synth": {"num_classes": 2, "train": 6, "val": 3, "test": 3, "width": 32, "height": 32,
              "two_label": 0},
    "extract": {"frames_per_segment": 1, "shard_videos": 8},
    "finetune": {"segments_per_clip": 1, "batch_size": 4, "epochs": 1},
    "train": {"epochs": 2},
    "evaluate": {"timelines": 1},
    "runtime": {"synth": {"workers": 1}, "data": {"workers": 1}, "extract": {"workers": 0},
                "finetune": {"workers": 1}},
}
# Every runtime knob changed, and another head's overrides: no stage may re-run.
NO_RERUN = {
    "runtime": {"synth": {"workers": 2}, "data": {"workers": 2},
                "extract": {"workers": 1, "queue_batches": 2, "download": False},
                "finetune": {"workers": 2, "download": True, "resume": False},
                "train": {"resume": False}},
    "heads": {"avel": {"dropout": 0.3}},
}
EXPERIMENTS = {  # name -> (-S arguments, the stages it must run)
    "head-avel": (["train.head=avel"], {"train", "evaluate"}),
    "head-audio-only": (["train.head=audio_only"], {"train", "evaluate"}),
    "eval-batch": (["evaluate.batch_size=8"], {"evaluate"}),
}


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _tracked_files() -> list[str]:
    proc = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        pytest.skip("needs the project as a git checkout")
    return [f for f in proc.stdout.splitlines() if (REPO / f).is_file()]


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory):
    """A git + DVC repository of the project's tracked files with the tiny params, committed."""
    root = tmp_path_factory.mktemp("dvcrepo")
    for f in _tracked_files():
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, root / f)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(_merge(params, TINY), sort_keys=False))
    env = {**os.environ, "PYTHONPATH": ".",  # each workspace's own code, queued ones included
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1"}
    env.pop("DVC_ROOT", None)

    def sh(*cmd: str, check: bool = True, timeout: float = 3600) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(cmd), cwd=root, env=env, capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode:
            raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    sh("git", "init", "-q")
    sh("git", "add", "-A")
    sh("git", "commit", "-q", "-m", "tiny project")
    t0 = time.monotonic()
    sh(sys.executable, "-m", "dvc", "repro")
    print(f"tiny dvc repro: {time.monotonic() - t0:.1f} s")
    sh("git", "add", "-A")
    sh("git", "commit", "-q", "-m", "reproduced")
    return root, sh


def _dvc(sh, *args, **kw):
    return sh(sys.executable, "-m", "dvc", *args, **kw)


def test_runtime_knobs_and_other_heads_leave_the_pipeline_up_to_date(tiny_repo):
    root, sh = tiny_repo
    assert "up to date" in _dvc(sh, "status", "dvc.yaml").stdout
    text = (root / "params.yaml").read_text()
    params = yaml.safe_load(text)
    (root / "params.yaml").write_text(yaml.safe_dump(_merge(params, NO_RERUN), sort_keys=False))
    try:
        status = _dvc(sh, "status", "dvc.yaml").stdout
        assert "up to date" in status, status
        params["heads"]["psp"] = {"dropout": 0.3}  # the trained head's own overrides do count
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        status = _dvc(sh, "status", "dvc.yaml").stdout
        assert "train:" in status and "extract" not in status and "finetune" not in status
    finally:
        (root / "params.yaml").write_text(text)


def test_queued_experiments_run_only_the_stages_their_params_reach(tiny_repo):
    root, sh = tiny_repo
    for name, (sets, _) in EXPERIMENTS.items():
        _dvc(sh, "exp", "run", "--queue", "-n", name, *[a for s in sets for a in ("-S", s)])
    t0 = time.monotonic()
    _dvc(sh, "queue", "start", "-j", "2")
    while time.monotonic() - t0 < 3600:
        status = _dvc(sh, "queue", "status").stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        time.sleep(3)
    print(f"3 queued experiments, 2 at a time: {time.monotonic() - t0:.1f} s\n{status}")
    for name, (_, expected) in EXPERIMENTS.items():
        log = _dvc(sh, "queue", "logs", name).stdout
        ran = set(re.findall(r"Running stage '([^']+)'", log))
        assert ran == expected, f"{name}: ran {sorted(ran)}, expected {sorted(expected)}\n{log[-3000:]}"
        assert re.search(rf"{re.escape(name)}\s.*Success", status), status
    _dvc(sh, "queue", "stop", check=False)
