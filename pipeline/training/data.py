"""Split tensors for training and evaluation, read once into memory.

Rows of a split are the prepared order file of the setting (``<split>_order.h5``; the
``cml`` setting: the cross-modality localization split, ``<split>_order_match.h5``); rows whose
visual or audio feature is invalid (``valid`` False in either feature file) are excluded,
counted and printed. The setting may leave out more rows, by reason (``cml``: events spanning all
segments and samples without an event segment), counted in ``SplitData.setting_excluded``.

Video-level labels (the weak setting's targets) are the prepared ``mil_labels.h5`` rows: the
event class alone, as published. In ``weak``, background-only training samples (the reference
code's ``*_noisy.h5``) are appended to the train split when present (:func:`background_only`).

Features stay in their stored dtype (float16 halves the memory of full AVE) and are cast to
float32 per batch on the device.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline import layout, settings
from pipeline.config import InputError
from pipeline.features.store import load_features
from pipeline.files import read_h5
from pipeline.layout import SPLITS, feature_file


@dataclass
class SplitData:
    """One split in memory: ``visual`` (n,T,H,W,Cv), ``audio`` (n,T,Ca), ``labels`` (n,T,C+1)."""

    split: str
    rows: np.ndarray  # Annotations.txt line indices kept (valid features), split order
    excluded: np.ndarray  # split rows left out for invalid features
    visual: torch.Tensor
    audio: torch.Tensor
    labels: torch.Tensor  # one-hot float32 (n, T, C+1)
    video_labels: torch.Tensor  # video-level float32 (n, C+1): mil_labels.h5 rows
    # split rows the setting left out, by reason (cml: "full_length", event over all T
    # segments; "no_event", no event segment); empty in fully / weak
    setting_excluded: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    background_only: int = 0  # trailing rows that are background-only samples (row id -1)
    setting: str = "fully"  # the setting the rows were selected for

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def weak(self) -> torch.Tensor:
        """Video-level labels (n, C+1), the weak setting's targets (as published
        ``mil_labels.h5``: the event class alone; background alone for background-only rows)."""
        return self.video_labels

    @property
    def targets(self) -> torch.Tensor:
        """Per-segment class indices (n, T), background = C."""
        return self.labels.argmax(dim=-1)

    def normalized(self, stats: dict[str, torch.Tensor]) -> "SplitData":
        """A copy with features standardized by ``stats`` (see :func:`feature_stats`), kept in
        their stored dtype."""
        def z(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
            out = torch.empty_like(x)
            big = torch.finfo(x.dtype).max if x.is_floating_point() else None
            for s in range(0, len(x), CHUNK):  # chunks: no float32 copy of a whole split
                v = (x[s:s + CHUNK].float() - mean) / std
                # kept finite in the stored dtype (float16 ends at 65504)
                out[s:s + CHUNK] = (v.clamp(-big, big) if big is not None else v).to(x.dtype)
            return out
        return dataclasses.replace(
            self, visual=z(self.visual, stats["visual_mean"], stats["visual_std"]),
            audio=z(self.audio, stats["audio_mean"], stats["audio_std"]))


CHUNK = 256  # rows per float32 chunk when computing or applying feature statistics


def feature_stats(split: SplitData, eps: float = 1e-6) -> dict[str, torch.Tensor]:
    """Per-channel mean and std of a split's visual and audio features (float32; channels =
    last axis), for ``train.feature_norm: standardize``. Computed on the train split only."""
    out = {}
    for name, x in (("visual", split.visual), ("audio", split.audio)):
        c = x.shape[-1]
        total, sq, n = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64), 0
        for s in range(0, len(x), CHUNK):
            v = x[s:s + CHUNK].reshape(-1, c).double()
            total += v.sum(0)
            sq += (v * v).sum(0)
            n += len(v)
        mean = total / max(n, 1)
        var = (sq / max(n, 1) - mean * mean).clamp_min(0)
        std = var.sqrt().float()
        out[f"{name}_mean"] = mean.float()
        # a channel constant on the train split is centred, not scaled (scikit-learn's
        # StandardScaler rule): dividing by ~0 would blow its val/test values up to inf
        out[f"{name}_std"] = torch.where(std < eps, torch.ones_like(std), std)
    return out


@dataclass
class Dataset:
    """All requested splits of one (visual, audio) feature pair."""

    splits: dict[str, SplitData]
    categories: list[str]
    visual_dim: int
    audio_dim: int
    visual_meta: dict
    audio_meta: dict
    setting: str = "fully"  # the protocol the splits were read for (cml: the cml split)

    @property
    def num_classes(self) -> int:
        return len(self.categories)


def read_order(prepared: str | Path, split: str, setting: str = "fully") -> np.ndarray:
    """Line indices of ``split`` from the order file of the setting (``<split>_order.h5``;
    cml: ``<split>_order_match.h5``)."""
    kind = settings.get(setting)
    path = Path(prepared) / kind.order_file.format(split=split)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split order file missing{kind.order_hint}")
    return np.asarray(read_h5(path, "order"), dtype=np.int64).reshape(-1)


def read_video_labels(prepared: str | Path, num_lines: int) -> np.ndarray:
    """``mil_labels.h5`` (N, C+1) float32; its row count must be the label rows'."""
    path = Path(prepared) / layout.VIDEO_LABELS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: video-level labels missing; run prepare")
    out = np.asarray(read_h5(path, "avadataset", (None, None)), dtype=np.float32)
    if len(out) != num_lines:
        raise InputError(f"{path}: {len(out)} rows but labels.h5 has {num_lines}")
    return out


def read_categories(prepared: str | Path, num_classes: int) -> list[str]:
    path = Path(prepared) / layout.CATEGORIES_FILE
    if path.is_file():
        cats = json.loads(path.read_text())
        if len(cats) != num_classes:
            raise InputError(f"{path}: {len(cats)} categories but labels.h5 has {num_classes} "
                             "event classes")
        return list(cats)
    names = [f"class{i}" for i in range(num_classes)]
    print(f"data: {path} missing; categories named class0..class{num_classes - 1}", flush=True)
    return names


def load_dataset(prepared: str | Path, features: str | Path, visual: str, audio: str,
                 splits: tuple[str, ...] = SPLITS, verbose: bool = True,
                 setting: str = "fully", background_only: bool = False) -> Dataset:
    """Read labels, orders and both feature files once; return the splits as tensors.

    ``setting`` picks the split files and exclusions (see the module doc);
    with ``background_only`` (settings that use them: weak), the background-only samples are
    appended to train when their files are present (:func:`read_background_only`)."""
    prepared = Path(prepared)
    kind = settings.get(setting)
    log = print if verbose else (lambda *a: None)
    labels = np.asarray(read_h5(prepared / layout.LABELS_FILE, "avadataset", (None, None, None)),
                        dtype=np.float32)
    video_labels = read_video_labels(prepared, len(labels))
    vpath, apath = feature_file(features, visual), feature_file(features, audio)
    for p, key in ((vpath, "train.visual"), (apath, "train.audio")):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: feature file missing ({key}={p.stem!r}); run the "
                                    "features stage or pick an extracted name")
    vis, aud = load_features(vpath), load_features(apath)
    n = len(labels)
    for fs, p in ((vis, vpath), (aud, apath)):
        if len(fs.data) != n:
            raise InputError(f"{p}: {len(fs.data)} rows but labels.h5 has {n} (rows must be "
                             "Annotations.txt line indices)")
    if vis.data.ndim != 5 or aud.data.ndim != 3:
        raise InputError(f"expected visual (N,T,H,W,C) and audio (N,T,D); got {vis.data.shape} "
                         f"({vpath}) and {aud.data.shape} ({apath})")
    valid = np.asarray(vis.valid, bool) & np.asarray(aud.valid, bool)
    out = {}
    for split in splits:
        order = read_order(prepared, split, setting)
        keep = order[valid[order]]
        dropped = order[~valid[order]]
        log(f"data: {split}: {len(keep)} rows, {len(dropped)} excluded (invalid features)"
            + (f": rows {dropped[:10].tolist()}{' ...' if len(dropped) > 10 else ''}"
               if len(dropped) else ""))
        keep, excluded = kind.select_rows(split, labels[keep], keep)
        if excluded:
            log(f"data: {split} ({setting}): {len(keep)} rows kept; excluded: "
                + ", ".join(f"{len(v)} {k.replace('_', ' ')}" for k, v in excluded.items()))
        out[split] = SplitData(split, keep, dropped,
                               torch.from_numpy(np.ascontiguousarray(vis.data[keep])),
                               torch.from_numpy(np.ascontiguousarray(aud.data[keep])),
                               torch.from_numpy(labels[keep]),
                               torch.from_numpy(video_labels[keep]), excluded, setting=setting)
    if background_only and kind.uses_background_only and "train" in out:
        extra = read_background_only(prepared, features, visual, audio, labels.shape[1], log)
        if extra is not None:
            out["train"] = append_rows(out["train"], *extra)
    return Dataset(out, read_categories(prepared, labels.shape[-1] - 1),
                   int(vis.data.shape[-1]), int(aud.data.shape[-1]),
                   dict(vis.meta), dict(aud.meta), setting)


def background_only_paths(prepared: str | Path, features: str | Path, visual: str,
                          audio: str) -> dict[str, Path]:
    """Files of the background-only training samples, in the layout of the reference code's
    ``visual_feature_noisy.h5`` / ``audio_feature_noisy.h5`` / ``labels_noisy.h5`` (dataset
    ``avadataset``; (B,T,H,W,C), (B,T,D), (B,C+1) with the background bit alone):
    ``<features>/<visual>_noisy.h5``, ``<features>/<audio>_noisy.h5``,
    ``<prepared>/labels_noisy.h5``."""
    return {"visual": feature_file(features, layout.background_only_name(visual)),
            "audio": feature_file(features, layout.background_only_name(audio)),
            "labels": Path(prepared) / layout.BACKGROUND_LABELS_FILE}


def read_background_only(prepared, features, visual: str, audio: str, num_segments: int,
                         log=print) -> tuple[torch.Tensor, ...] | None:
    """``(visual, audio, labels, video_labels)`` of the background-only samples, or ``None``
    (logged) when a file is absent."""
    paths = background_only_paths(prepared, features, visual, audio)
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        log(f"data: background-only samples: not used (absent: {', '.join(missing)}); weak "
            "training on the train split alone")
        return None
    video = np.asarray(read_h5(paths["labels"], "avadataset", (None, None)), dtype=np.float32)
    vis, aud = load_features(paths["visual"]), load_features(paths["audio"])
    if len(vis.data) == len(aud.data) == 0:  # e.g. published route without *_noisy.h5 files
        log(f"data: background-only samples: not used ({paths['visual']} and {paths['audio']} "
            "have zero rows); weak training on the train split alone")
        return None
    if not (len(vis.data) == len(aud.data) == len(video)):
        raise InputError(f"background-only files disagree in rows: {paths['visual']} "
                         f"{len(vis.data)}, {paths['audio']} {len(aud.data)}, {paths['labels']} "
                         f"{len(video)}")
    if not (video[:, -1] == 1).all() or video[:, :-1].any():
        raise InputError(f"{paths['labels']}: every row must be background alone")
    valid = np.asarray(vis.valid, bool) & np.asarray(aud.valid, bool)
    labels = np.zeros((int(valid.sum()), num_segments, video.shape[1]), np.float32)
    labels[..., -1] = 1.0
    log(f"data: background-only samples: {int(valid.sum())} appended to train "
        f"({int((~valid).sum())} invalid left out) from {paths['visual']}, {paths['audio']}")
    return (torch.from_numpy(np.ascontiguousarray(vis.data[valid])),
            torch.from_numpy(np.ascontiguousarray(aud.data[valid])),
            torch.from_numpy(labels), torch.from_numpy(video[valid]))


def append_rows(split: SplitData, visual: torch.Tensor, audio: torch.Tensor,
                labels: torch.Tensor, video_labels: torch.Tensor) -> SplitData:
    """``split`` with background-only samples appended (row id -1)."""
    if visual.shape[1:] != split.visual.shape[1:] or audio.shape[1:] != split.audio.shape[1:]:
        raise ValueError(f"background-only features {tuple(visual.shape[1:])} / "
                         f"{tuple(audio.shape[1:])} do not match the train split's "
                         f"{tuple(split.visual.shape[1:])} / {tuple(split.audio.shape[1:])}")
    return dataclasses.replace(
        split, rows=np.concatenate([split.rows, np.full(len(visual), -1, np.int64)]),
        visual=torch.cat([split.visual, visual.to(split.visual.dtype)]),
        audio=torch.cat([split.audio, audio.to(split.audio.dtype)]),
        labels=torch.cat([split.labels, labels]),
        video_labels=torch.cat([split.video_labels, video_labels]),
        background_only=split.background_only + len(visual))
