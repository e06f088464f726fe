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
        vstream = astream = None
        frame_iter = iter(frames) if frames is not None else None
        first = next(frame_iter, None) if frame_iter is not None else None
        if first is not None:
            h, w = first.shape[:2]
            if frame_format == "yuv420p":
                h = h * 2 // 3
            vstream = out.add_stream("libx264", rate=rate)
            vstream.width, vstream.height = w, h
            vstream.pix_fmt = "yuv420p" if frame_format == "yuv420p" else pix_fmt
            vstream.codec_context.thread_count = 1
            vstream.codec_context.gop_size = gop or max(1, int(round(float(rate))))
            vstream.options = {"preset": preset, "crf": str(crf)}
            if frame_times is not None:
                vstream.codec_context.time_base = VFR_TIME_BASE
                vstream.time_base = VFR_TIME_BASE
        if audio is not None:
            astream = out.add_stream("aac", rate=sample_rate)
            astream.layout = "mono"
            astream.codec_context.thread_count = 1
            astream.options = {"aac_coder": "fast"}  # ~2x faster than the default twoloop
        if vstream is not None:
            times = list(frame_times) if frame_times is not None else None
            for i, img in enumerate(_chain(first, frame_iter)):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img, np.uint8),
                                                   format=frame_format)
                if times is not None:
                    frame.pts, frame.time_base = int(round(times[i] * 1000)), VFR_TIME_BASE
                for packet in vstream.encode(frame):
                    out.mux(packet)
            for packet in vstream.encode():
                out.mux(packet)
        if astream is not None:
            x = np.clip(np.asarray(audio, np.float32).reshape(-1), -1.0, 1.0)
            for i in range(0, x.shape[0], AAC_FRAME):
                chunk = x[None, i : i + AAC_FRAME]
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp",
                                                   layout="mono")
                frame.sample_rate, frame.pts = sample_rate, i
                frame.time_base = Fraction(1, sample_rate)
                for packet in astream.encode(frame):
                    out.mux(packet)
            for packet in astream.encode():
                out.mux(packet)


def _chain(first, rest):
    yield first
    if rest is not None:
        yield from rest
