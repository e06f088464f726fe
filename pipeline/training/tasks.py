"""Supervision protocols ("settings") as objects: what a head trains on and how it is scored.

A task owns, for one setting: which split rows it reads (its order files and the rows it leaves
out), the batch a head's ``loss`` receives (its targets), the selection metric of an epoch, and
the evaluation of a split. A head lists the settings it supports (``Head.settings``); the
training loop and ``evaluate`` look the task up by that name and call it, never testing a
setting's name themselves. Tasks register by name (``@register_task``): ``fully`` and ``weak``
here, ``cml`` (M2N's cross-modality localization) beside its head in ``pipeline/heads/m2n.py``.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from pipeline import layout
from pipeline.evaluation import metrics as M

SETTINGS = ("fully", "weak", "cml")  # the settings a head may declare; each is a task below
_TASKS: dict[str, "Task"] = {}


def register_task(cls: type["Task"]) -> type["Task"]:
    """Register a task class under ``cls.name`` (one instance; a name is registered once and is
    one of the registry's ``SETTINGS``, which config validation accepts)."""
    if cls.name not in SETTINGS:
        raise ValueError(f"task {cls.name!r} is not one of the settings {SETTINGS}")
    if cls.name in _TASKS:
        raise ValueError(f"task {cls.name!r} is registered twice")
    _TASKS[cls.name] = cls()
    return cls


def get_task(name: str) -> "Task":
    import pipeline.heads  # noqa: F401  (heads register the tasks they bring, e.g. cml)
    try:
        return _TASKS[name]
    except KeyError:
        raise KeyError(f"unknown setting {name!r}; known: {', '.join(_TASKS)}") from None


@torch.no_grad()
def predict(head: torch.nn.Module, data, device: torch.device, batch_size: int = 64) -> torch.Tensor:
    """Per-segment predictions (n, T) long on CPU, background = C (eval mode)."""
    was_training = head.training
    head.eval()
    preds = []
    for s in range(0, len(data), batch_size):
        v = data.visual[s:s + batch_size].to(device).float()
        a = data.audio[s:s + batch_size].to(device).float()
        preds.append(head.predict(head(v, a)).long().cpu())
    head.train(was_training)
    if not preds:
        return torch.zeros((0, data.labels.shape[1]), dtype=torch.long)
    return torch.cat(preds)


def accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float((pred == target).float().mean()) if target.numel() else float("nan")


class Task:
    """Segment-level event localization (the base of ``fully`` and ``weak``)."""

    name = ""
    order_file = layout.ORDER_FILE  # the split order files it reads (``{split}`` formatted)
    order_hint = "; run prepare"  # what to do when one is missing
    uses_background_only = False  # appends the background-only training samples when present
    video_score = "share of the video's segments predicted right"  # what video_scores gives

    def select_rows(self, split: str, labels: np.ndarray, rows: np.ndarray
                    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The rows of ``split`` it uses (of ``rows``, whose one-hot labels are ``labels``) and
        those it leaves out, by reason."""
        return rows, {}

    def batch(self, data, idx: torch.Tensor, device: torch.device, epoch: int,
              epochs: int) -> dict[str, Any]:
        """A training batch: features, the video-level labels (``weak``: ``mil_labels.h5``, the
        event class alone) and the segment labels (``labels``, one-hot)."""
        return {"visual": data.visual[idx].to(device).float(),
                "audio": data.audio[idx].to(device).float(),
                "weak": data.weak[idx].to(device),
                "labels": data.labels[idx].to(device),
                "epoch": epoch, "epochs": epochs}

    def metrics(self, head, data, device: torch.device, num_classes: int) -> dict[str, float]:
        """``accuracy`` (the selection metric: segment accuracy) and ``event_f1``."""
        pred = predict(head, data, device)
        return {"accuracy": accuracy(pred, data.targets),
                "event_f1": M.event_detection(pred.numpy(), data.targets.numpy(),
                                              background=num_classes)["f1"]}

    def evaluate(self, head, data, device: torch.device, batch_size: int, categories: list[str],
                 video_ids: list[str]) -> tuple[dict[str, Any], np.ndarray, np.ndarray, list[str]]:
        """``(metrics, predictions, truth, row names)`` of a split: accuracy, event
        precision/recall/F1, per-class accuracy and the confusion matrix."""
        pred = predict(head, data, device, batch_size).numpy()
        true = data.targets.numpy()
        return M.summarize(pred, true, categories), pred, true, video_ids

    def video_scores(self, pred: np.ndarray, true: np.ndarray) -> np.ndarray:
        """Each video's score, whose mean is the accuracy: the share of its segments right
        (rows of ``pred`` / ``true`` (n, T) from :meth:`evaluate`)."""
        pred, true = np.asarray(pred), np.asarray(true)
        return (pred == true).mean(1) if pred.size else np.zeros(len(pred))

    def extra_metrics(self, data, trained: dict[str, Any]) -> dict[str, Any]:
        """Metrics besides the task's scores (``trained``: the checkpoint)."""
        return {}

    def describe(self, res: dict[str, Any], split: str, data) -> str:
        """The evaluation's one-line summary."""
        return (f"{split}: accuracy {res['accuracy']:.4f} on {res['segments']} segments "
                f"({len(data)} videos, {len(data.excluded)} excluded); event F1 "
                f"{res['event']['f1']:.4f}")


@register_task
class Fully(Task):
    """Segment labels (every head's paper defines it)."""
    name = "fully"


@register_task
class Weak(Task):
    """Video labels only: the batch carries no per-segment labels, so no weak loss can use
    them; background-only training samples are appended when present. Besides ``weak`` (the
    event class alone, ``mil_labels.h5``) it carries ``shares`` (B, C+1): each class's share of
    the ten segments, background included, the ``prob_label`` that PSP's and VSCG's weak scripts
    train on (PSP's ``Y^weak``, the temporal mean of the segment labels)."""
    name = "weak"
    uses_background_only = True

    def batch(self, data, idx, device, epoch, epochs):
        batch = super().batch(data, idx, device, epoch, epochs)
        batch["shares"] = batch.pop("labels").float().mean(dim=1)
        return batch


def task_names() -> list[str]:
    """Registered settings, in registration order."""
    import pipeline.heads  # noqa: F401
    return list(_TASKS)


def exclusion_counts(excluded: Optional[dict[str, np.ndarray]]) -> dict[str, int]:
    return {k: len(v) for k, v in (excluded or {}).items()}
