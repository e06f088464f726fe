"""pipeline.media: frame sampling rules, decoding policy on odd files, the worker pool."""
from __future__ import annotations

import os
import time
from collections import Counter

import numpy as np
import pytest

from pipeline.media.decode import DecodeFailure, decode_audio, decode_video, read_info
from pipeline.media.pool import DecodePool, probe, probe_many
from pipeline.media.sampling import segment_frame_indices
from pipeline.media.write import write_mp4

SR = 16000
H, W = 48, 64


def _grey_frames(n: int) -> list[np.ndarray]:
    """Frame i encodes i in two flat grey halves (left: i % 16, right: i // 16, steps of 12
    levels), so a decoded frame tells which frame it is despite lossy coding."""
    out = []
    for i in range(n):
        img = np.empty((H, W, 3), np.uint8)
        img[:, : W // 2], img[:, W // 2 :] = 20 + (i % 16) * 12, 20 + (i // 16) * 12
        out.append(img)
    return out


def _frame_ids(frames: np.ndarray) -> np.ndarray:
    """Frame index of each decoded frame ``(..., H, W, 3)`` (inverse of ``_grey_frames``)."""
    w = frames.shape[-2]
    lo = frames[..., :, 2 : w // 2 - 2, :].mean(axis=(-3, -2, -1))
    hi = frames[..., :, w // 2 + 2 : -2, :].mean(axis=(-3, -2, -1))
    return np.round((lo - 20) / 12) + 16 * np.round((hi - 20) / 12)


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    t = np.arange(10 * SR) / SR
    tone = 0.3 * np.sin(2 * np.pi * 440 * t).astype(np.float32)
    loud3 = tone * np.where((t >= 3) & (t < 4), 1.0, 0.05).astype(np.float32)
    write_mp4(d / "ok.mp4", _grey_frames(250), 25, loud3, SR)
    write_mp4(d / "ntsc.mp4", _grey_frames(300), 29.97, tone, SR)
    write_mp4(d / "short.mp4", _grey_frames(75), 25, tone[: 3 * SR], SR)
    write_mp4(d / "silent.mp4", _grey_frames(250), 25, None)
    write_mp4(d / "audio_only.mp4", None, 25, tone, SR)
    vfr_times = np.cumsum(np.r_[0.0, np.tile([0.02, 0.04, 0.08, 0.06], 60)])
    vfr_times = vfr_times[vfr_times < 10.0]
    write_mp4(d / "vfr.mp4", _grey_frames(len(vfr_times)), 25, tone, SR, frame_times=vfr_times)
    np.save(d / "vfr_times.npy", vfr_times)
    (d / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(50_000))
    data = (d / "ok.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    return d


# ------------------------------------------------------------------------------ sampling rules
def _ref_ave(n, F=16, T=10):
    """The AVE reference script, literally."""
    fi = n // T
    return np.array([[int(s * fi + k / F * fi) for k in range(F)] for s in range(T)])


@pytest.mark.parametrize("fps,expected", [
    # (s, k) -> frame shown at s + k/16 s; hand-computed floor((s + k/16) * fps)
    (25.0, {(0, 0): 0, (0, 1): 1, (0, 2): 3, (0, 8): 12, (1, 0): 25, (5, 4): 131, (9, 15): 248}),
    (30000 / 1001, {(0, 1): 1, (0, 8): 14, (1, 0): 29, (2, 0): 59, (9, 15): 297}),
    (30.0, {(0, 8): 15, (1, 0): 30, (3, 4): 97, (9, 15): 298}),
])
def test_timestamp_rule_constant_rate(fps, expected):
    ts = np.arange(int(round(10 * fps))) / fps
    idx = segment_frame_indices(ts, 16, "timestamp")
    assert idx.shape == (10, 16) and idx.dtype == np.int64
    for (s, k), i in expected.items():
        assert idx[s, k] == i, (fps, s, k)
    assert np.all(np.diff(idx.reshape(-1)) >= 0)


def test_timestamp_rule_float32_boundaries():
    """Timestamps as float32 (as decord gives them) still land on the exact frame."""
    ts = (np.arange(300) / 30.0).astype(np.float32)
    idx = segment_frame_indices(ts, 16, "timestamp")
    assert idx[1, 0] == 30 and idx[4, 0] == 120 and idx[7, 8] == 225


def test_timestamp_rule_short_and_vfr():
    short = np.arange(75) / 25.0  # 3 s
    idx = segment_frame_indices(short, 16, "timestamp")
    assert idx[2, 15] == 73 and idx[2, 0] == 50
    assert np.all(idx[3:] == 74)  # padded with the last frame
    vfr = np.array([0.0, 0.5, 0.6, 3.0, 3.05, 9.0])
    idx = segment_frame_indices(vfr, 4, "timestamp")
    assert idx[0].tolist() == [0, 0, 1, 2]  # t = 0, .25, .5, .75
    assert idx[2].tolist() == [2, 2, 2, 2] and idx[3].tolist() == [3, 4, 4, 4]
    assert np.all(idx[9] == 5)


@pytest.mark.parametrize("n", [250, 300, 299, 75, 7])
def test_ave_reference_rule(n):
    idx = segment_frame_indices(np.arange(n) / 25.0, 16, "ave_reference")
    np.testing.assert_array_equal(idx, _ref_ave(n))


def test_ave_reference_hand_values():
    idx = segment_frame_indices(np.zeros(250), 16, "ave_reference")
    assert idx[1, 1] == 26 and idx[9, 15] == 248  # fi = 25: int(25 + 25/16), int(225 + 23.4375)
    idx = segment_frame_indices(np.zeros(300), 16, "ave_reference")
    assert idx[0, 1] == 1 and idx[9, 15] == 298  # fi = 30
    idx = segment_frame_indices(np.zeros(250), 8, "ave_reference")
    assert idx[0, 1] == 3 and idx[9, 7] == 246  # frames_per_segment generalises the 16


def test_sampling_errors():
    with pytest.raises(ValueError, match="unknown sampling rule"):
        segment_frame_indices(np.arange(10), 16, "nearest")
    with pytest.raises(ValueError, match="no frames"):
        segment_frame_indices(np.zeros(0), 16)


# ------------------------------------------------------------------------------ decoding
def test_decode_video_picks_the_right_frames(media_dir):
    dec = decode_video(media_dir / "ok.mp4", 16, "timestamp")
    assert dec.frames.shape == (10, 16, H, W, 3) and dec.frames.dtype == np.uint8
    assert dec.flags == ()
    expected = segment_frame_indices(np.arange(250) / 25, 16)
    np.testing.assert_array_equal(_frame_ids(dec.frames), expected)
    ref = decode_video(media_dir / "ok.mp4", 16, "ave_reference")
    np.testing.assert_array_equal(_frame_ids(ref.frames), _ref_ave(250))


def test_decode_video_resizes_in_decord(media_dir):
    dec = decode_video(media_dir / "ntsc.mp4", 4, "timestamp", size=(37, 51))
    assert dec.frames.shape == (10, 4, 37, 51, 3)
    assert dec.timestamps.shape == (10, 4)


def test_odd_frame_size(tmp_path):
    path = tmp_path / "odd.mp4"
    write_mp4(path, [np.full((47, 63, 3), 90, np.uint8)] * 250, 25, None, pix_fmt="yuv444p")
    info = read_info(path)
    assert (info.width, info.height, info.num_frames) == (63, 47, 250)
    assert decode_video(path, 2).frames.shape == (10, 2, 47, 63, 3)
    assert decode_video(path, 2, size=(32, 32)).frames.shape == (10, 2, 32, 32, 3)


def test_variable_frame_rate(media_dir):
    times = np.load(media_dir / "vfr_times.npy")
    info = read_info(media_dir / "vfr.mp4")
    assert info.vfr and info.status == "ok"
    dec = decode_video(media_dir / "vfr.mp4", 16, "timestamp")
    assert "vfr" in dec.flags
    expected = segment_frame_indices(times, 16)
    np.testing.assert_array_equal(_frame_ids(dec.frames), expected)
    # chosen frames really are shown at the sample times
    t = np.arange(10)[:, None] + np.arange(16)[None, :] / 16
    assert np.all(dec.timestamps <= t + 1e-3)


def test_short_video_is_padded(media_dir):
    info = probe(media_dir / "short.mp4", timeout_s=30)
    assert info.status == "short" and abs(info.duration - 3.0) < 0.05
    dec = decode_video(media_dir / "short.mp4", 16, "timestamp")
    assert "padded_short" in dec.flags and dec.frames.shape[:2] == (10, 16)
    assert np.array_equal(dec.frames[9, 15], dec.frames[3, 0])  # last frame repeated
    aud = decode_audio(media_dir / "short.mp4", SR)
    assert aud.samples.shape == (10, SR) and "padded_audio" in aud.flags
    assert np.abs(aud.samples[4:]).max() == 0 and np.abs(aud.samples[1]).max() > 0.1
    ref = decode_video(media_dir / "short.mp4", 16, "ave_reference")
    assert "short_stretched" in ref.flags


def test_audio_segments_and_rates(media_dir):
    for sr in (16000, 32000):
        aud = decode_audio(media_dir / "ok.mp4", sr)
        assert aud.samples.shape == (10, sr) and aud.samples.dtype == np.float32
        assert aud.flags == ()
        energy = (aud.samples ** 2).mean(1)
        assert int(np.argmax(energy)) == 3 and energy[3] > 50 * np.median(energy)


def test_silent_file_gets_silence(media_dir):
    info = probe(media_dir / "silent.mp4", timeout_s=30)
    assert info.status == "no_audio" and info.has_video and not info.has_audio
    aud = decode_audio(media_dir / "silent.mp4", SR)
    assert aud.flags == ("no_audio",) and aud.samples.shape == (10, SR) and not aud.samples.any()
    assert decode_video(media_dir / "silent.mp4", 2).frames.shape == (10, 2, H, W, 3)


@pytest.mark.parametrize("name,kind", [("audio_only.mp4", "no_video"), ("corrupt.mp4", "corrupt"),
                                       ("truncated.mp4", "corrupt"), ("missing.mp4", "missing")])
def test_bad_files_fail_clearly(media_dir, name, kind):
    with pytest.raises(DecodeFailure) as e:
        decode_video(media_dir / name, 16)
    assert e.value.kind == kind and name in str(e.value)
    info = read_info(media_dir / name)
    assert info.status == kind and not info.has_video and info.message
    if kind != "no_video":
        with pytest.raises(DecodeFailure):
            decode_audio(media_dir / name, SR)


def test_audio_only_file_still_has_audio(media_dir):
    info = read_info(media_dir / "audio_only.mp4")
    assert info.has_audio and info.status == "no_video"
    assert decode_audio(media_dir / "audio_only.mp4", SR).flags == ()


# ------------------------------------------------------------------------------ worker pool
def misbehave(item):
    """Module-level (picklable) pool fn: hangs, dies or raises on request."""
    if item == "hang":
        time.sleep(60)
    if item == "exit":
        os._exit(3)
    if item == "raise":
        raise ValueError("bad item")
    return item, os.getpid()


def test_pool_survives_hangs_and_crashes():
    items = ["a", "hang", "b", "exit", "c", "raise", "d", "e"]
    t0 = time.monotonic()
    with DecodePool(misbehave, workers=2, timeout_s=1.5) as pool:
        out = pool.map(items)
        assert [i for i, _ in out] == items  # input order
        res = dict(out)
        assert isinstance(res["hang"], DecodeFailure) and res["hang"].kind == "timeout"
        assert isinstance(res["exit"], DecodeFailure) and res["exit"].kind == "crash"
        assert "exit code 3" in res["exit"].message
        assert isinstance(res["raise"], DecodeFailure) and "bad item" in res["raise"].message
        assert [res[k][0] for k in "abcde"] == list("abcde")
        # reusable: a second pass works, on a bounded number of processes
        again = pool.map([str(i) for i in range(6)])
        assert [r[0] for _, r in again] == [str(i) for i in range(6)]
        assert len({r[1] for _, r in again}) <= 2
    assert time.monotonic() - t0 < 20


def test_pool_abandoned_iterator_and_probe_many(media_dir):
    with DecodePool(misbehave, workers=2, timeout_s=5) as pool:
        it = pool.imap(["x", "hang", "y"])
        assert next(it)[0] == "x"
        it.close()  # the busy worker is dropped, the pool still works
        assert pool.map(["z"])[0][1][0] == "z"
    names = ["ok.mp4", "corrupt.mp4", "missing.mp4", "silent.mp4"]
    infos = list(probe_many([media_dir / n for n in names], workers=2, timeout_s=30))
    assert [i.status for i in infos] == ["ok", "corrupt", "missing", "no_audio"]
    assert infos[0].num_frames == 250 and infos[0].fps == pytest.approx(25.0)


_HELD: list[bytes] = []


def leak(item):
    """Module-level pool fn that keeps 8 MB per call, as decord 0.6.0's AudioReader does."""
    _HELD.append(b"\x01" * (8 << 20))
    return item, os.getpid()


def test_pool_replaces_a_worker_whose_memory_grows():
    items = [str(i) for i in range(12)]
    with DecodePool(leak, workers=1, timeout_s=30, max_growth_mb=20) as pool:
        out = pool.map(items)
        assert [i for i, _ in out] == items and [r[0] for _, r in out] == items  # nothing lost
        assert pool.recycled == 3 and pool.killed == 0
        per_worker = Counter(r[1] for _, r in out)  # its first item + 3 x 8 MB > 20 MB: replaced
        assert sorted(per_worker.values()) == [4, 4, 4]
    with DecodePool(leak, workers=1, timeout_s=30, max_growth_mb=0) as pool:  # 0: never replaced
        out = pool.map(items[:4])
        assert pool.recycled == 0 and len({r[1] for _, r in out}) == 1


def test_audio_decode_memory_is_bounded_in_the_pool(media_dir):
    """decord's AudioReader leaks each decoded track; the pool's workers stay bounded."""
    import functools

    fn = functools.partial(decode_audio, sample_rate=48000)  # 10 s: about 1.9 MB leaked a call
    with DecodePool(fn, workers=1, timeout_s=60, max_growth_mb=8) as pool:
        out = pool.map([media_dir / "ok.mp4"] * 12)
        assert all(not isinstance(r, DecodeFailure) for _, r in out)
        assert pool.recycled >= 1


@pytest.mark.parametrize("stage", ["extract", "finetune", "prepare"])
def test_decode_workers_do_not_import_torch_through_the_stage_script(stage):
    """Every forkserver/spawn worker first runs the parent's main script as __mp_main__: the
    stages that start decode workers import the library inside main()."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = (f"import runpy, sys; runpy.run_path({str(root / 'stages' / f'{stage}.py')!r}, "
            "run_name='__mp_main__'); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
