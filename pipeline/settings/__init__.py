"""Settings: the supervision protocols a head trains and is scored under, as objects.

A setting owns which split rows it reads (its order files and the rows it leaves out), the
batch a head's ``loss`` receives (its targets), the selection metric of an epoch and the
evaluation of a split, and what the results table and ``localize`` say about it. A head lists
the settings its paper defines (``Head.settings``); the training loop, ``evaluate``, the report
and ``localize`` ask the setting object and never test a setting's name.

A setting is one module: ``pipeline/settings/<name>.py`` (every public module of this folder is
imported) or a module of another installed package under the entry point group
``ave_pipeline.settings``, holding a :class:`Setting` subclass decorated with
``@register_setting``. ``fully`` and ``weak`` are the papers' segment- and video-label settings,
``cml`` M2N's cross-modality localization. This package imports no heads, training or
evaluation code: heads build on it, not the reverse.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from pipeline import layout
from pipeline.runtime import discover_plugins

from . import metrics as M

ENTRY_POINT_GROUP = "ave_pipeline.settings"  # settings of other installed packages register here

_SETTINGS: dict[str, "Setting"] = {}


def register_setting(cls: type["Setting"]) -> type["Setting"]:
    """Register one instance of ``cls`` under ``cls.name`` (a name is registered once)."""
    if not cls.name:
        raise ValueError(f"setting {cls.__qualname__} has no name")
    if cls.name in _SETTINGS:
        raise ValueError(f"setting {cls.name!r} is registered twice "
                         f"({type(_SETTINGS[cls.name]).__module__} and {cls.__module__})")
    _SETTINGS[cls.name] = cls()
    return cls


def names() -> list[str]:
    """Registered settings, in list order (``Setting.order``, then name): what params accept."""
    return sorted(_SETTINGS, key=lambda n: (_SETTINGS[n].order, n))


def get(name: str) -> "Setting":
    """The setting object of ``name``; an unknown name is a ``KeyError`` listing the known ones."""
    try:
        return _SETTINGS[name]
    except KeyError:
        raise KeyError(f"unknown setting {name!r}; known: {', '.join(names())}") from None


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


class Setting:
    """Segment-level event localization (the base of ``fully`` and ``weak``).

    ``data`` arguments are splits in memory (``pipeline.training.data.SplitData``: ``visual``,
    ``audio``, ``labels``, ``weak``, ``targets``, ``excluded``, ``setting_excluded``)."""

    name = ""
    order = 100  # position in lists (params' report.settings default, errors, tables)
    order_file = layout.ORDER_FILE  # the split order files it reads (``{split}`` formatted)
    order_hint = "; run prepare"  # what to do when one is missing
    uses_background_only = False  # appends the background-only training samples when present
    video_score = "share of the video's segments predicted right"  # what video_scores gives
    segment_labels = True  # predicts a class per segment (localize can run a head trained in it)
    table = "segment"  # results-table section: segment (a column group each) | cross_modal
    paper_params = False  # the papers' parameter counts are of models trained in this setting

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
        """Metrics besides the setting's scores (``trained``: the checkpoint)."""
        return {}

    def describe(self, res: dict[str, Any], split: str, data) -> str:
        """The evaluation's one-line summary."""
        return (f"{split}: accuracy {res['accuracy']:.4f} on {res['segments']} segments "
                f"({len(data)} videos, {len(data.excluded)} excluded); event F1 "
                f"{res['event']['f1']:.4f}")

    def table_row(self, result: Optional[dict[str, Any]],
                  result_test_selected: Optional[dict[str, Any]], reported) -> dict[str, Any]:
        """What this setting adds to a results-table row (``result`` / ``result_test_selected``:
        the evaluations of the val- and test-selected checkpoints, ``None`` when not run;
        ``reported``: the paper's ``Reported`` number, or ``None``)."""
        return {}


def exclusion_counts(excluded: Optional[dict[str, np.ndarray]]) -> dict[str, int]:
    return {k: len(v) for k, v in (excluded or {}).items()}


discover_plugins(__name__, __path__, ENTRY_POINT_GROUP)

__all__ = ["ENTRY_POINT_GROUP", "Setting", "accuracy", "exclusion_counts", "get", "names",
           "predict", "register_setting"]
