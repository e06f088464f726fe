"""``weak``: video labels only; scored per segment like ``fully``."""
from __future__ import annotations

from pipeline.settings import Setting, register_setting


@register_setting
class Weak(Setting):
    """Video labels only: the batch carries no per-segment labels, so no weak loss can use
    them; background-only training samples are appended when present. Besides ``weak`` (the
    event class alone, ``mil_labels.h5``) it carries ``shares`` (B, C+1): each class's share of
    the ten segments, background included, the ``prob_label`` that PSP's and VSCG's weak scripts
    train on (PSP's ``Y^weak``, the temporal mean of the segment labels)."""
    name = "weak"
    order = 1
    uses_background_only = True

    def batch(self, data, idx, device, epoch, epochs):
        batch = super().batch(data, idx, device, epoch, epochs)
        batch["shares"] = batch.pop("labels").float().mean(dim=1)
        return batch
