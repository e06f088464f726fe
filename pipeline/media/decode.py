"""In-process decoding: probe, sampled video frames, mono audio segments.

The decoder is decord where it is installed, else PyAV (:mod:`pipeline.media.pyav`: macOS arm64
and Linux aarch64 have no decord wheel); ``AVE_DECODER=pyav`` (or ``decord``) forces one.
:func:`decoder_name` says which; feature files record it (attribute ``decoder``). Both read
through the same rules below.

These functions run inside :class:`pipeline.media.pool.DecodePool` workers (decord can hang
or crash on some files); call them directly only on files you trust.

Policy (each case either returns data plus a flag or raises :class:`DecodeFailure`):

* missing file -> ``DecodeFailure(kind="missing")``; not a media file / unreadable container ->
  ``"corrupt"``; no video stream -> ``"no_video"``; frames that fail to decode -> ``"corrupt"``.
* video shorter than the segments asked for -> the last frame repeats (flag ``padded_short``;
  rule ``"ave_reference"`` instead stretches the clip as the reference does: ``short_stretched``).
* variable frame rate -> sampled by timestamps anyway (flag ``vfr``).
* no audio stream -> silence (flag ``no_audio``); audio shorter than the segments by more than
  :data:`AUDIO_PAD_TOLERANCE_S` -> padded with silence (flag ``padded_audio``); an audio stream
  that cannot be opened -> ``"corrupt"``. Probe (:func:`read_info`) and decoder use the same
  rules (:func:`audio_flags`, :func:`_open_audio`), so ``prepare`` and extraction agree.
* AAC: decord trims the encoder priming at the start but returns the last AAC frame whole
  (up to ~1024 extra samples at the end), so audio is cut to the first
  ``num_segments * sample_rate`` samples; segment ``s`` is samples ``[s*sr, (s+1)*sr)``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.config import ConfigError
from pipeline.runtime import NUM_SEGMENTS, SEGMENT_SECONDS

try:
    import decord
except ImportError:  # no wheel for this platform: PyAV decodes
    decord = None

from . import pyav
from .sampling import Rule, is_variable_rate, segment_frame_indices, sample_times

# Flags attached to decoded data (also used in manifest.csv `flags`).
FLAG_PADDED_SHORT = "padded_short"  # video shorter than the clip: last frame repeated
FLAG_SHORT_STRETCHED = "short_stretched"  # ave_reference on a short clip: frames spread out
FLAG_VFR = "vfr"  # variable frame rate (sampled by timestamps)
FLAG_NO_AUDIO = "no_audio"  # no audio stream: silence
FLAG_PADDED_AUDIO = "padded_audio"  # audio shorter than the clip: padded with silence

# DecodeFailure kinds -> manifest status.
FAILURE_STATUS = {"missing": "missing", "corrupt": "corrupt", "no_video": "no_video",
                  "timeout": "unusable", "crash": "unusable", "error": "unusable"}
SHORT_TOLERANCE_S = 0.1  # a video is 'short' when it ends this much before num_segments seconds
AUDIO_PAD_TOLERANCE_S = 0.05  # flag padded_audio only when more than this much audio is missing
#   (probe and decoder alike: prepare's manifest flags are the ones extraction reports)
PROBE_AUDIO_RATE = 16000  # rate used to decode audio while probing (only its length is kept)


class DecodeFailure(Exception):
    """A video that cannot be used; ``kind`` in :data:`FAILURE_STATUS`, ``message`` says why."""

    def __init__(self, path: str, kind: str, message: str):
        super().__init__(f"{path}: {kind}: {message}")
        self.path, self.kind, self.message = str(path), kind, message

    def __reduce__(self):  # picklable across worker pipes
        return (DecodeFailure, (self.path, self.kind, self.message))

    @property
    def status(self) -> str:
        """The manifest status for this failure."""
        return FAILURE_STATUS.get(self.kind, "unusable")


@dataclass(frozen=True)
class Decoded:
    """Decoded media: video frames ``uint8 (T,F,H,W,3)`` or audio ``float32 (T, sample_rate)``."""

    data: np.ndarray
    flags: tuple[str, ...] = ()
    timestamps: Optional[np.ndarray] = None  # video: (T,F) start time (s) of each chosen frame

    @property
    def frames(self) -> np.ndarray:
        return self.data

    @property
    def samples(self) -> np.ndarray:
        return self.data


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`read_info` learns about one file (``status`` as in manifest.csv)."""

    path: str
    status: str  # ok | short | no_audio | corrupt | missing | no_video | unusable
    duration: float = 0.0  # seconds, end of the last video frame
    fps: float = 0.0  # average frame rate
    num_frames: int = 0
    width: int = 0
    height: int = 0
    has_video: bool = False
    has_audio: bool = False
    vfr: bool = False
    message: str = ""
    audio_duration: float = 0.0  # seconds of decodable audio (0 without an audio stream)


DECODERS = ("decord", "pyav")
DECODER_ENV = "AVE_DECODER"  # forces a decoder (e.g. to test the PyAV path where decord exists)


def decoder_name() -> str:
    """``"decord"`` when installed, else ``"pyav"``; ``AVE_DECODER`` forces one."""
    forced = os.environ.get(DECODER_ENV, "").strip().lower()
    if not forced:
        return "decord" if decord is not None else "pyav"
    if forced not in DECODERS:
        raise ConfigError(f"{DECODER_ENV}: {forced!r} is not a decoder; one of: {', '.join(DECODERS)}")
    if forced == "decord" and decord is None:
        raise ConfigError(f"{DECODER_ENV}: decord is not installed (no wheel for this platform); "
                          "unset it to decode with PyAV")
    return forced


def _decord():
    decord.logging.set_level(decord.logging.QUIET)  # errors reach us as exceptions
    return decord


def _check_file(path: str | os.PathLike) -> str:
    p = Path(path)
    if not p.is_file():
        raise DecodeFailure(str(path), "missing", "file not found")
    if p.stat().st_size == 0:
        raise DecodeFailure(str(path), "corrupt", "empty file (0 bytes)")
    return str(p)


def _short(err: Exception) -> str:
    """Last meaningful line of a decord error (its messages carry a C++ location prefix)."""
    text = str(err).strip().splitlines()
    text = [t for t in text if t.strip() and not t.startswith("Stack trace")]
    msg = text[0] if text else type(err).__name__
    return msg.split("] ", 1)[-1][:300]


def _open_video(path: str, size: Optional[tuple[int, int]] = None):
    kwargs = {}
    if size is not None:
        h, w = int(size[0]), int(size[1])
        kwargs = {"width": w, "height": h}
    backend = decoder_name()
    try:
        if backend == "pyav":
            vr = pyav.VideoReader(path, **kwargs)
        else:
            vr = _decord().VideoReader(path, ctx=decord.cpu(0), num_threads=1, **kwargs)
    except Exception as e:  # decord raises DECORDError / RuntimeError with the ffmpeg reason
        msg = _short(e)
        if "video stream" in msg:
            raise DecodeFailure(path, "no_video", "no video stream (audio-only or other media)") \
                from None
        raise DecodeFailure(path, "corrupt", f"cannot open video: {msg}") from None
    if len(vr) == 0:
        raise DecodeFailure(path, "corrupt", "video stream has no frames")
    return vr


def _timestamps(vr) -> np.ndarray:
    """``(n, 2)`` start/end seconds of every frame."""
    return np.asarray(vr.get_frame_timestamp(np.arange(len(vr))), dtype=np.float64).reshape(-1, 2)


def read_info(path: str | os.PathLike, num_segments: int = NUM_SEGMENTS) -> VideoInfo:
    """Probe one file in-process; never raises for a bad file (status says what is wrong)."""
    try:
        spath = _check_file(path)
        vr = _open_video(spath)
        ts = _timestamps(vr)
        n = len(vr)
        h, w = vr[0].shape[:2]  # decodes the first frame: a file that opens but cannot decode fails
    except DecodeFailure as f:
        audio_s = _audio_seconds(str(path)) if f.kind == "no_video" else 0.0
        return VideoInfo(str(path), f.status, has_audio=audio_s > 0, message=f.message,
                         audio_duration=audio_s)
    except Exception as e:
        return VideoInfo(str(path), "corrupt", message=f"cannot decode first frame: {_short(e)}")
    duration = float(ts[-1, 1])
    fps = float(vr.get_avg_fps())
    del vr
    try:
        audio_duration = _audio_seconds(spath)
    except DecodeFailure as f:  # the decoder would fail on it too: one status for both
        return VideoInfo(spath, f.status, duration, fps, n, int(w), int(h), True, False,
                         message=f.message)
    vfr = is_variable_rate(ts[:, 0])
    if duration < num_segments * SEGMENT_SECONDS - SHORT_TOLERANCE_S:
        status, msg = "short", f"video is {duration:.2f} s < {num_segments} s"
    elif audio_duration <= 0:
        status, msg = "no_audio", "no audio stream"
    else:
        status, msg = "ok", ""
    return VideoInfo(spath, status, duration, fps, n, int(w), int(h), True, audio_duration > 0,
                     vfr, msg, audio_duration)


def audio_flags(audio_seconds: float, num_segments: int = NUM_SEGMENTS) -> tuple[str, ...]:
    """The audio flags of a track this long (0: no audio stream), as the decoder sets them."""
    if audio_seconds <= 0:
        return (FLAG_NO_AUDIO,)
    if audio_seconds < num_segments * SEGMENT_SECONDS - AUDIO_PAD_TOLERANCE_S:
        return (FLAG_PADDED_AUDIO,)
    return ()


def _open_audio(path: str, sample_rate: int):
    """An ``AudioReader`` (mono, resampled), or ``None`` when the file has no audio
    stream; an audio stream that cannot be opened raises ``DecodeFailure("corrupt")``."""
    backend = decoder_name()
    try:
        if backend == "pyav":
            ar = pyav.AudioReader(path, sample_rate)
        else:
            ar = _decord().AudioReader(path, ctx=decord.cpu(0), sample_rate=sample_rate, mono=True)
    except Exception as e:
        msg = _short(e)
        if "audio stream" not in msg:
            raise DecodeFailure(path, "corrupt", f"cannot open audio: {msg}") from None
        return None
    return ar if ar.shape[1] > 0 else None


def _audio_seconds(path: str) -> float:
    """Seconds of decodable audio; 0 without an audio stream (corrupt audio raises)."""
    ar = _open_audio(path, PROBE_AUDIO_RATE)
    return 0.0 if ar is None else float(ar.shape[1]) / PROBE_AUDIO_RATE


def decode_video(path: str | os.PathLike, frames_per_segment: int = 16, rule: Rule = "timestamp",
                 size: Optional[tuple[int, int]] = None,
                 num_segments: int = NUM_SEGMENTS) -> Decoded:
    """Frames ``uint8 (num_segments, frames_per_segment, H, W, 3)`` RGB.

    ``size=(H, W)`` resizes inside decord (squash, no crop); ``None`` keeps the stored size.
    Only the needed frames are decoded (one batched ``get_batch`` on the unique indices).
    """
    spath = _check_file(path)
    vr = _open_video(spath, size)
    ts = _timestamps(vr)
    idx = segment_frame_indices(ts[:, 0], frames_per_segment, rule, num_segments)
    flags = []
    if rule == "timestamp":
        last_time = float(sample_times(frames_per_segment, num_segments)[-1, -1])
        if last_time >= ts[-1, 1]:
            flags.append(FLAG_PADDED_SHORT)
    elif ts[-1, 1] < num_segments - SHORT_TOLERANCE_S:
        flags.append(FLAG_SHORT_STRETCHED)
    if is_variable_rate(ts[:, 0]):
        flags.append(FLAG_VFR)
    uniq, inverse = np.unique(idx, return_inverse=True)
    try:
        batch = vr.get_batch(uniq.tolist()).asnumpy()
    except Exception as e:
        raise DecodeFailure(spath, "corrupt", f"frames {uniq[0]}..{uniq[-1]} failed to decode: "
                                              f"{_short(e)}") from None
    frames = batch[inverse.reshape(idx.shape)]
    return Decoded(np.ascontiguousarray(frames), tuple(flags), ts[idx, 0].astype(np.float32))


def decode_audio(path: str | os.PathLike, sample_rate: int,
                 num_segments: int = NUM_SEGMENTS) -> Decoded:
    """Mono waveform resampled to ``sample_rate``, ``float32 (num_segments, sample_rate)``."""
    spath = _check_file(path)
    want = num_segments * sample_rate
    ar = _open_audio(spath, sample_rate)
    if ar is None:
        return Decoded(np.zeros((num_segments, sample_rate), np.float32), audio_flags(0.0, num_segments))
    x = np.asarray(ar[:].asnumpy(), dtype=np.float32).reshape(-1)[:want]
    flags = audio_flags(x.shape[0] / sample_rate, num_segments)
    return Decoded(np.pad(x, (0, want - x.shape[0])).reshape(num_segments, sample_rate), flags)
