"""Evaluate a trained checkpoint on one split; log metrics and plots with DVCLive.

Writes under ``out_dir`` (a DVCLive dir): ``index.html`` (a self-contained page: results,
confusion matrix, every video's timeline), ``metrics.json`` (accuracy, event precision/recall/F1,
per-class accuracy, parameter count, training time), ``plots/sklearn/confusion_matrix.json``
(DVC confusion template), and ``plots/images/{confusion.png, timeline_*.png}``.

A ``cml`` checkpoint (M2N's cross-modality localization) is scored by M2N's protocol instead
(``pipeline.heads.m2n.cml_evaluate``): ``accuracy`` is the mean of ``cross_modal/a2v`` and
``cross_modal/v2a`` (exact window match, M2N Table 1 "Average"); class and event metrics are not
defined there, and the confusion matrix and timelines compare the predicted windows of both
directions with the event segments (labels ``event`` / ``background``). It is evaluated on the
cml split (``<split>_order_match.h5``) without the events spanning all segments and those
without an event segment; ``cml_excluded/full_length`` and ``cml_excluded/no_event`` count them.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from dvclive import Live

from pipeline.data.ids import safe_filename
from pipeline.data.prepare import load_manifest
from pipeline.evaluation import metrics as M
from pipeline.evaluation import plots
from pipeline.heads.m2n import DIRECTIONS, cml_evaluate
from pipeline.runtime import atomic_write_json, select_device
from pipeline.evaluation.html import write_evaluation_page
from pipeline.training import checkpoint as ckpt_io
from pipeline.training.data import load_dataset
from pipeline.training.loop import predict


def _video_ids(prepared: Path, rows: np.ndarray) -> list[str]:
    """Video id of each row (``row<index>`` without a manifest); data, not yet a file name."""
    if not (prepared / "manifest.csv").is_file():
        return [f"row{r}" for r in rows]
    by_index = {int(m["index"]): str(m["video_id"]) for m in load_manifest(prepared)}
    return [by_index.get(int(r), f"row{r}") for r in rows]


def timeline_name(i: int, video_id: str) -> str:
    """File name of a timeline image: the video id sanitised, so it stays in its folder."""
    return f"timeline_{i:03d}_{safe_filename(video_id)}.png"


# How heads that are not a per-segment argmax turn their outputs into segment classes (the
# evaluate page and the metrics state it). A head class may give its own ``prediction_rule``.
_RELEVANCE_RULE = ("a segment whose event-relevance score passes 0.5 (sigmoid) takes the video's "
                   "top class; every other segment is background")


def prediction_rule(head: str, setting: str, hparams: dict[str, Any]) -> str | None:
    """The head's rule from outputs to segment classes, or None for a per-segment argmax."""
    from pipeline.heads import get_head_class
    own = getattr(get_head_class(head), "prediction_rule", None)
    if callable(own):
        return own(setting, hparams)
    if setting == "cml":
        return ("cross-modal localization (M2N): each query's predicted window is marked 'event', "
                "the rest 'background'; rows A2V then V2A")
    if setting == "fully" and head in ("cmbs", "cace", "m2n"):
        return _RELEVANCE_RULE
    if setting == "fully" and head == "vscg":
        return (f"a segment whose event score passes event_threshold "
                f"({hparams.get('event_threshold', 0.5)}) takes the video's top event class; every "
                f"other segment is background")
    if setting == "weak" and head == "cmbs" and hparams.get("weak_predict") == "video":
        return ("weak_predict: video: every segment takes the video's class, so no segment is "
                "predicted background (heads.cmbs.weak_predict=segment: per-segment argmax)")
    return None


def evaluate(checkpoint: str | Path, prepared: str | Path, features: str | Path, visual: str,
             audio: str, out_dir: str | Path | None, *, split: str = "test", batch_size: int = 64,
             timelines: int = 4, device: str = "auto") -> dict[str, Any]:
    """Metrics of ``checkpoint`` on ``split``; with ``out_dir``, logged there via DVCLive."""
    dev = select_device(device, "train.device")
    head, ckpt = ckpt_io.load_head(checkpoint, dev)
    trained_on = (ckpt.get("params") or {}).get("train") or {}
    for key, name in (("visual", visual), ("audio", audio)):
        if trained_on.get(key) not in (None, name):
            raise ValueError(f"{checkpoint} was trained on train.{key}={trained_on[key]!r}, "
                             f"evaluation asked for {name!r}")
    data = load_dataset(prepared, features, visual, audio, splits=(split,),
                        setting=ckpt["setting"])
    if data.num_classes != ckpt["dims"]["num_classes"]:
        raise ValueError(f"labels have {data.num_classes} classes, checkpoint "
                         f"{ckpt['dims']['num_classes']}")
    s = data.splits[split]
    if ckpt.get("feature_norm"):
        s = s.normalized(ckpt["feature_norm"])  # the training run's train-split statistics
    vids = _video_ids(Path(prepared), s.rows)
    if ckpt["setting"] == "cml":
        res, pred, true, vids = _cross_modal(head, s, dev, batch_size, vids)
    else:
        pred = predict(head, s, dev, batch_size).numpy()
        true = s.targets.numpy()
        res = M.summarize(pred, true, data.categories)
    res.update(head=ckpt["head"], setting=ckpt["setting"], split=split, videos=len(s),
               excluded=len(s.excluded), num_parameters=int(ckpt["num_parameters"]),
               train_seconds=float(ckpt["train_seconds"]), best_epoch=int(ckpt["epoch"]) + 1,  # counted from 1
               val_accuracy=float(ckpt["val_accuracy"]),
               selected_by=ckpt.get("selected_by", "val"))
    rule = prediction_rule(ckpt["head"], ckpt["setting"], ckpt.get("hparams") or {})
    if rule:
        res["prediction_rule"] = rule
        print(f"prediction rule: {rule}")
    if ckpt["setting"] == "cml":
        res["cml_excluded"] = {k: len(v) for k, v in s.cml_excluded.items()}
        res["cml_excluded_by_split"] = {**ckpt.get("cml_excluded", {}),
                                        split: res["cml_excluded"]}  # train/val: training run
    if "cross_modal" in res:
        print(f"{split} (cml split): cross-modal localization A2V "
              f"{res['cross_modal']['a2v']:.4f}, V2A {res['cross_modal']['v2a']:.4f}, average "
              f"{res['accuracy']:.4f} ({len(s)} videos; excluded: {len(s.excluded)} invalid "
              f"features, {res['cml_excluded']['full_length']} full-length events, "
              f"{res['cml_excluded']['no_event']} without an event)")
    else:
        print(f"{split}: accuracy {res['accuracy']:.4f} on {res['segments']} segments ({len(s)} "
              f"videos, {len(s.excluded)} excluded); event F1 {res['event']['f1']:.4f}")
    if out_dir is not None:
        _log(res, pred, true, vids, Path(out_dir), timelines)
        write_evaluation_page(Path(out_dir) / "index.html", res, pred, true, vids)
    return res


def _cross_modal(head, split, device: torch.device, batch_size: int, vids: list[str]
                 ) -> tuple[dict[str, Any], np.ndarray, np.ndarray, list[str]]:
    """M2N's CML metrics of a ``cml`` head, and its predicted windows as event (0) /
    background (1) segments against the truth: rows A2V then V2A (for the plots)."""
    acc, windows = cml_evaluate(head, split.visual, split.audio, split.labels, device, batch_size)
    events = split.targets.numpy() != split.labels.shape[-1] - 1
    pred = np.concatenate([np.where(windows[d].numpy(), 0, 1) for d in DIRECTIONS])
    true = np.tile(np.where(events, 0, 1), (len(DIRECTIONS), 1))
    res = {"accuracy": acc["average"], "cross_modal": {d: acc[d] for d in DIRECTIONS},
           "labels": ["event", "background"], "segments": int(true.size),
           "confusion": M.confusion_matrix(pred, true, 2).tolist()}
    return res, pred, true, [f"{d}_{v}" for d in DIRECTIONS for v in vids]


def _log(res: dict, pred: np.ndarray, true: np.ndarray, vids: list[str], out_dir: Path,
         timelines: int) -> None:
    names = res["labels"]
    with Live(str(out_dir), save_dvc_exp=False, dvcyaml=False) as live:
        for k in ("accuracy", "num_parameters", "train_seconds", "val_accuracy", "best_epoch",
                  "videos", "excluded"):
            live.log_metric(k, res[k], plot=False)
        for k, v in res.get("event", {}).items():
            live.log_metric(f"event/{k}", v, plot=False)
        for k, v in res.get("cross_modal", {}).items():
            live.log_metric(f"cross_modal/{k}", v, plot=False)
        for k, v in res.get("cml_excluded", {}).items():
            live.log_metric(f"cml_excluded/{k}", v, plot=False)
        for name, v in res.get("per_class", {}).items():
            if v is not None and not math.isnan(v):
                live.log_metric(f"per_class/{name}", v, plot=False)
        live.log_sklearn_plot("confusion_matrix", [names[i] for i in true.reshape(-1)],
                              [names[i] for i in pred.reshape(-1)], name="confusion_matrix.json")
        fig = plots.confusion_figure(np.asarray(res["confusion"]), names,
                                     f"{res['head']} ({res['setting']}) {res['split']}")
        live.log_image("confusion.png", fig)
        plots.close(fig)
        for i in _timeline_rows(true, timelines, background=len(names) - 1):
            fig = plots.timeline_figure(pred[i], true[i], names,
                                        f"{vids[i]}: {res['head']} ({res['setting']})")
            live.log_image(timeline_name(i, vids[i]), fig)
            plots.close(fig)
    atomic_write_json(out_dir / "confusion.json", {"labels": names, "matrix": res["confusion"]},
                      indent=1)


def _timeline_rows(true: np.ndarray, k: int, background: int) -> list[int]:
    """``k`` test videos in split order, those with both event and background segments first."""
    mixed = [i for i in range(len(true))
             if (true[i] == background).any() and (true[i] != background).any()]
    rest = [i for i in range(len(true)) if i not in set(mixed)]
    return (mixed + rest)[:max(k, 0)]
