"""Which frames represent each 1-second segment (pure numpy, no decoding).

Two rules, both giving ``(num_segments, frames_per_segment)`` frame indices:

* ``"timestamp"`` (default): frame ``k`` of segment ``s`` is the frame *shown* at time
  ``s + k / frames_per_segment`` seconds, i.e. the last frame whose start timestamp is
  ``<= t``. Uses the stream's own timestamps, so it is right for variable frame rate. Times
  past the last frame give the last frame (short videos are padded with their last frame);
  times before the first frame give the first frame.
* ``"ave_reference"``: the AVE reference extractor (Tian et al., ECCV 2018):
  ``fi = n_frames // 10``, index ``int(s*fi + k/16*fi)``, with 16 generalised to
  ``frames_per_segment`` and 10 to ``num_segments``. It ignores timestamps and spreads
  whatever frames the file has over the ten segments (a 3 s clip is stretched, not padded).
"""
from __future__ import annotations

from typing import Literal

import numpy as np

from pipeline.runtime import NUM_SEGMENTS, SEGMENT_SECONDS as SEGMENT_S

Rule = Literal["timestamp", "ave_reference"]
RULES: tuple[str, ...] = ("timestamp", "ave_reference")
# Tolerance when comparing a sample time with frame start times: timestamps come as float32
# (ulp ~1e-6 s at 10 s); 0.1 ms is far below any real frame duration.
TIME_EPS_S = 1e-4


def sample_times(frames_per_segment: int, num_segments: int = NUM_SEGMENTS) -> np.ndarray:
    """Sample times ``s + k / F`` in seconds, shape ``(num_segments, frames_per_segment)``."""
    if frames_per_segment < 1 or num_segments < 1:
        raise ValueError(f"frames_per_segment ({frames_per_segment}) and num_segments "
                         f"({num_segments}) must be >= 1")
    s = np.arange(num_segments, dtype=np.float64)[:, None]
    k = np.arange(frames_per_segment, dtype=np.float64)[None, :]
    return s * SEGMENT_S + k / frames_per_segment * SEGMENT_S


def segment_frame_indices(timestamps: np.ndarray, frames_per_segment: int, rule: Rule = "timestamp",
                          num_segments: int = NUM_SEGMENTS) -> np.ndarray:
    """Frame indices ``(num_segments, frames_per_segment)`` int64 for one video.

    ``timestamps``: ``(n,)`` start time in seconds of each decoded frame, in frame-index order
    (only its length is used by ``"ave_reference"``).
    """
    ts = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    n = ts.shape[0]
    if n == 0:
        raise ValueError("no frames: cannot sample an empty video")
    if rule == "ave_reference":
        fi = n // num_segments
        s = np.arange(num_segments)[:, None]
        k = np.arange(frames_per_segment)[None, :]
        # Same float operations, in the same order, as the reference `int(s*fi + k/16*fi)`.
        idx = (s * fi + k / frames_per_segment * fi).astype(np.int64)
        return np.clip(idx, 0, n - 1)
    if rule == "timestamp":
        # Frame order is index order; a non-monotonic stream is read through its running max
        # so that searchsorted stays valid (decord sorts frames by pts, so this is a guard).
        mono = np.maximum.accumulate(ts)
        t = sample_times(frames_per_segment, num_segments)
        idx = np.searchsorted(mono, t + TIME_EPS_S, side="right") - 1
        return np.clip(idx, 0, n - 1).astype(np.int64)
    raise ValueError(f"unknown sampling rule {rule!r}; allowed: {', '.join(RULES)}")


def is_variable_rate(timestamps: np.ndarray, tolerance: float = 0.2) -> bool:
    """True when frame durations differ by more than ``tolerance`` x the median duration."""
    ts = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    if ts.shape[0] < 3:
        return False
    d = np.diff(ts)
    med = float(np.median(d))
    if med <= 0:
        return True
    return bool(np.max(np.abs(d - med)) > tolerance * med)
