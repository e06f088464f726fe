"""Resume never reuses a stale model, interruptions lose no curve, an empty val split is an error."""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline import runtime
from pipeline.training import checkpoint as ckpt_io
from pipeline.training.data import load_dataset
from pipeline.training.loop import run_spec, train
from test_training import interrupted, write_set  # also registers the toy head

REPO = Path(__file__).resolve().parents[1]
SPEC = run_spec("toy", "fully", device="cpu", recipe_overrides={"epochs": 3})


@pytest.fixture(scope="module")
def toydata(tmp_path_factory):
    prepared, feats = write_set(tmp_path_factory.mktemp("resume"))
    return load_dataset(prepared, feats, "vis", "aud", verbose=False)


def test_an_edit_to_a_shared_head_module_is_not_resumed(toydata, tmp_path, monkeypatch):
    code = tmp_path / "code"
    for d in ("pipeline/heads", "pipeline/training"):
        shutil.copytree(REPO / d, code / d)
    monkeypatch.setattr(runtime, "REPO_ROOT", code)
    interrupted(SPEC, toydata, tmp_path / "a", 1)
    assert interrupted(SPEC, toydata, tmp_path / "a", 1).resumed_from == 0  # same code: resumed
    with open(code / "pipeline/heads/_avga.py", "a") as f:  # a module several heads share
        f.write("\n# edited\n")
    res = train(SPEC, toydata, tmp_path / "a")
    assert res.resumed_from is None and len(res.history) == 3


def test_other_data_is_not_resumed(toydata, tmp_path):
    interrupted(SPEC, toydata, tmp_path, 1)
    prepared, feats = write_set(tmp_path / "other", seed=1)  # same shapes, other values
    other = load_dataset(prepared, feats, "vis", "aud", verbose=False)
    assert train(SPEC, other, tmp_path).resumed_from is None


def test_an_empty_val_split_names_the_split_and_the_excluded_rows(tmp_path):
    prepared, feats = write_set(tmp_path)
    with h5py.File(prepared / "val_order.h5", "r") as f:
        val_rows = f["order"][()]
    for name in ("vis", "aud"):
        with h5py.File(feats / f"{name}.h5", "r+") as f:
            valid = f["valid"][()]
            valid[val_rows] = False
            f["valid"][...] = valid
    data = load_dataset(prepared, feats, "vis", "aud", verbose=False)
    with pytest.raises(ValueError, match=rf"^val split: no usable rows; {len(val_rows)} rows "
                                         rf"excluded: {len(val_rows)} for invalid features"):
        train(SPEC, data, tmp_path / "out")
    assert not (tmp_path / "out" / "best.pt").exists()


KILLER = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from test_training import _ToyHead
from pipeline.heads import register_head
from pipeline.training.data import load_dataset
from pipeline.training.loop import run_spec, train

@register_head("toy_killed")
class Killed(_ToyHead):
    def loss(self, out, batch):  # kill -9 in the middle of epoch KILL_AT (after its first batch)
        if batch["epoch"] == int(os.environ.get("KILL_AT", -1)) and self.training:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().loss(out, batch)

data = load_dataset({prepared!r}, {feats!r}, "vis", "aud", verbose=False)
train(run_spec("toy_killed", "fully", device="cpu"), data, sys.argv[1], live_dir=sys.argv[2])
"""


def _curves(live: Path) -> dict[str, list[tuple[str, str]]]:
    """Every DVCLive metric history: (step, value) rows (timestamps left out)."""
    out = {}
    for tsv in sorted((live / "plots" / "metrics").rglob("*.tsv")):
        with open(tsv) as f:
            out[str(tsv.relative_to(live))] = [(r["step"], r[tsv.stem]) for r in
                                               csv.DictReader(f, delimiter="\t")]
    return out


def test_kill_during_training_then_rerun_gives_the_uninterrupted_curves(tmp_path):
    prepared, feats = write_set(tmp_path)
    script = tmp_path / "run.py"
    script.write_text(KILLER.format(tests=str(REPO / "tests"), prepared=str(prepared),
                                    feats=str(feats)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                                     os.environ.get("PYTHONPATH")]))}

    def run(name: str, kill_at: int = -1):
        return subprocess.run([sys.executable, str(script), str(tmp_path / name / "models"),
                               str(tmp_path / name / "live")], env={**env, "KILL_AT": str(kill_at)},
                              capture_output=True, text=True, timeout=300)

    assert run("full").returncode == 0
    killed = run("killed", kill_at=3)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert ckpt_io.load(tmp_path / "killed" / "models" / "last.pt")["epoch"] == 2
    (tmp_path / "killed" / "live" / "metrics.json").write_text("")  # as a kill mid-write leaves it
    rerun = run("killed")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resume: " in rerun.stdout and "at epoch 3/6" in rerun.stdout
    full, resumed = _curves(tmp_path / "full" / "live"), _curves(tmp_path / "killed" / "live")
    assert full and resumed == full
    assert [s for s, _ in full["plots/metrics/val/accuracy.tsv"]] == [str(e) for e in range(1, 7)]  # epochs from 1
    a = ckpt_io.load(tmp_path / "full" / "models" / "best.pt")
    b = ckpt_io.load(tmp_path / "killed" / "models" / "best.pt")
    assert a["epoch"] == b["epoch"] and all(np.array_equal(v, b["model"][k])
                                            for k, v in a["model"].items())


def test_finetune_resume_point_belongs_to_its_code_and_videos(tmp_path, monkeypatch):
    from pipeline.finetune.config import FinetuneConfig
    from pipeline.finetune.run import CODE_DIRS, resume_dir

    code = tmp_path / "code"
    for d in CODE_DIRS:
        shutil.copytree(REPO / d, code / d)
    monkeypatch.setattr(runtime, "REPO_ROOT", code)
    rows = []
    for i, split in enumerate(("train", "train", "val")):
        video = tmp_path / f"v{i}.mp4"
        video.write_bytes(b"x" * (i + 1))
        rows.append({"video_id": f"v{i}", "path": str(video), "split": split, "status": "ok"})
    cfg = FinetuneConfig()
    first = resume_dir(tmp_path / "resume", cfg, rows)
    first.mkdir(parents=True)
    assert resume_dir(tmp_path / "resume", cfg, rows) == first and first.is_dir()
    with open(code / "pipeline/encoders/base.py", "a") as f:  # shared encoder code edited
        f.write("\n# edited\n")
    second = resume_dir(tmp_path / "resume", cfg, rows)
    assert second != first and not first.exists()  # a stale resume point is removed
    (tmp_path / "v2.mp4").write_bytes(b"yyyy")  # a held-out video replaced
    assert resume_dir(tmp_path / "resume", cfg, rows) != second
