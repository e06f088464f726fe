"""pipeline.data.prepare and the synth/prepare stages on a root with broken videos."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from pipeline.data.ave import load_annotations
from pipeline.data.manifest import EXCLUDED, MANIFEST_COLUMNS, load_manifest
from pipeline.data.prepare import prepare
from pipeline.media.decode import decode_audio
from pipeline.media.write import write_mp4

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def broken(ave_root, tmp_path_factory):
    """Copy of the tiny set with one corrupt, truncated, silent, missing, short and too-short
    video, and one unparsable annotation line; returns (root, {case: video_id})."""
    root = tmp_path_factory.mktemp("broken") / "root"
    shutil.copytree(ave_root, root)
    ann = load_annotations(root)
    single = [v for v in ann.video_ids() if sum(s.video_id == v for s in ann.samples) == 1]
    case = dict(zip(["corrupt", "truncated", "silent", "missing", "short", "too_short"], single))
    video = lambda k: root / "AVE" / f"{case[k]}.mp4"  # noqa: E731
    video("corrupt").write_bytes(np.random.default_rng(1).bytes(20_000))
    data = video("truncated").read_bytes()
    video("truncated").write_bytes(data[: len(data) // 2])
    frames = [np.full((48, 64, 3), 100, np.uint8)] * 250
    write_mp4(video("silent"), frames, 25, None)
    video("missing").unlink()
    tone = np.zeros(16000 * 3, np.float32)
    write_mp4(video("short"), frames[:75], 25, tone, 16000)
    write_mp4(video("too_short"), frames[:12], 25, tone[:8000], 16000)
    with open(root / "Annotations.txt", "a") as f:
        f.write("Bark&AAAAAAAAAAA&good&x&3\n")
    return root, case


def test_prepare_survives_broken_videos(broken, tmp_path):
    root, case = broken
    out = tmp_path / "prepared"
    result = prepare(root, out, min_duration=1.0, workers=2, timeout_s=30)
    rows = load_manifest(out)
    assert len(rows) == 14 and [r["index"] for r in rows] == list(range(14))
    assert list(rows[0]) == list(MANIFEST_COLUMNS)
    by_vid = {r["video_id"]: r for r in rows}
    expect = {"corrupt": ("corrupt", ()), "truncated": ("corrupt", ()),
              "silent": ("no_audio", ("no_audio",)), "missing": ("missing", ()),
              "short": ("short", ("padded_short", "padded_audio")),
              "too_short": ("unusable", ("too_short",))}
    for k, (status, flags) in expect.items():
        r = by_vid[case[k]]
        assert (r["status"], r["flags"]) == (status, flags), (k, r)
        assert r["message"]
    # The probe and the decoder share one rule: the audio flags extraction reports are the
    # manifest's.
    for k in ("silent", "short"):
        r = by_vid[case[k]]
        audio = set(decode_audio(r["path"], 16000).flags)
        assert audio == set(r["flags"]) & {"no_audio", "padded_audio"}, (k, audio)
    assert rows[13]["status"] == "unusable" and rows[13]["split"] == "none"
    others = [r for r in rows[:13] if r["video_id"] not in case.values()]
    assert len(others) == 7  # six good videos, one of them on two lines
    assert others and all(r["status"] == "ok" and r["flags"] == () for r in others)
    assert all(r["duration"] == pytest.approx(10.0, abs=0.05) and r["has_audio"] for r in others)
    assert sum(r["status"] not in EXCLUDED for r in rows) == len(others) + 2  # + silent + short
    assert result.counts() == {"ok": 7, "short": 1, "no_audio": 1, "corrupt": 2, "missing": 1,
                               "unusable": 2}
    report = (out / "report.md").read_text()
    for vid in case.values():
        assert vid in report
    assert "Annotations.txt:15" in report and "excluded" in report and "padded" in report
    with h5py.File(out / "labels.h5") as f:
        assert f["avadataset"].shape == (14, 10, 4) and f["avadataset"].dtype == np.float32
    with h5py.File(out / "mil_labels.h5") as f:  # as published: the event class alone
        video = f["avadataset"][()]
    assert video.shape == (14, 4) and video.dtype == np.float32 and not video[:, 3].any()
    assert video[:13].sum(-1).tolist() == [1.0] * 13 and not video[13].any()  # 13: unusable
    sizes = {}
    for split in ("train", "val", "test"):
        with h5py.File(out / f"{split}_order.h5") as f:
            sizes[split] = f["order"][:].tolist()
            assert f["order"].dtype == np.int64
    assert sum(len(v) for v in sizes.values()) == 13
    assert all(rows[i]["split"] == s for s, idx in sizes.items() for i in idx)
    categories = json.loads((out / "categories.json").read_text())
    assert categories == ["Church bell", "Male speech, man speaking", "Bark"]
    # atomic replace: a second run swaps the directory, leaving no temporaries
    prepare(root, out, workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


def test_prepared_fixture_is_clean(prepared_dir):
    rows = load_manifest(prepared_dir)
    assert len(rows) == 13 and all(r["status"] == "ok" for r in rows)
    assert len({r["video_id"] for r in rows}) == 12
    assert "Video problems (0 videos)" in (prepared_dir / "report.md").read_text()


def test_stages_run_from_params(tmp_path, tiny_synth_config):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["synth"].update(root=str(tmp_path / "demo"), num_classes=2, train=2, val=1, test=1,
                           width=32, height=32, two_label=0)
    params["data"].update(root=str(tmp_path / "demo"))
    params["runtime"].update(synth={"workers": 1}, data={"workers": 1})
    params["paths"]["prepared"] = str(tmp_path / "prepared")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                                   os.environ.get("PYTHONPATH")]))}
    for stage in ("synth", "prepare"):
        proc = subprocess.run([sys.executable, str(REPO / "stages" / f"{stage}.py"), "--params",
                               str(tmp_path / "params.yaml")], capture_output=True, text=True,
                              cwd=REPO, timeout=120, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert "4 samples" in proc.stdout
    assert len(load_manifest(tmp_path / "prepared")) == 4


def test_background_only_videos_get_their_manifest_and_labels(prepared_dir, ave_root, tmp_path):
    ids = (ave_root / "backgroundSet.txt").read_text().split()
    rows = load_manifest(prepared_dir, "background_manifest.csv")
    assert [r["video_id"] for r in rows] == ids and len(ids) == 1
    assert rows[0]["index"] == 0 and rows[0]["split"] == "background" and rows[0]["status"] == "ok"
    assert ids[0] not in {r["video_id"] for r in load_manifest(prepared_dir)}
    with h5py.File(prepared_dir / "labels_noisy.h5") as f:
        assert f["avadataset"][()].tolist() == [[0.0, 0.0, 0.0, 1.0]]  # background alone
    # a root with the published labels_noisy.h5 (no videos): checked and copied
    root = tmp_path / "root"
    shutil.copytree(ave_root, root)
    (root / "backgroundSet.txt").unlink()
    with h5py.File(root / "labels_noisy.h5", "w") as f:
        f["avadataset"] = np.eye(4, dtype=np.float32)[[3, 3]]
    prepare(root, tmp_path / "p", workers=1)
    assert not (tmp_path / "p" / "background_manifest.csv").exists()
    with h5py.File(tmp_path / "p" / "labels_noisy.h5") as f:
        assert f["avadataset"].shape == (2, 4)
    with h5py.File(root / "labels_noisy.h5", "w") as f:
        f["avadataset"] = np.eye(4, dtype=np.float32)[[0, 3]]  # an event row: refused
    with pytest.raises(ValueError, match="background alone"):
        prepare(root, tmp_path / "p", workers=1)
