"""Write mp4 files with PyAV (H.264 video + AAC audio): the synthetic set and test fixtures.

``write_mp4(path, frames, fps, audio, sample_rate)``; ``frames`` is an iterable of
``uint8 (H, W, 3)`` RGB images, or with ``frame_format="yuv420p"`` of ready ``(H*3/2, W)``
planar images (no colour conversion: the fast path for generated content; ``None``:
audio-only file), ``audio`` a mono ``float32`` waveform
in [-1, 1] (``None``: no audio stream). ``frame_times`` (seconds, increasing) gives each frame
its own presentation time: variable frame rate. Output is deterministic for equal input
(single-threaded encoders).
"""
from __future__ import annotations

import os
from fractions import Fraction
from typing import Iterable, Optional, Sequence

import av
import numpy as np

AAC_FRAME = 1024  # samples per AAC frame (the encoder's frame_size)
VFR_TIME_BASE = Fraction(1, 1000)  # millisecond pts for frame_times


def _as_fraction(fps: float) -> Fraction:
    """25 -> 25, 29.97 -> 30000/1001 (NTSC rates written exactly)."""
    for num in (24000, 30000, 60000):
        if abs(fps - num / 1001) < 1e-3:
            return Fraction(num, 1001)
    return Fraction(fps).limit_denominator(1000)


def write_mp4(path: str | os.PathLike, frames: Optional[Iterable[np.ndarray]], fps: float = 25.0,
              audio: Optional[np.ndarray] = None, sample_rate: int = 16000, *,
              frame_times: Optional[Sequence[float]] = None, crf: int = 23,
              preset: str = "ultrafast", gop: Optional[int] = None,
              frame_format: str = "rgb24", pix_fmt: str = "yuv420p") -> None:
    """Encode ``frames`` (H.264 in ``pix_fmt``: yuv420p needs even width/height, yuv444p takes
    any size) and ``audio`` (AAC mono) to ``path``."""
    if frames is None and audio is None:
        raise ValueError("write_mp4 needs frames, audio or both")
    rate = _as_fraction(fps)
    with av.open(str(path), "w", format="mp4") as out:
        frame_iter = iter(frames) if frames is not None else None
        first = next(frame_iter, None) if frame_iter is not None else None
        vstream = None
        if first is not None:
            vstream = _video_stream(out, first.shape, rate, frame_format, pix_fmt, gop, preset,
                                    crf, vfr=frame_times is not None)
        astream = _audio_stream(out, sample_rate) if audio is not None else None
        if vstream is not None:
            _encode_video(out, vstream, _chain(first, frame_iter), frame_format, frame_times)
        if astream is not None:
            _encode_audio(out, astream, audio, sample_rate)


def _video_stream(out, shape: tuple[int, ...], rate: Fraction, frame_format: str, pix_fmt: str,
                  gop: Optional[int], preset: str, crf: int, vfr: bool):
    h, w = shape[:2]
    if frame_format == "yuv420p":
        h = h * 2 // 3
    stream = out.add_stream("libx264", rate=rate)
    stream.width, stream.height = w, h
    stream.pix_fmt = "yuv420p" if frame_format == "yuv420p" else pix_fmt
    stream.codec_context.thread_count = 1
    stream.codec_context.gop_size = gop or max(1, int(round(float(rate))))
    stream.options = {"preset": preset, "crf": str(crf)}
    if vfr:
        stream.codec_context.time_base = VFR_TIME_BASE
        stream.time_base = VFR_TIME_BASE
    return stream


def _audio_stream(out, sample_rate: int):
    stream = out.add_stream("aac", rate=sample_rate)
    stream.layout = "mono"
    stream.codec_context.thread_count = 1
    stream.options = {"aac_coder": "fast"}  # ~2x faster than the default twoloop
    return stream


def _encode_video(out, stream, images: Iterable[np.ndarray], frame_format: str,
                  frame_times: Optional[Sequence[float]]) -> None:
    times = list(frame_times) if frame_times is not None else None
    for i, img in enumerate(images):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img, np.uint8), format=frame_format)
        if times is not None:
            frame.pts, frame.time_base = int(round(times[i] * 1000)), VFR_TIME_BASE
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)


def _encode_audio(out, stream, audio: np.ndarray, sample_rate: int) -> None:
    x = np.clip(np.asarray(audio, np.float32).reshape(-1), -1.0, 1.0)
    for i in range(0, x.shape[0], AAC_FRAME):
        chunk = x[None, i : i + AAC_FRAME]
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = sample_rate, i
        frame.time_base = Fraction(1, sample_rate)
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)


def _chain(first, rest):
    yield first
    if rest is not None:
        yield from rest
