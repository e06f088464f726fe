"""The PyAV decoder backend (``AVE_DECODER=pyav``, the decoder where decord has no wheel) against
decord, on synthetic mp4 files: the same frames (bit-equal, resized or not), the same frame
times and flags, audio at the file's own rate equal to float rounding; features of the tiny set
with cosine >= 0.9999 per valid row (audio resampled to Cnn14's 32 kHz included), and the
backend recorded in the feature file."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import ConfigError
from pipeline.media import decode
from pipeline.media.write import write_mp4

pytest.importorskip("decord")  # the reference; the PyAV path alone is what other platforms run

FEATURE_COSINE = 0.9999  # the stated tolerance (docs/ARCHITECTURE.md, pipeline/media/)
AUDIO_ATOL = 1.5e-7  # same rate: float rounding only


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("pyav")
    rng = np.random.default_rng(0)
    frames = [(rng.random((48, 64, 3)) * 255).astype(np.uint8) for _ in range(252)]
    t = np.arange(16000 * 10) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    write_mp4(d / "pal.mp4", frames, 25.0, audio, 16000)
    write_mp4(d / "ntsc.mp4", frames, 30000 / 1001, audio, 16000)  # 8.4 s: padded_short
    vfr = np.cumsum(rng.uniform(0.02, 0.06, 250))
    write_mp4(d / "vfr.mp4", frames[:250], 25.0, audio, 16000, frame_times=list(vfr))
    return d


def _both(monkeypatch, fn):
    out = {}
    for backend in ("decord", "pyav"):
        monkeypatch.setenv(decode.DECODER_ENV, backend)
        assert decode.decoder_name() == backend
        out[backend] = fn()
    return out["decord"], out["pyav"]


@pytest.mark.parametrize("name", ["pal.mp4", "ntsc.mp4", "vfr.mp4"])
@pytest.mark.parametrize("size", [None, (32, 32)])
@pytest.mark.parametrize("rule,fps", [("timestamp", 16), ("ave_reference", 2)])
def test_frames_and_times_equal_decord(clips, monkeypatch, name, size, rule, fps):
    d, p = _both(monkeypatch, lambda: decode.decode_video(clips / name, fps, rule, size))
    assert d.frames.shape == p.frames.shape
    np.testing.assert_array_equal(p.frames, d.frames)
    np.testing.assert_array_equal(p.timestamps, d.timestamps)
    assert p.flags == d.flags


@pytest.mark.parametrize("name", ["pal.mp4", "ntsc.mp4", "vfr.mp4"])
def test_probe_equals_decord(clips, monkeypatch, name):
    d, p = _both(monkeypatch, lambda: decode.read_info(clips / name))
    assert (p.status, p.num_frames, p.width, p.height, p.vfr, p.has_audio) == \
           (d.status, d.num_frames, d.width, d.height, d.vfr, d.has_audio)
    assert abs(p.duration - d.duration) < 1e-6 and abs(p.fps - d.fps) < 1e-9
    assert p.audio_duration == d.audio_duration


def test_audio_at_the_file_rate_equals_decord(clips, monkeypatch):
    d, p = _both(monkeypatch, lambda: decode.decode_audio(clips / "pal.mp4", 16000))
    assert p.samples.shape == d.samples.shape == (10, 16000) and p.flags == d.flags
    assert np.abs(p.samples - d.samples).max() <= AUDIO_ATOL


def test_a_wrong_or_missing_decoder_is_one_line(monkeypatch):
    monkeypatch.setenv(decode.DECODER_ENV, "ffmpeg")
    with pytest.raises(ConfigError, match=r"^AVE_DECODER: 'ffmpeg' is not a decoder; one of: decord, pyav$"):
        decode.decoder_name()
    monkeypatch.setenv(decode.DECODER_ENV, "decord")
    monkeypatch.setattr(decode, "decord", None)
    with pytest.raises(ConfigError, match="decord is not installed"):
        decode.decoder_name()
    monkeypatch.delenv(decode.DECODER_ENV)
    assert decode.decoder_name() == "pyav"  # no decord: PyAV, unasked


@pytest.mark.parametrize("name", ["resnet50", "cnn14"])  # cnn14: audio resampled to 32 kHz
def test_features_match_decord_and_record_the_decoder(prepared_dir, tmp_path, monkeypatch, name):
    import h5py

    from pipeline.data.manifest import load_manifest
    from pipeline.encoders.base import build_encoder
    from pipeline.encoders.spec import ModelSpec
    from pipeline.features.config import ExtractConfig
    from pipeline.features.engine import extract
    from pipeline.features.store import load_features

    cfg = ExtractConfig(device="cpu", frames_per_segment=1, image_size=64, batch_videos=4,
                        shard_videos=16, workers=1, decode_timeout_s=60.0, download=False,
                        dtype="float32")
    rows = load_manifest(prepared_dir)[:4]
    enc = build_encoder(ModelSpec(name, weights="random"), image_size=64)
    feats = {}
    for backend in ("decord", "pyav"):
        monkeypatch.setenv(decode.DECODER_ENV, backend)
        out = extract(name, enc.spec, rows, tmp_path / f"{backend}.h5", cfg, encoder=enc,
                      progress=False, log=lambda s: None).path
        with h5py.File(out) as f:
            assert f.attrs["decoder"] == backend
        feats[backend] = load_features(out, log=lambda s: None)
    d, p = feats["decord"], feats["pyav"]
    np.testing.assert_array_equal(d.valid, p.valid)
    a = d.data[d.valid].astype(np.float64)
    a = a.reshape(a.shape[0] * a.shape[1], -1)  # one vector per (video, segment)
    b = p.data[p.valid].astype(np.float64).reshape(a.shape)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    print(f"{name}: feature cosine pyav vs decord: min {cos.min():.7f}, mean {cos.mean():.7f}")
    assert cos.min() >= FEATURE_COSINE, cos.min()
