"""Checkpoints: plain dicts of state_dicts plus what is needed to rebuild the head.

``best.pt`` (evaluation): ``format, head, setting, hparams, dims, recipe, params, epoch, step,
val_accuracy, num_parameters, train_seconds, categories, features, model``; ``features`` is the
provenance of the two feature files trained on (``{"visual": attrs, "audio": attrs}``: encoder,
``model_spec_json``, weights and sha256, frames per segment, sampling, image size, sample rate),
what ``pipeline.localize`` rebuilds the extractors from.
``last.pt`` (resume): the same plus ``optimizer, scheduler, rng, best, history, fingerprint``.
Loading uses ``weights_only=True`` and strict ``load_state_dict``; never ``torch.save(model)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipeline.runtime import atomic_torch_save

FORMAT = 1


def save(obj: dict[str, Any], path: str | Path) -> None:
    """Write atomically (an interrupted save never leaves a truncated checkpoint; the temporary
    name is unique per process)."""
    atomic_torch_save(obj, path)


PER_ROW_ATTRS = ("problems_json", "row_flags_json")  # per-row reports: not provenance


def feature_provenance(visual_meta: dict[str, Any], audio_meta: dict[str, Any]) -> dict[str, Any]:
    """The feature files' attributes that describe how they were made (plain types only)."""
    plain = (str, int, float, bool, list, dict)
    return {kind: {k: v for k, v in meta.items() if k not in PER_ROW_ATTRS and isinstance(v, plain)}
            for kind, meta in (("visual", visual_meta), ("audio", audio_meta))}


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint (run the train stage first)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: not a training checkpoint of format {FORMAT}")
    return ckpt


def build_from(ckpt: dict[str, Any], device: str | torch.device = "cpu"):
    """Rebuild the head of a checkpoint (registry + stored hyperparameters), strict load."""
    from pipeline.heads import build_head
    head = build_head(ckpt["head"], setting=ckpt["setting"], **ckpt["dims"], **ckpt["hparams"])
    head.load_state_dict(ckpt["model"], strict=True)
    return head.to(device)


def load_head(path: str | Path, device: str | torch.device = "cpu"):
    """``(head, checkpoint)`` from ``best.pt``/``last.pt``; the head is in eval mode."""
    ckpt = load(path)
    return build_from(ckpt, device).eval(), ckpt
