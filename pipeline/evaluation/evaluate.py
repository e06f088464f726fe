"""Evaluate a trained checkpoint on one split; log metrics and plots with DVCLive.

Writes under ``out_dir`` (a DVCLive dir): ``metrics.json`` (accuracy, event precision/recall/F1,
per-class accuracy, parameter count, training time, cross-modal A2V/V2A where the head supports
it), ``plots/sklearn/confusion_matrix.json`` (DVC confusion template), and
``plots/images/{confusion.png, timeline_*.png}``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from pipeline.evaluation import metrics as M
from pipeline.evaluation import plots
from pipeline.training import checkpoint as ckpt_io
from pipeline.training.data import load_dataset
from pipeline.training.loop import predict, select_device


def _video_ids(prepared: Path, rows: np.ndarray) -> list[str]:
    if not (prepared / "manifest.csv").is_file():
        return [f"row{r}" for r in rows]
    from pipeline.data.prepare import load_manifest
    by_index = {int(m["index"]): str(m["video_id"]) for m in load_manifest(prepared)}
    return [by_index.get(int(r), f"row{r}") for r in rows]


def cross_modal(head: torch.nn.Module, split, device: torch.device,
                batch_size: int = 64) -> Optional[dict[str, float]]:
    """M2N's cross-modal localization accuracy (A2V, V2A; exact window match, M2N Table 1) for
    heads with ``supports_cross_modal``; the protocol lives in ``pipeline.heads.m2n``."""
    if not getattr(head, "supports_cross_modal", False):
        return None
    from pipeline.heads.m2n import cross_modal_localization_accuracy

    vs, as_ = [], []
    with torch.no_grad():
        for s in range(0, len(split), batch_size):
            v, a = head.cross_modal_embed(split.visual[s:s + batch_size].to(device).float(),
                                          split.audio[s:s + batch_size].to(device).float())
            vs.append(v.cpu())
            as_.append(a.cpu())
    v, a = torch.cat(vs), torch.cat(as_)
    events = split.targets != split.labels.shape[-1] - 1
    return {d: float(cross_modal_localization_accuracy(v, a, events, d)) for d in ("a2v", "v2a")}


def evaluate(checkpoint: str | Path, prepared: str | Path, features: str | Path, visual: str,
             audio: str, out_dir: str | Path | None, *, split: str = "test", batch_size: int = 64,
             timelines: int = 4, device: str = "auto") -> dict[str, Any]:
    """Metrics of ``checkpoint`` on ``split``; with ``out_dir``, logged there via DVCLive."""
    dev = select_device(device)
    head, ckpt = ckpt_io.load_head(checkpoint, dev)
    trained_on = (ckpt.get("params") or {}).get("train") or {}
    for key, name in (("visual", visual), ("audio", audio)):
        if trained_on.get(key) not in (None, name):
            raise ValueError(f"{checkpoint} was trained on train.{key}={trained_on[key]!r}, "
                             f"evaluation asked for {name!r}")
    data = load_dataset(prepared, features, visual, audio, splits=(split,))
    if data.num_classes != ckpt["dims"]["num_classes"]:
        raise ValueError(f"labels have {data.num_classes} classes, checkpoint "
                         f"{ckpt['dims']['num_classes']}")
    s = data.splits[split]
    if ckpt.get("feature_norm"):
        s = s.normalized(ckpt["feature_norm"])  # the training run's train-split statistics
    pred = predict(head, s, dev, batch_size).numpy()
    true = s.targets.numpy()
    res = M.summarize(pred, true, data.categories)
    res.update(head=ckpt["head"], setting=ckpt["setting"], split=split, videos=len(s),
               excluded=len(s.excluded), num_parameters=int(ckpt["num_parameters"]),
               train_seconds=float(ckpt["train_seconds"]), best_epoch=int(ckpt["epoch"]),
               val_accuracy=float(ckpt["val_accuracy"]))
    xm = cross_modal(head, s, dev, batch_size)
    if xm is not None:
        res["cross_modal"] = xm
    print(f"{split}: accuracy {res['accuracy']:.4f} on {res['segments']} segments "
          f"({len(s)} videos, {len(s.excluded)} excluded); event F1 {res['event']['f1']:.4f}")
    if out_dir is not None:
        _log(res, pred, true, _video_ids(Path(prepared), s.rows), Path(out_dir), timelines)
    return res


def _log(res: dict, pred: np.ndarray, true: np.ndarray, vids: list[str], out_dir: Path,
         timelines: int) -> None:
    from dvclive import Live
    import matplotlib.pyplot as plt

    names = res["labels"]
    with Live(str(out_dir), save_dvc_exp=False, dvcyaml=False) as live:
        for k in ("accuracy", "num_parameters", "train_seconds", "val_accuracy", "best_epoch",
                  "videos", "excluded"):
            live.log_metric(k, res[k], plot=False)
        for k, v in res["event"].items():
            live.log_metric(f"event/{k}", v, plot=False)
        for k, v in (res.get("cross_modal") or {}).items():
            live.log_metric(f"cross_modal/{k}", v, plot=False)
        for name, v in res["per_class"].items():
            if v is not None and not math.isnan(v):
                live.log_metric(f"per_class/{name}", v, plot=False)
        live.log_sklearn_plot("confusion_matrix", [names[i] for i in true.reshape(-1)],
                              [names[i] for i in pred.reshape(-1)], name="confusion_matrix.json")
        fig = plots.confusion_figure(np.asarray(res["confusion"]), names,
                                     f"{res['head']} ({res['setting']}) {res['split']}")
        live.log_image("confusion.png", fig)
        plt.close(fig)
        for i in _timeline_rows(true, timelines, background=len(names) - 1):
            fig = plots.timeline_figure(pred[i], true[i], names,
                                        f"{vids[i]}: {res['head']} ({res['setting']})")
            live.log_image(f"timeline_{i:03d}_{vids[i]}.png", fig)
            plt.close(fig)
    (out_dir / "confusion.json").write_text(json.dumps(
        {"labels": names, "matrix": res["confusion"]}, indent=1))


def _timeline_rows(true: np.ndarray, k: int, background: int) -> list[int]:
    """``k`` test videos in split order, those with both event and background segments first."""
    mixed = [i for i in range(len(true))
             if (true[i] == background).any() and (true[i] != background).any()]
    rest = [i for i in range(len(true)) if i not in set(mixed)]
    return (mixed + rest)[:max(k, 0)]
