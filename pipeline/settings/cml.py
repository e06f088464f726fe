"""``cml``: M2N's cross-modality localization (Wang et al., CVPR 2021, Sec. 3.5, Table 1).

The event segments of one modality are the query, the head scores each segment of the other
modality (``Head.cross_modal_relevance(visual, audio, query_mask, direction)``), and the
``l``-window with the largest sum must match the event exactly (A2V, V2A accuracy). Inference and
metric (Sec. 4.1, Table 1): :func:`best_window`, :func:`window_localization_accuracy`, batched by
:func:`cml_evaluate`. A head that lists ``cml`` in its ``settings`` implements
``cross_modal_relevance`` and trains on the batches of :class:`CrossModalLocalization`.
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline.layout import ORDER_MATCH_FILE
from pipeline.settings import Setting, register_setting
from pipeline.settings.metrics import confusion_matrix
from pipeline.settings.targets import relevance_targets

DIRECTIONS = ("a2v", "v2a")  # CML query -> searched modality (Table 1 columns)


def cml_exclusions(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks over rows of one-hot ``labels`` (n, T, C+1): ``full_length`` (every segment
    an event: one window, trivially right) and ``no_event`` (no query)."""
    events = (labels[..., -1] == 0).sum(1)
    return {"full_length": events == labels.shape[1], "no_event": events == 0}


@register_setting
class CrossModalLocalization(Setting):
    """M2N's cross-modality localization (Sec. 3.5, Table 1) on the cml split
    (``<split>_order_match.h5``): the event segments of one modality are the query, the head
    scores the other modality's segments. Samples without an event segment (no query) are left
    out everywhere. Events spanning all segments (one possible window, trivially right) are
    left out where the AVE reference evaluation skips them, at evaluation (val, test), and kept
    in training, as AVE-ECCV18's ``cmm_train.py`` trains on every row; both are counted. The
    selection metric is the mean of the A2V and V2A window accuracies; evaluation adds each
    direction, and its confusion matrix and timelines compare the predicted windows of both
    directions with the event segments."""

    name = "cml"
    order = 2
    segment_labels = False  # it matches a query across modalities: no class per segment
    table = "cross_modal"  # its own results-table section (M2N Table 1's layout)
    video_score = "mean exact-window match of A2V and V2A"
    order_file = ORDER_MATCH_FILE
    order_hint = " (the cml split: the data root needs cml/{train,val,test}Set.txt; re-run prepare)"

    def select_rows(self, split, labels, rows):
        masks = cml_exclusions(labels)
        if split == "train":  # the reference trains on every row with a query
            masks["full_length"] = np.zeros(len(rows), dtype=bool)
        keep = rows[~np.logical_or.reduce(list(masks.values()))]
        return keep, {k: rows[m] for k, m in masks.items()}

    def metrics(self, head, data, device, num_classes):
        acc = cml_evaluate(head, data.visual, data.audio, data.labels, device)[0]
        return {"accuracy": acc["average"], "a2v": acc["a2v"], "v2a": acc["v2a"]}

    def evaluate(self, head, data, device, batch_size, categories, video_ids):
        acc, windows = cml_evaluate(head, data.visual, data.audio, data.labels, device, batch_size)
        events = data.targets.numpy() != data.labels.shape[-1] - 1
        pred = np.concatenate([np.where(windows[d].numpy(), 0, 1) for d in DIRECTIONS])
        true = np.tile(np.where(events, 0, 1), (len(DIRECTIONS), 1))
        res = {"accuracy": acc["average"], "cross_modal": {d: acc[d] for d in DIRECTIONS},
               "labels": ["event", "background"], "segments": int(true.size),
               "confusion": confusion_matrix(pred, true, 2).tolist()}
        return res, pred, true, [f"{d}_{v}" for d in DIRECTIONS for v in video_ids]

    def video_scores(self, pred, true):
        """Rows are the A2V then the V2A windows (2n, T): a video scores the mean of its two
        exact matches."""
        return (np.asarray(pred) == np.asarray(true)).all(1).reshape(len(DIRECTIONS), -1).mean(0)

    def extra_metrics(self, data, trained):
        counts = {k: len(v) for k, v in data.setting_excluded.items()}
        return {"cml_excluded": counts,  # train/val: from the training run
                "cml_excluded_by_split": {**trained.get("cml_excluded", {}), data.split: counts}}

    def table_row(self, result, result_test_selected, reported):
        """Per-direction accuracies (%, ours and the paper's), test videos and exclusions."""
        def pct(d):
            return {k: None if v is None else round(100 * v, 2) for k, v in d.items()}
        ts = result_test_selected
        return {"cross_modal": pct(result["cross_modal"]) if result else None,
                "cross_modal_test_selected": pct(ts["cross_modal"]) if ts else None,
                "paper_cross_modal": (dict(reported.per_direction)
                                      if reported and reported.per_direction else None),
                "videos": int(result["videos"]) if result else None,
                "cml_excluded": dict(result["cml_excluded"]) if result else None,
                "cml_excluded_by_split": (dict(result.get("cml_excluded_by_split", {}))
                                          if result else None)}

    def describe(self, res, split, data):
        return (f"{split} (cml split): cross-modal localization A2V "
                f"{res['cross_modal']['a2v']:.4f}, V2A {res['cross_modal']['v2a']:.4f}, average "
                f"{res['accuracy']:.4f} ({len(data)} videos; excluded: {len(data.excluded)} invalid "
                f"features, {res['cml_excluded']['full_length']} full-length events, "
                f"{res['cml_excluded']['no_event']} without an event)")


def best_window(scores: torch.Tensor, length: int) -> int:
    """Start of the ``length``-long window with the maximum contiguous sum of ``scores`` (T,)."""
    return int(scores.unfold(0, length, 1).sum(-1).argmax())


def window_predictions(relevance: torch.Tensor, event_mask: torch.Tensor) -> torch.Tensor:
    """CML inference (Sec. 3.5): each video's predicted window ``(B, T)`` bool, the ``l``-window
    with the maximum contiguous sum of ``relevance`` (B, T), ``l`` = its count of ground-truth
    event segments in ``event_mask`` (B, T) (the query length); empty for a video without one."""
    windows = torch.zeros(event_mask.shape, dtype=torch.bool)
    for i, (scores, length) in enumerate(zip(relevance.float().cpu(), event_mask.sum(1).tolist())):
        if length:
            start = best_window(scores, length)
            windows[i, start:start + length] = True
    return windows


def window_localization_accuracy(relevance: torch.Tensor, event_mask: torch.Tensor) -> float:
    """CML metric (Sec. 4.1): the fraction of videos whose predicted window
    (:func:`window_predictions`) equals the ground-truth event segments ``event_mask`` (B, T)
    exactly. Videos whose event is not one contiguous run of 1..T segments cannot be matched by
    a window and are skipped.
    """
    mask = event_mask.bool().cpu()
    n = mask.sum(1)
    first = mask.int().argmax(1)
    last = mask.shape[1] - 1 - mask.flip(1).int().argmax(1)
    contiguous = (n > 0) & (last - first + 1 == n)
    if not contiguous.any():
        raise ValueError("no video with one contiguous ground-truth event to evaluate")
    correct = (window_predictions(relevance, mask) == mask).all(1)
    return float(correct[contiguous].float().mean())


@torch.no_grad()
def cml_evaluate(head: torch.nn.Module, visual: torch.Tensor, audio: torch.Tensor, labels: torch.Tensor,
                 device: torch.device, batch_size: int = 64
                 ) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """M2N's CML evaluation (Sec. 4.1, Table 1) of a head trained in the ``cml`` setting.

    ``visual`` (n, T, H, W, Cv), ``audio`` (n, T, Ca), one-hot ``labels`` (n, T, C+1) of a split
    (any dtype; cast per batch on ``device``). Each video's event segments are the query of
    ``cross_modal_relevance`` in both directions, in eval mode. Returns the accuracies
    ``{"a2v", "v2a", "average"}`` (Table 1 columns, fractions) and the predicted windows
    ``{"a2v", "v2a"}`` (n, T) bool.
    """
    was_training = head.training
    head.eval()
    relevance: dict[str, list[torch.Tensor]] = {d: [] for d in DIRECTIONS}
    for s in range(0, len(visual), batch_size):
        v = visual[s:s + batch_size].to(device).float()
        a = audio[s:s + batch_size].to(device).float()
        events = relevance_targets(labels[s:s + batch_size].to(device)).bool()
        for d in DIRECTIONS:
            relevance[d].append(head.cross_modal_relevance(v, a, events, d).cpu())
    head.train(was_training)
    mask = relevance_targets(labels).bool()
    acc = {d: window_localization_accuracy(torch.cat(r), mask) for d, r in relevance.items()}
    acc["average"] = sum(acc[d] for d in DIRECTIONS) / len(DIRECTIONS)
    return acc, {d: window_predictions(torch.cat(r), mask) for d, r in relevance.items()}
