"""Segment-level metrics of AVE localization (scikit-learn's metrics; inputs are class indices).

``pred`` and ``true`` are ``(N, T)`` integer arrays in ``0..C`` with background ``C``.

* ``segment_accuracy``: the papers' metric (Tian et al. 2018, Sec. 5): correctly classified
  segments over all test segments; the same per-segment accuracy in the weak setting.
* ``per_class_accuracy``: for each class, correct segments over segments of that true class
  (None when the class has no test segment).
* ``event_detection``: event-vs-background as a binary task; positive = "not background".
  TP = predicted event on a true event segment (class ignored), precision = TP / predicted
  events, recall = TP / true events, F1 their harmonic mean (0 when undefined).
* ``confusion_matrix``: rows = true class, columns = predicted class, ``(C+1, C+1)`` counts.
"""
from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def _check(pred, true) -> tuple[np.ndarray, np.ndarray]:
    pred, true = np.asarray(pred).reshape(-1), np.asarray(true).reshape(-1)
    if pred.shape != true.shape:
        raise ValueError(f"pred has {pred.size} segments, true has {true.size}")
    return pred.astype(np.int64), true.astype(np.int64)


def segment_accuracy(pred, true) -> float:
    pred, true = _check(pred, true)
    return float(skm.accuracy_score(true, pred)) if true.size else float("nan")


def confusion_matrix(pred, true, num_labels: int) -> np.ndarray:
    """``(num_labels, num_labels)`` int64 counts, ``cm[true, pred]``."""
    pred, true = _check(pred, true)
    if true.size and (max(pred.max(), true.max()) >= num_labels or min(pred.min(), true.min()) < 0):
        raise ValueError(f"class index outside 0..{num_labels - 1}")
    if not true.size:
        return np.zeros((num_labels, num_labels), np.int64)
    return skm.confusion_matrix(true, pred, labels=np.arange(num_labels)).astype(np.int64)


def per_class_accuracy(pred, true, num_labels: int) -> list[float | None]:
    cm = confusion_matrix(pred, true, num_labels)
    support = cm.sum(axis=1)
    return [float(cm[c, c] / support[c]) if support[c] else None for c in range(num_labels)]


def event_detection(pred, true, background: int) -> dict[str, float]:
    pred, true = _check(pred, true)
    pe, te = pred != background, true != background
    if not true.size:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    p, r, f1, _ = skm.precision_recall_fscore_support(te, pe, average="binary", pos_label=True,
                                                      zero_division=0.0)
    return {"precision": float(p), "recall": float(r), "f1": float(f1)}


def summarize(pred, true, categories: list[str]) -> dict:
    """All test metrics in one dict (what the evaluate stage logs)."""
    k = len(categories) + 1
    names = list(categories) + ["background"]
    return {"accuracy": segment_accuracy(pred, true),
            "event": event_detection(pred, true, background=len(categories)),
            "per_class": dict(zip(names, per_class_accuracy(pred, true, k))),
            "confusion": confusion_matrix(pred, true, k).tolist(),
            "labels": names,
            "segments": int(np.asarray(true).size)}
