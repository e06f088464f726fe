"""Targets derived from one-hot segment labels ``(B, T, C+1)`` (background = index ``C``),
shared by the settings and the heads."""
from __future__ import annotations

import torch


def relevance_targets(labels: torch.Tensor) -> torch.Tensor:
    """One-hot ``(B, T, C+1)`` -> event relevance ``(B, T)`` float (1 = event, 0 = background)."""
    return 1.0 - labels[..., -1]


def video_event_class(labels: torch.Tensor) -> torch.Tensor:
    """One-hot ``(B, T, C+1)`` -> the video's event class ``(B,)`` in ``0..C-1`` (authors' code:
    the foreground class present in the video)."""
    return labels[..., :-1].sum(1).argmax(-1)
