"""The PyAV decoder backend: readers with the interface :mod:`pipeline.media.decode` uses of
decord's ``VideoReader`` / ``AudioReader``, for platforms without a decord wheel (macOS arm64,
Linux aarch64) or when ``AVE_DECODER=pyav`` forces it.

The sampling rules stay in :mod:`decode` and :mod:`sampling`; this module only reproduces what
decord returns for them:

* frames in presentation order, each with ``[pts, pts + duration) * time_base`` seconds as
  decord's ``get_frame_timestamp``, counted from the stream's start time (float32, as decord's, so that the
  sampling rules pick the same frames);
* a resize as decord's filter graph does it: ``scale=W:H:flags=bilinear`` on the decoded
  picture, then conversion to rgb24 (bit-equal to decord on H.264 yuv420p);
* audio as one mono float32 track at ``sample_rate`` through one resampler (FFmpeg's swr).
  At the file's own rate it equals decord's to float rounding (<= 1.5e-7). When it resamples,
  decord flushes its resampler after every compressed audio frame (a discontinuity every
  ~64 ms); this backend resamples the track continuously, so those samples differ
  (the stated tolerance is on features: docs/ARCHITECTURE.md, `pipeline/media/`).
"""
from __future__ import annotations

import numpy as np

import av


class _Array:
    """``.asnumpy()`` as decord's NDArray."""

    def __init__(self, data: np.ndarray):
        self._data = data

    def asnumpy(self) -> np.ndarray:
        return self._data


class VideoReader:
    """Video frames of ``path`` (RGB uint8), optionally squashed to ``width`` x ``height``."""

    def __init__(self, path: str, width: int | None = None, height: int | None = None):
        self.path, self.size = path, (None if width is None else (int(width), int(height)))
        with av.open(path) as c:
            if not c.streams.video:
                raise RuntimeError("cannot find video stream")
            s = c.streams.video[0]
            tb = float(s.time_base)
            pkts = [(p.pts, p.duration or 0) for p in c.demux(s) if p.pts is not None and p.size]
            rate = s.average_rate
            start, length = s.start_time, s.duration
        pkts.sort()
        start = start if start is not None else (pkts[0][0] if pkts else 0)
        pkts = [(pts - start, dur) for pts, dur in pkts]  # times from the stream's start, as decord
        self._fps = float(rate) if rate else 0.0
        step = 1.0 / self._fps if self._fps else 0.0
        self._ts = np.array([(pts * tb, (pts + dur) * tb if dur else pts * tb + step)
                             for pts, dur in pkts], dtype=np.float32).reshape(-1, 2)  # decord's precision
        if length and len(self._ts):  # decord ends the last frame at the stream's duration (less its start)
            self._ts[-1, 1] = max(self._ts[-1, 0], (length - start) * tb)

    def __len__(self) -> int:
        return len(self._ts)

    def get_avg_fps(self) -> float:
        return self._fps

    def get_frame_timestamp(self, idx) -> np.ndarray:
        return self._ts[np.asarray(idx, dtype=np.int64)]

    def get_batch(self, indices) -> _Array:
        """Frames ``indices`` (frame numbers in presentation order), ``(n, H, W, 3)``."""
        want = {int(i): None for i in indices}
        last = max(want) if want else -1
        with av.open(self.path) as c:
            s = c.streams.video[0]
            s.thread_type = "NONE"  # decoded pictures do not depend on threads; one, as decord here
            graph = self._graph(s) if self.size else None
            for n, frame in enumerate(c.decode(s)):
                if n in want:
                    if graph is not None:
                        graph.push(frame)
                        frame = graph.pull()
                    want[n] = frame.to_ndarray(format="rgb24")
                if n >= last:
                    break
        missing = [i for i, f in want.items() if f is None]
        if missing:
            raise RuntimeError(f"frame {missing[0]} could not be decoded")
        return _Array(np.stack([want[int(i)] for i in indices]))

    def _graph(self, stream):
        graph = av.filter.Graph()
        src = graph.add_buffer(template=stream)
        scale = graph.add("scale", f"{self.size[0]}:{self.size[1]}:flags=bilinear")
        fmt = graph.add("format", "rgb24")
        sink = graph.add("buffersink")
        src.link_to(scale)
        scale.link_to(fmt)
        fmt.link_to(sink)
        graph.configure()
        return graph

    def __getitem__(self, i: int) -> np.ndarray:
        return self.get_batch([i]).asnumpy()[0]


class AudioReader:
    """The first audio stream of ``path``, mono float32 at ``sample_rate``; ``shape`` is
    ``(1, samples)`` as decord's."""

    def __init__(self, path: str, sample_rate: int):
        with av.open(path) as c:
            if not c.streams.audio:
                raise RuntimeError("cannot find audio stream")
            s = c.streams.audio[0]
            resampler = av.AudioResampler(format="fltp", layout="mono", rate=int(sample_rate))
            parts = []
            for frame in c.decode(s):
                parts += [o.to_ndarray().reshape(-1) for o in resampler.resample(frame)]
            parts += [o.to_ndarray().reshape(-1) for o in resampler.resample(None)]
        x = np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
        self._data = x.reshape(1, -1)
        self.shape = self._data.shape

    def __getitem__(self, key) -> _Array:
        return _Array(self._data[:, key])
