"""Targets derived from one-hot segment labels ``(B, T, C+1)`` (background = index ``C``),
shared by the settings and the heads."""
from __future__ import annotations

import torch


def relevance_targets(labels: torch.Tensor) -> torch.Tensor:
    """One-hot ``(B, T, C+1)`` -> event relevance ``(B, T)`` float (1 = event, 0 = background)."""
    return 1.0 - labels[..., -1]


VIDEO_CLASS_RULES = ("most_frequent", "max_index")


def video_event_class(labels: torch.Tensor, rule: str = "most_frequent") -> torch.Tensor:
    """One-hot ``(B, T, C+1)`` -> the video's event class ``(B,)`` in ``0..C-1``, the ``L_c``
    target (recipe switch ``video_class``):

    * ``most_frequent``: the foreground class of most segments (ties: the smaller index);
    * ``max_index``: the largest foreground class index present, as the authors' CMBS, CACE-Net
      and VSCG scripts compute it (``labels_foreground.max(-1)`` per segment, then ``.max(-1)``
      over segments).

    The two differ only on a video with two event classes. A video without an event gets 0 in
    both (as the scripts do)."""
    fg = labels[..., :-1]
    if rule == "most_frequent":
        return fg.sum(1).argmax(-1)
    if rule == "max_index":
        per_segment = fg.max(-1)  # values (B, T), indices (B, T); a background segment: 0
        index = torch.where(per_segment.values > 0, per_segment.indices, 0)
        return index.max(-1).values
    raise ValueError(f"video_class must be one of {', '.join(VIDEO_CLASS_RULES)}, got {rule!r}")
