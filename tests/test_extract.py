"""Extraction engine and stage: bad videos, validity mask, kill-and-resume, torchrun sharding.

Random weights, tiny frames (64 px, 1 frame per segment), CPU.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.encoders.base import build_encoder
from pipeline.encoders.spec import ModelSpec
from pipeline.features.config import ExtractConfig
from pipeline.features.engine import extract
from pipeline.features.store import load_features

ROOT = Path(__file__).resolve().parents[1]
CFG = ExtractConfig(device="cpu", frames_per_segment=1, image_size=64, batch_videos=2, shard_videos=3,
                    workers=1, decode_timeout_s=60.0, download=False)
# Lines added to the tiny set: (video id, what the file is). Categories reuse the set's first one.
BAD = {"corruptXXXXX": "corrupt", "truncatedXXX": "truncated", "silentXXXXXX": "silent",
       "tooshortXXXX": "too_short", "shortXXXXXXX": "short", "noaudioXXXXX": "no_audio"}


def _md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def _write_video(path: Path, seconds: float, audio: str = "tone") -> None:
    from pipeline.media.write import write_mp4

    n = int(round(seconds * 25))
    rng = np.random.default_rng(len(path.name))
    frames = [np.full((48, 64, 3), (i * 9) % 255, np.uint8) + rng.integers(0, 20, (48, 64, 3), dtype=np.uint8)
              for i in range(n)]
    t = np.arange(int(seconds * 16000)) / 16000
    wave = {"tone": 0.3 * np.sin(2 * np.pi * 440 * t), "silent": np.zeros_like(t), "none": None}[audio]
    write_mp4(path, frames, 25.0, None if wave is None else wave.astype(np.float32), 16000)


@pytest.fixture(scope="module")
def bad_root(ave_root, tmp_path_factory):
    """The tiny set plus one video of each bad kind and a video annotated twice; prepared."""
    from pipeline.data.prepare import prepare

    root = tmp_path_factory.mktemp("bad") / "root"
    shutil.copytree(ave_root, root)
    videos = root / "AVE"
    (videos / "corruptXXXXX.mp4").write_bytes(os.urandom(5000))
    _write_video(videos / "truncatedXXX.mp4", 10)
    data = (videos / "truncatedXXX.mp4").read_bytes()
    (videos / "truncatedXXX.mp4").write_bytes(data[: len(data) // 2])
    _write_video(videos / "silentXXXXXX.mp4", 10, audio="silent")
    _write_video(videos / "tooshortXXXX.mp4", 0.5)
    _write_video(videos / "shortXXXXXXX.mp4", 4)
    _write_video(videos / "noaudioXXXXX.mp4", 10, audio="none")
    ann = root / "Annotations.txt"
    lines = ann.read_text().splitlines()
    category, first_video = lines[1].split("&")[:2]
    extra = [f"{category}&{vid}&good&0&10" for vid in BAD] + [f"{category}&{first_video}&good&2&5"]
    ann.write_text("\n".join(lines + extra) + "\n")
    prepared = tmp_path_factory.mktemp("bad_prepared") / "prepared"
    prepare(root, prepared, workers=2, timeout_s=30.0)
    return root, prepared


def _rows(prepared):
    from pipeline.data.manifest import load_manifest
    return load_manifest(prepared)


@pytest.mark.parametrize("name", ["resnet50", "vggish"])
def test_bad_videos_validity_mask(bad_root, tmp_path, name):
    root, prepared = bad_root
    rows = _rows(prepared)
    by_id = {}
    for r in rows:
        by_id.setdefault(r["video_id"], []).append(r)
    # a video the manifest calls fine but that no longer decodes: caught by the engine itself
    ok_ids = [v for v, rs in by_id.items() if len(rs) == 1 and rs[0]["status"] == "ok" and v not in BAD]
    broken = ok_ids[-1]
    shutil.copy(root / "AVE" / f"{broken}.mp4", tmp_path / "keep.mp4")
    (root / "AVE" / f"{broken}.mp4").write_bytes(b"\x00" * 4096)
    try:
        res = extract(name, ModelSpec(name, weights="random"), rows, tmp_path / f"{name}.h5", CFG,
                      progress=False)
    finally:
        shutil.copy(tmp_path / "keep.mp4", root / "AVE" / f"{broken}.mp4")
    fs = load_features(res.path)
    assert len(fs.valid) == len(rows)
    row = lambda vid: by_id[vid][0]["index"]
    expect_invalid = {row("corruptXXXXX"), row("tooshortXXXX"), row(broken)}
    if by_id["truncatedXXX"][0]["status"] in ("corrupt", "unusable"):
        expect_invalid.add(row("truncatedXXX"))
    for vid in ("silentXXXXXX", "shortXXXXXXX", "noaudioXXXXX"):  # padded / silence, flagged
        assert fs.valid[row(vid)], vid
    assert {int(i) for i in np.flatnonzero(~fs.valid)} == expect_invalid
    problems = fs.meta["problems_json"]
    assert "corrupt" in problems[str(row(broken))]
    assert "too_short" in problems[str(row("tooshortXXXX"))] or "min_duration" in problems[str(row("tooshortXXXX"))]
    assert "padded_short" in fs.meta["row_flags_json"][str(row("shortXXXXXXX"))]
    assert np.isfinite(fs.data.astype(np.float32)).all() and not fs.data[~fs.valid].any()
    # a video with two annotation lines is extracted once and written to both rows
    twice = [rs for rs in by_id.values() if len(rs) == 2][0]
    np.testing.assert_array_equal(fs.data[twice[0]["index"]], fs.data[twice[1]["index"]])
    assert fs.meta["model"] == name and fs.meta["weights"] == "random(seed=0)"
    if name == "resnet50":
        assert fs.data.shape[1:] == (10, 2, 2, 2048) and fs.meta["frames_per_segment"] == 1
    else:
        assert fs.data.shape[1:] == (10, 128) and fs.meta["sample_rate"] == 16000


class Killed(Exception):
    pass


def test_kill_and_resume_gives_identical_file(prepared_dir, tmp_path):
    import dataclasses

    rows = _rows(prepared_dir)
    enc = build_encoder(ModelSpec("resnet50", weights="random"), image_size=64)
    spec = enc.spec
    cfg = dataclasses.replace(CFG, workers=0)  # decode in the producer thread: no pool start-up x3
    full = extract("resnet50", spec, rows, tmp_path / "full.h5", cfg, encoder=enc, progress=False)

    from pipeline.features import engine

    commit, committed = engine._ShardBuffer.commit, []

    def die_after_second_shard(buf, *args):  # a kill right after shard 1 is committed
        commit(buf, *args)
        committed.append(1)
        if len(committed) == 2:
            raise Killed

    out = tmp_path / "resumed.h5"
    with pytest.raises(Killed), pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine._ShardBuffer, "commit", die_after_second_shard)
        extract("resnet50", spec, rows, out, cfg, encoder=enc, progress=False)
    assert not out.exists() and len(list((tmp_path / "resumed.h5.partial").glob("shard_*.h5"))) == 2
    res = extract("resnet50", spec, rows, out, cfg, encoder=enc, progress=False)
    assert res.resumed == 2 * cfg.shard_videos and res.computed == full.videos - res.resumed
    assert _md5(out) == _md5(full.path)
    assert not (tmp_path / "resumed.h5.partial").exists()


def _params(tmp_path: Path, prepared: Path, features: Path) -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["paths"].update(prepared=str(prepared), features=str(features))
    raw["extract"]["common"].update(device="cpu", batch_videos=2, shard_videos=2)
    raw["extract"]["visual"].update(frames_per_segment=1, image_size=64)
    raw["runtime"]["extract"].update(workers=1, download=False)
    raw["extract"]["models"] = {"vggish": {"kind": "audio", "encoder": "vggish", "weights": "random",
                                           "seed": 0}}
    path = tmp_path / f"params_{features.name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_torchrun_two_processes_gloo_equals_one_process(prepared_dir, tmp_path, torch_single_thread):
    """Both runs use one torch thread per process (torchrun sets OMP_NUM_THREADS=1): the same
    kernels, so the merged file equals the single-process one byte for byte."""
    from pipeline.features.run import run_stage

    one = run_stage("vggish", _params(tmp_path, prepared_dir, tmp_path / "one"), progress=False)
    params = _params(tmp_path, prepared_dir, tmp_path / "two")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "stages" / "extract.py"), "vggish", "--params", str(params), "--no-progress"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rank 0/2" in proc.stdout
    # the background-only video of the fixture (backgroundSet.txt): <model>_noisy.h5, same layout
    import h5py
    for run in ("one", "two"):
        with h5py.File(tmp_path / run / "vggish_noisy.h5") as f:
            assert f["avadataset"].shape[:2] == (1, 10) and f["valid"][()].tolist() == [True]
    two = tmp_path / "two" / "vggish.h5"
    assert _md5(two) == _md5(one.path)


def test_forward_chunk_is_calibrated_and_does_not_change_features():
    """On CPU the forward chunk is chosen among whole-segment candidates (logged, cached per
    shape); any chunk gives the features of one forward over the whole batch."""
    import torch

    from pipeline.features import engine

    enc = build_encoder(ModelSpec("resnet50", weights="random"), image_size=64).eval()
    frames = torch.randint(0, 256, (2, 10, 4, 64, 64, 3), dtype=torch.uint8)  # 20 segments of 4 frames
    logs: list[str] = []
    engine._CHUNK_CACHE.clear()
    fwd = engine.Forward(enc, torch.device("cpu"), None, "resnet50", log=logs.append)
    out = fwd(frames)
    assert out.shape == (2, 10, *enc.feature_shape())
    cands = {min(20, max(1, round(f / 4))) for f in engine.CHUNK_FRAMES}  # 4, 8, 16, 20 segments
    assert fwd.chunk in cands and len(logs) == 1 and "forward chunk" in logs[0]
    assert all(f"{c * 4}:" in logs[0] for c in cands)
    again = engine.Forward(enc, torch.device("cpu"), None, "resnet50", log=logs.append)
    again(frames[:1])
    assert again.chunk == fwd.chunk and len(logs) == 1  # cached for this shape: no second calibration
    with torch.inference_mode():
        whole = enc.encode_segments(frames.reshape(20, 1, *frames.shape[2:])).reshape(out.shape).numpy()
    for c in (1, 3, 7, 20):  # uneven last chunks included
        fwd.chunk = c
        np.testing.assert_allclose(fwd(frames), whole, rtol=1e-4, atol=1e-5)


def test_decode_overlap_rule_and_identical_output(prepared_dir, tmp_path, monkeypatch):
    """Decoding overlaps compute on CUDA and when the CPU has a core per worker beside the
    model's threads; the model waiting for each batch or not, the file is byte-identical."""
    import torch

    from pipeline.features import engine

    monkeypatch.setattr(engine.os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    monkeypatch.setattr(engine.torch, "get_num_threads", lambda: 2)
    assert engine.overlap_decode(torch.device("cpu"), 2)  # 2 threads + 2 workers on 4 cores
    assert not engine.overlap_decode(torch.device("cpu"), 3)
    assert engine.overlap_decode(torch.device("cuda"), 8)
    monkeypatch.undo()

    rows = _rows(prepared_dir)
    enc = build_encoder(ModelSpec("resnet50", weights="random"), image_size=64)
    files, logs = {}, []
    for overlap in (True, False):
        monkeypatch.setattr(engine, "overlap_decode", lambda device, workers, v=overlap: v)
        files[overlap] = extract("resnet50", enc.spec, rows, tmp_path / f"o{overlap}.h5", CFG, encoder=enc,
                                 progress=False, log=logs.append).path
    assert _md5(files[True]) == _md5(files[False])
    assert any("decode overlaps compute" in s for s in logs) and any("decode between batches" in s for s in logs)
