"""``fully``: segment labels, every segment of a training video labelled (every head's paper
defines it); scored per segment (:class:`pipeline.settings.Setting`)."""
from __future__ import annotations

from pipeline.settings import Setting, register_setting


@register_setting
class Fully(Setting):
    """Segment labels (every head's paper defines it)."""
    name = "fully"
    order = 0
    paper_params = True  # the papers' parameter counts are of their fully supervised models
