"""Data never escapes its root: unsafe video ids, symlinks leading away, names derived from data."""
from __future__ import annotations

import csv
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from pipeline.data import ave, ids, prepare as prep
from pipeline.data.manifest import MANIFEST_COLUMNS, load_manifest
from pipeline.data.prepare import prepare
from pipeline.media import decode

GOOD = "goodVideo01"


def _unsafe_ids(outside: Path) -> list[str]:
    """Ids that would name a file outside <root>/AVE (or are not ids at all)."""
    return ["../../../outside/evil",  # where ../ leads: a decodable file is there
            str(outside / "evil"),  # absolute
            "~/evil", "..evil", ".hidden", "a/b", "a\\b", "evil\x07bell", "spa ce",
            "x" * 65]


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


@pytest.fixture
def escape_root(ave_root, tmp_path):
    """tmp/data/root: one good video, the unsafe ids, a symlink to tmp/outside/evil.mp4;
    tmp/outside/evil.mp4 is a decodable video where '../../../outside/evil' leads."""
    src = sorted((ave_root / "AVE").glob("*.mp4"))[0]
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(src, outside / "evil.mp4")
    root = tmp_path / "data" / "root"
    (root / "AVE").mkdir(parents=True)
    shutil.copy(src, root / "AVE" / f"{GOOD}.mp4")
    os.symlink(outside / "evil.mp4", root / "AVE" / "linkVideo01.mp4")
    bad = _unsafe_ids(outside)
    lines = [f"Bark&{GOOD}&good&0&10", "Bark&linkVideo01&good&2&5"]
    lines += [f"Bark&{v}&good&0&10" for v in bad]
    (root / "Annotations.txt").write_text("Category&VideoID&Quality&StartTime&EndTime\n"
                                          + "\n".join(lines) + "\n")
    (root / "trainSet.txt").write_text("\n".join(lines) + "\n")
    (root / "valSet.txt").write_text(lines[-1] + "\n")
    (root / "testSet.txt").write_text("")
    return root, outside, bad


def test_unsafe_ids_are_rejected_with_file_and_line(escape_root):
    root, _, bad = escape_root
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ann = ave.load_annotations(root)
    msgs = [str(w.message) for w in caught]
    assert [s.video_id for s in ann.samples] == [GOOD, "linkVideo01"]
    assert ann.num_lines == 2 + len(bad)  # unusable lines keep their index (row)
    for k, vid in enumerate(bad):
        line = 3 + k  # line in trainSet.txt; Annotations.txt has a header line first
        assert any(f"Annotations.txt:{line + 1}: unsafe video id" in m for m in msgs), vid
        assert any(f"trainSet.txt:{line}: unsafe video id" in m for m in msgs), vid
    assert any("valSet.txt:1: unsafe video id" in m for m in msgs)
    # the samples leave every split
    assert ann.splits == {"train": [0, 1], "val": [], "test": []}
    assert all(ann.labels()[2:, :, -1].all(axis=1))  # all background
    with pytest.raises(ids.UnsafePathError):
        ann.video_path(bad[0])
    with pytest.raises(ids.UnsafePathError, match="outside"):
        ann.video_path("linkVideo01")  # safe id, but the symlink leads out of <root>/AVE
    assert ann.video_path(GOOD) == root / "AVE" / f"{GOOD}.mp4"


def test_prepare_opens_nothing_outside_and_writes_nothing_outside(escape_root, tmp_path,
                                                                    monkeypatch):
    root, outside, bad = escape_root
    opened: list[str] = []
    real_video, real_audio = decode.decord.VideoReader, decode.decord.AudioReader

    def video_reader(path, *a, **k):
        opened.append(str(path))
        return real_video(path, *a, **k)

    def audio_reader(path, *a, **k):
        opened.append(str(path))
        return real_audio(path, *a, **k)

    def probe_in_process(paths, workers=1, timeout_s=30.0):  # so that the recorders see it
        for p in paths:
            opened.append(str(p))
            yield decode.read_info(p)

    monkeypatch.setattr(decode.decord, "VideoReader", video_reader)
    monkeypatch.setattr(decode.decord, "AudioReader", audio_reader)
    monkeypatch.setattr(prep, "probe_many", probe_in_process)
    out = tmp_path / "work" / "prepared"
    (tmp_path / "work").mkdir()
    before = _files(tmp_path) - _files(tmp_path / "work")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare(root, out, workers=1)
    after = _files(tmp_path) - _files(tmp_path / "work")
    assert after == before  # nothing written outside the output folder
    base = (root / "AVE").resolve()
    assert opened and all(base in Path(p).resolve().parents for p in opened), opened
    assert not any("evil" in p for p in opened)
    rows = load_manifest(out)
    assert list(rows[0]) == list(MANIFEST_COLUMNS) and len(rows) == 2 + len(bad)
    by_vid = {r["video_id"]: r for r in rows}
    assert by_vid[GOOD]["status"] == "ok" and by_vid[GOOD]["split"] == "train"
    link = by_vid["linkVideo01"]
    assert link["status"] == "unusable" and link["path"] == "" and "outside" in link["message"]
    for r in rows[2:]:  # the unsafe lines: no id, no path, no split
        assert (r["status"], r["path"], r["split"], r["video_id"]) == ("unusable", "", "none", "")
    for r in rows:
        assert not r["path"] or base in Path(r["path"]).resolve().parents
    report = (out / "report.md").read_text()
    assert "Annotations.txt:4: unsafe video id" in report


@pytest.mark.parametrize("text", ["../../x", "/etc/passwd", "..", ".", "", "a/../../b",
                                  "~root", "evil\x00nul", "é", "a" * 300, "row12", GOOD])
def test_safe_filename_stays_in_its_folder(tmp_path, text):
    name = ids.safe_filename(text)
    assert name and "/" not in name and "\\" not in name and not name.startswith(".")
    assert len(name) <= ids.MAX_NAME_LENGTH + 9
    path = ids.output_file(tmp_path, text, ".png")
    assert path.parent == tmp_path
    if ids.video_id_problem(text) is None and len(text) <= ids.MAX_NAME_LENGTH:
        assert name == text  # safe names are kept as they are
    assert ids.safe_filename("a/b") != ids.safe_filename("a_b")  # no collision by sanitising


def test_evaluate_timelines_stay_in_the_output_folder(tmp_path):
    """A manifest whose video ids carry '../': timeline images are written inside out_dir."""
    from test_training import write_set  # also registers the "toy" head

    from pipeline.evaluation.evaluate import evaluate
    from pipeline.training.data import load_dataset
    from pipeline.training.loop import run_spec, train

    prepared, feats = write_set(tmp_path / "set", n_per_split=(16, 8, 8))
    n = 32
    with open(prepared / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        w.writeheader()
        for i in range(n):
            w.writerow(dict(index=i, video_id=f"../../../../escape{i}", category="c", split="test",
                            start=0, end=1, path="", status="ok", duration=10.0, fps=25.0,
                            num_frames=250, has_audio=1, flags="", message=""))
    data = load_dataset(prepared, feats, "vis", "aud", verbose=False)
    train(run_spec("toy", "fully", device="cpu", recipe_overrides={"epochs": 1}), data,
          tmp_path / "m")
    out = tmp_path / "deep" / "a" / "b" / "ev"
    (tmp_path / "deep").mkdir()
    before = _files(tmp_path) - _files(tmp_path / "deep")
    evaluate(tmp_path / "m" / "best.pt", prepared, feats, "vis", "aud", out, device="cpu",
             timelines=3)
    assert _files(tmp_path) - _files(tmp_path / "deep") == before
    images = sorted(p.name for p in (out / "plots" / "images").iterdir())
    timelines = [n for n in images if n.startswith("timeline_")]
    assert len(timelines) == 3 and all("escape" in n and ".." not in n for n in timelines)
    assert not list((tmp_path / "deep").glob("escape*")) and not list(tmp_path.glob("escape*"))
    np.testing.assert_equal(len(list(out.rglob("*escape*"))), 3)
