"""Bootstrap intervals over test videos for the results table (pure numpy, deterministic).

A cell's evaluation writes one score per test video (``per_video.json``: the share of its
segments predicted right; in ``cml`` the mean exact-window match of A2V and V2A), so a split's
accuracy is the mean of its videos' scores. Runs of one head with several seeds are pooled: a
resample draws test videos with replacement and averages every seed's score on them, so the
interval covers the choice of test videos and of the seed together. A paired comparison of two
heads draws the same videos for both and averages the difference of their seed-pooled scores.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

RESAMPLES = 1000  # bootstrap resamples of the test videos
SEED = 0  # seeds the resampling: the same scores always give the same interval
LEVEL = 0.95  # central interval (percentile bootstrap)


def _pooled(scores: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """(seeds, videos) scores -> per-video mean over seeds, checked."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 1:
        s = s[None]
    if s.ndim != 2 or s.shape[1] == 0:
        raise ValueError(f"scores must be (seeds, videos) with at least one video, got {s.shape}")
    return s.mean(0)


def _interval(per_video: np.ndarray, resamples: int, seed: int, level: float) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(per_video), size=(resamples, len(per_video)))
    means = per_video[idx].mean(1)
    tail = (1 - level) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    return float(lo), float(hi)


def bootstrap_ci(scores: Sequence[Sequence[float]] | np.ndarray, *, resamples: int = RESAMPLES,
                 seed: int = SEED, level: float = LEVEL) -> tuple[float, float]:
    """``level`` interval ``(lo, hi)`` of the mean score: ``scores`` is (seeds, videos), each
    row one seed's per-video scores on the same test videos in the same order."""
    return _interval(_pooled(scores), resamples, seed, level)


def paired_bootstrap(a: Sequence[Sequence[float]] | np.ndarray,
                     b: Sequence[Sequence[float]] | np.ndarray, *, resamples: int = RESAMPLES,
                     seed: int = SEED, level: float = LEVEL) -> tuple[float, tuple[float, float]]:
    """Mean difference ``a - b`` of two heads' seed-pooled scores on the same videos (columns
    aligned), and its ``level`` interval from resampling the videos for both at once."""
    pa, pb = _pooled(a), _pooled(b)
    if pa.shape != pb.shape:
        raise ValueError(f"paired scores need the same videos: {pa.shape} vs {pb.shape}")
    d = pa - pb
    return float(d.mean()), _interval(d, resamples, seed, level)
