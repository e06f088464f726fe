"""Evaluate a trained checkpoint on one split; log metrics and plots with DVCLive.

Writes under ``out_dir`` (a DVCLive dir): ``index.html`` (a self-contained page: results,
confusion matrix, every video's timeline), ``metrics.json`` (accuracy, event precision/recall/F1,
per-class accuracy, parameter count, training time), ``plots/sklearn/confusion_matrix.json``
(DVC confusion template), ``plots/images/{confusion.png, timeline_*.png}`` and
``per_video.json`` (each video's row in ``Annotations.txt``, id and score: the share of its
segments predicted right, whose mean is ``accuracy``; read by the results table's bootstrap
intervals).

The checkpoint's setting scores it (:mod:`pipeline.settings`): a
``cml`` checkpoint (M2N's cross-modality localization) is scored by M2N's protocol: ``accuracy``
is the mean of ``cross_modal/a2v`` and ``cross_modal/v2a`` (exact window match, M2N Table 1
"Average"); the confusion matrix and timelines compare the predicted windows of both directions
with the event segments (labels ``event`` / ``background``); ``cml_excluded/full_length`` and
``cml_excluded/no_event`` count the test rows it leaves out.
Its per-video score (``Setting.video_scores``) is the mean exact-window match of A2V and V2A.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from dvclive import Live

from pipeline.config import InputError
from pipeline.data.ids import safe_filename
from pipeline.data.manifest import load_manifest
from pipeline import layout, settings
from pipeline.evaluation import plots
from pipeline.evaluation.html import write_evaluation_page
from pipeline.heads import prediction_rule
from pipeline.runtime import atomic_write_json, select_device
from pipeline.training import checkpoint as ckpt_io
from pipeline.training.data import load_dataset


def _video_ids(prepared: Path, rows: np.ndarray) -> list[str]:
    """Video id of each row (``row<index>`` without a manifest); data, not yet a file name."""
    if not (prepared / layout.MANIFEST_FILE).is_file():
        return [f"row{r}" for r in rows]
    by_index = {int(m["index"]): str(m["video_id"]) for m in load_manifest(prepared)}
    return [by_index.get(int(r), f"row{r}") for r in rows]


def timeline_name(i: int, video_id: str) -> str:
    """File name of a timeline image: the video id sanitised, so it stays in its folder."""
    return layout.TIMELINE_IMAGE.format(index=i, video=safe_filename(video_id))


def evaluate(checkpoint: str | Path, prepared: str | Path, features: str | Path, visual: str,
             audio: str, out_dir: str | Path | None, *, split: str = "test", batch_size: int = 64,
             timelines: int = 4, device: str = "auto") -> dict[str, Any]:
    """Metrics of ``checkpoint`` on ``split``; with ``out_dir``, logged there via DVCLive."""
    dev = select_device(device, "train.device")
    head, ckpt = ckpt_io.load_head(checkpoint, dev)
    trained_on = (ckpt.get("params") or {}).get("train") or {}
    for key, name in (("visual", visual), ("audio", audio)):
        if trained_on.get(key) not in (None, name):
            raise InputError(f"{checkpoint}: trained on train.{key}={trained_on[key]!r}, "
                             f"evaluation asked for {name!r}")
    ckpt_io.check_feature_dims(ckpt, checkpoint, {
        role: (ckpt_io.feature_file_shape(layout.feature_file(features, name)),
               str(layout.feature_file(features, name)))
        for role, name in (("visual", visual), ("audio", audio))
        if layout.feature_file(features, name).is_file()})
    data = load_dataset(prepared, features, visual, audio, splits=(split,),
                        setting=ckpt["setting"])
    if data.num_classes != ckpt["dims"]["num_classes"]:
        raise InputError(f"{checkpoint}: labels have {data.num_classes} classes, checkpoint "
                         f"{ckpt['dims']['num_classes']}")
    s = data.splits[split]
    if ckpt.get("feature_norm"):
        s = s.normalized(ckpt["feature_norm"])  # the training run's train-split statistics
    setting = settings.get(ckpt["setting"])
    vids = _video_ids(Path(prepared), s.rows)
    per_video = {"rows": [int(r) for r in s.rows], "videos": list(vids)}
    res, pred, true, vids = setting.evaluate(head, s, dev, batch_size, data.categories, vids)
    per_video["score"] = setting.video_scores(pred, true).tolist()
    res.update(head=ckpt["head"], setting=ckpt["setting"], split=split, videos=len(s),
               excluded=len(s.excluded), num_parameters=int(ckpt["num_parameters"]),
               train_seconds=float(ckpt["train_seconds"]), best_epoch=int(ckpt["epoch"]) + 1,  # counted from 1
               val_accuracy=float(ckpt["val_accuracy"]),
               selected_by=ckpt.get("selected_by", "val"))
    rule = prediction_rule(ckpt["head"], ckpt["setting"], ckpt.get("hparams") or {})
    if rule:
        res["prediction_rule"] = rule
        print(f"prediction rule: {rule}")
    res.update(setting.extra_metrics(s, ckpt))
    print(setting.describe(res, split, s))
    if out_dir is not None:
        _log(res, pred, true, vids, Path(out_dir), timelines)
        write_evaluation_page(Path(out_dir) / layout.PAGE_FILE, res, pred, true, vids)
        atomic_write_json(Path(out_dir) / layout.PER_VIDEO_FILE, {
            "head": res["head"], "setting": res["setting"], "split": split,
            "score": setting.video_score, **per_video})
    return res


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
                              [names[i] for i in pred.reshape(-1)], name=layout.CONFUSION_PLOT)
        fig = plots.confusion_figure(np.asarray(res["confusion"]), names,
                                     f"{res['head']} ({res['setting']}) {res['split']}")
        live.log_image(layout.CONFUSION_IMAGE, fig)
        plots.close(fig)
        for i in _timeline_rows(true, timelines, background=len(names) - 1):
            fig = plots.timeline_figure(pred[i], true[i], names,
                                        f"{vids[i]}: {res['head']} ({res['setting']})")
            live.log_image(timeline_name(i, vids[i]), fig)
            plots.close(fig)
    atomic_write_json(out_dir / layout.CONFUSION_FILE, {"labels": names, "matrix": res["confusion"]},
                      indent=1)


def _timeline_rows(true: np.ndarray, k: int, background: int) -> list[int]:
    """``k`` test videos in split order, those with both event and background segments first."""
    mixed = [i for i in range(len(true))
             if (true[i] == background).any() and (true[i] != background).any()]
    rest = [i for i in range(len(true)) if i not in set(mixed)]
    return (mixed + rest)[:max(k, 0)]
