"""The DVC pipeline as a user drives it, on a tiny copy of the project (a temporary git + DVC
repository, the demo profile shrunk by params written as `dvc exp run -S` writes them): after
`dvc repro` and a commit (the baseline), `dvc status` is clean; runtime knobs and another head's
overrides re-run no expensive stage; queued head-only experiments (`dvc queue start -j 2`) run
`train` and `evaluate` alone, and an evaluate-only experiment runs `evaluate` alone; a mistyped
head is one line naming the heads, and removes nothing; an experiment in the workspace prints no
warning, changes one line of params.yaml a value, and is compared with the baseline by
`dvc metrics diff`, `dvc plots diff` and a readable `dvc exp show --only-changed`; `dvc exp apply`
succeeds."""
from __future__ import annotations

import json
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
    "extract": {"common": {"shard_videos": 8}, "visual": {"frames_per_segment": 1}},
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
    "heads": {"avel": {"lstm_hidden": 64}},
}
EXPERIMENTS = {  # name -> (-S arguments, the stages it must run)
    "head-avel": (["train.head=avel"], {"resolve", "train", "evaluate"}),
    "head-audio-only": (["train.head=audio_only"], {"resolve", "train", "evaluate"}),
    "eval-batch": (["evaluate.batch_size=8"], {"evaluate"}),
}


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _overrides(d: dict, prefix: str = "") -> list[str]:
    """``{"a": {"b": 1}}`` -> ``["a.b=1"]`` (Hydra override syntax, as ``dvc exp run -S``)."""
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _overrides(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}={'null' if v is None else str(v).lower() if isinstance(v, bool) else v}")
    return out


def _tracked_files() -> list[str]:
    proc = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        pytest.skip("needs the project as a git checkout")
    return [f for f in proc.stdout.splitlines() if (REPO / f).is_file()]


def tiny_copy(root: Path, exclude: str = ""):
    """The project's tracked files in ``root`` with the tiny params (written by DVC's own writer,
    as `-S` does), without the committed baseline (this repository makes its own); returns
    ``sh(*cmd, check=True, timeout=3600) -> CompletedProcess`` running in ``root``, with git
    initialised (``exclude``: lines for .git/info/exclude)."""
    for f in _tracked_files():
        if f == "dvc.lock" or (f.startswith("reports/") and not f.endswith("README.md")):
            continue
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, root / f)
    from dvc.utils.hydra import apply_overrides
    apply_overrides(root / "params.yaml", _overrides(TINY))
    env = {**os.environ, "PYTHONPATH": ".",  # each workspace's own code, queued ones included
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1"}
    env.pop("DVC_ROOT", None)

    def sh(*cmd: str, check: bool = True, timeout: float = 3600) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(cmd), cwd=root, env=env, capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode:
            raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-3000:]}")
        return proc

    sh("git", "init", "-q")
    if exclude:
        (root / ".git" / "info" / "exclude").write_text(exclude)
    sh("git", "add", "-A")
    sh("git", "commit", "-q", "-m", "tiny project")
    return sh


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory):
    """A git + DVC repository of the project's tracked files with the tiny params, reproduced
    and committed."""
    root = tmp_path_factory.mktemp("dvcrepo")
    sh = tiny_copy(root)
    t0 = time.monotonic()
    sh(sys.executable, "-m", "dvc", "repro")
    print(f"tiny dvc repro: {time.monotonic() - t0:.1f} s")
    sh("git", "add", "-A")
    sh("git", "commit", "-q", "-m", "reproduced")
    return root, sh


def _dvc(sh, *args, **kw):
    return sh(sys.executable, "-m", "dvc", *args, **kw)


def _changed_stages(status: str) -> set[str]:
    return set(re.findall(r"^(\S+):\s*$", status, re.M))


def test_runtime_knobs_and_other_heads_leave_the_pipeline_up_to_date(tiny_repo):
    root, sh = tiny_repo
    status = _dvc(sh, "status").stdout  # every stage DVC knows: no optional part is listed
    assert "up to date" in status, status
    text = (root / "params.yaml").read_text()
    params = yaml.safe_load(text)
    (root / "params.yaml").write_text(yaml.safe_dump(_merge(params, NO_RERUN), sort_keys=False))
    try:  # another head's overrides re-run the checking stage alone (its output keeps its bytes)
        status = _dvc(sh, "status", "dvc.yaml").stdout
        assert _changed_stages(status) <= {"resolve"}, status
        repro = _dvc(sh, "repro").stdout
        assert set(re.findall(r"Running stage '([^']+)'", repro)) <= {"resolve"}, repro
        status = _dvc(sh, "status", "dvc.yaml").stdout
        assert "up to date" in status, status
        params["heads"]["psp"] = {"dropout": 0.3}  # the trained head's own overrides do count
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        _dvc(sh, "repro", "resolve")
        status = _dvc(sh, "status", "dvc.yaml").stdout
        assert "train:" in status and "extract" not in status and "finetune" not in status
    finally:
        (root / "params.yaml").write_text(text)
        _dvc(sh, "repro", "resolve")
        assert not sh("git", "status", "--porcelain").stdout.strip()


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


def _clean(sh) -> None:
    """Back to the committed baseline: files, and the outputs DVC links from its cache."""
    sh("sh", "-c", "git ls-files -z | xargs -0 touch")  # a failed `dvc exp run` can leave git's
    sh("git", "reset", "-q", "--hard")                   # index blind to a rewritten file
    sh("git", "clean", "-q", "-fd")  # untracked files only; DVC's outputs are git-ignored
    _dvc(sh, "checkout", "-f", "-q")


def test_a_mistyped_head_is_one_line_and_removes_nothing(tiny_repo):
    root, sh = tiny_repo
    before = (root / "params.yaml").read_text()
    models = {p: p.read_bytes() for p in (root / "models").glob("best*.pt")}
    try:
        proc = _dvc(sh, "exp", "run", "-S", "train.head=cbms", check=False)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0
        errors = [line for line in out.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "unknown head 'cbms' (did you mean cmbs?)" in errors[0], out
        assert "registered: audio_only, avel, cace, cmbs" in errors[0], out
        assert "missing from" not in out and "Traceback" not in out, out
        assert set(re.findall(r"Running stage '([^']+)'", out)) == {"resolve"}, out
        after = (root / "params.yaml").read_text()
        if after != before:  # the line names the one key to set back, and its committed value
            assert "params.yaml keeps it: set train.head back to psp" in errors[0], out
            assert "git status" not in out, out
            changed = [b for a, b in zip(before.splitlines(), after.splitlines()) if a != b]
            assert [c.split("#")[0].strip() for c in changed] == ["head: cbms"], changed
        assert {p: p.read_bytes() for p in (root / "models").glob("best*.pt")} == models
        assert (root / "reports" / "train" / "metrics.json").is_file()
    finally:
        _clean(sh)


def test_an_experiment_is_compared_with_the_committed_baseline(tiny_repo):
    root, sh = tiny_repo
    _dvc(sh, "queue", "remove", "--all")  # the table after one experiment, as a user's first
    _dvc(sh, "exp", "remove", "--all-commits")
    before = (root / "params.yaml").read_text().splitlines()
    try:
        run = _dvc(sh, "exp", "run", "-n", "cmbs3", "-S", "train.head=cmbs", "-S", "train.epochs=3")
        out = run.stdout + run.stderr
        assert "WARNING" not in out and "No file hash info" not in out, out
        assert set(re.findall(r"Running stage '([^']+)'", out)) == {"resolve", "train", "evaluate"}
        after = (root / "params.yaml").read_text().splitlines()
        changed = [(a, b) for a, b in zip(before, after) if a != b]
        assert len(after) == len(before) and len(changed) == 2, changed
        assert {b.split("#")[0].strip() for _, b in changed} == {"head: cmbs", "epochs: 3"}

        diff = _dvc(sh, "metrics", "diff", "--all", "--json").stdout  # unchanged ones too
        rows = {(f, k): v for f, m in json.loads(diff).items() for k, v in m.items()}
        assert rows and all(v["old"] is not None and v["new"] is not None
                            for v in rows.values()), diff
        assert {k for _, k in rows} >= {"accuracy", "event_f1", "val_accuracy", "best_epoch"}
        print(_dvc(sh, "metrics", "diff").stdout)

        plots = json.loads(_dvc(sh, "plots", "diff", "--json", "--split").stdout)["data"]
        revs = {r for p in plots.values() for d in p for r in d.get("revisions", [])}
        assert {"HEAD", "workspace"} <= revs, revs
        assert any(p.startswith("reports/train/plots/") for p in plots), list(plots)

        md = _dvc(sh, "exp", "show", "--only-changed", "--md").stdout
        header = next(line for line in md.splitlines() if line.startswith("|"))
        columns = [c.strip() for c in header.strip("|").split("|")]
        assert len(columns) <= 20, columns
        assert {"train.head", "train.epochs", "epochs"} <= set(columns), columns
        headline = {"accuracy", "event_f1", "val_accuracy", "best_epoch", "epochs", "train_seconds"}
        # the headline metrics that changed (an equal one is left out by --only-changed), no detail
        metric_like = {c for c in columns if not c.startswith(("train.", "Experiment", "Created"))
                       and "/" not in c and not c.endswith(".json")}
        assert metric_like <= headline, columns
        full = _dvc(sh, "exp", "show", "--md").stdout
        full_header = next(line for line in full.splitlines() if line.startswith("|"))
        assert headline <= {c.strip() for c in full_header.strip("|").split("|")}, full_header
        base = next(line for line in md.splitlines() if re.match(r"\|\s*(master|main)\s", line))
        assert "!" not in base and re.search(r"\|\s*0\.\d+\s", base) and "psp" in base, md
        env = {**os.environ, "COLUMNS": "160", "PYTHONPATH": "."}
        env.pop("DVC_ROOT", None)
        for drop in ([], ["--drop", "models/|reports/run"]):
            wide = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--only-changed",
                                   "--no-pager", *drop], cwd=root, capture_output=True,
                                  text=True, env=env).stdout
            print(wide)
            assert max(map(len, wide.splitlines())) <= 160, wide
            row = next(line for line in wide.splitlines() if re.match(r"\s*(master|main)\s", line))
            assert "psp" in row and "…" not in row.split("psp")[0], wide  # values readable
        assert "…" not in wide, wide  # without the two dependency hashes: every column

        details = _dvc(sh, "metrics", "show", "reports/evaluate/metrics.json").stdout
        assert "per_class" in details, details

        applied = _dvc(sh, "exp", "apply", "cmbs3", check=False)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert "up to date" in _dvc(sh, "status").stdout
    finally:
        _clean(sh)


def test_a_lock_from_another_machine_then_readme_command_1(tiny_repo):
    """The case the repository no longer ships: a dvc.lock made on another CPU, whose feature
    files differ in their last bits (simulated: their hashes perturbed in the committed lock).
    README command 1 ends with `dvc repro && git add dvc.lock reports && git commit`: it re-runs
    what differs and commits this machine's run. Then, after `git checkout -- .`, a queued
    head-only experiment runs resolve, train and evaluate alone, and `dvc exp show
    --only-changed` shows no column of a dependency the user did not change."""
    root, sh = tiny_repo
    _dvc(sh, "queue", "remove", "--all")
    _dvc(sh, "exp", "remove", "--all-commits")
    text = (root / "dvc.lock").read_text()
    perturbed, n = re.subn(r"(path: data/features/\S+\.h5\n\s+hash: md5\n\s+md5: )([0-9a-f])",
                           lambda m: m.group(1) + ("0" if m.group(2) != "0" else "1"), text)
    assert n >= 8, text  # every feature file, as outputs and as dependencies
    (root / "dvc.lock").write_text(perturbed)
    sh("git", "commit", "-q", "-am", "a baseline made on another machine")
    assert "extract" in _dvc(sh, "status").stdout

    repro = _dvc(sh, "repro").stdout
    assert {"train", "evaluate"} <= set(re.findall(r"Running stage '([^']+)'", repro)), repro
    sh("git", "add", "dvc.lock", "reports")
    sh("git", "commit", "-q", "-m", "Baseline: the demo run on this machine")
    sh("git", "checkout", "--", ".")
    assert "up to date" in _dvc(sh, "status").stdout

    _dvc(sh, "exp", "run", "--queue", "-n", "other-head", "-S", "train.head=avel")
    t0 = time.monotonic()
    _dvc(sh, "queue", "start", "-j", "1")
    while time.monotonic() - t0 < 3600:
        status = _dvc(sh, "queue", "status").stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        time.sleep(3)
    log = _dvc(sh, "queue", "logs", "other-head").stdout
    assert set(re.findall(r"Running stage '([^']+)'", log)) == {"resolve", "train", "evaluate"}, log
    md = _dvc(sh, "exp", "show", "--only-changed", "--md").stdout
    header = next(line for line in md.splitlines() if line.startswith("|"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert not [c for c in columns if c.startswith(("data/", "raw/"))], columns
    assert "train.head" in columns, columns
    _dvc(sh, "queue", "stop", check=False)
