"""Split tensors for training and evaluation, read once into memory.

Rows of a split are the prepared ``<split>_order.h5`` indices; rows whose visual or audio
feature is invalid (``valid`` False in either feature file) are excluded, counted and printed.
Features stay in their stored dtype (float16 halves the memory of full AVE) and are cast to
float32 per batch on the device.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from pipeline.features.store import load_features

SPLITS = ("train", "val", "test")


def feature_path(features_dir: str | Path, name: str) -> Path:
    """``${paths.features}/<name>.h5`` (the train stage's deps use the same pattern)."""
    return Path(features_dir) / f"{name}.h5"


@dataclass
class SplitData:
    """One split in memory: ``visual`` (n,T,H,W,Cv), ``audio`` (n,T,Ca), ``labels`` (n,T,C+1)."""

    split: str
    rows: np.ndarray  # Annotations.txt line indices kept (valid features), split order
    excluded: np.ndarray  # split rows left out for invalid features
    visual: torch.Tensor
    audio: torch.Tensor
    labels: torch.Tensor  # one-hot float32 (n, T, C+1)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def weak(self) -> torch.Tensor:
        """Video-level labels (n, C+1): max over segments (as prepared weak_labels.h5)."""
        return self.labels.amax(dim=1)

    @property
    def targets(self) -> torch.Tensor:
        """Per-segment class indices (n, T), background = C."""
        return self.labels.argmax(dim=-1)

    def normalized(self, stats: dict[str, torch.Tensor]) -> "SplitData":
        """A copy with features standardized by ``stats`` (see :func:`feature_stats`), kept in
        their stored dtype."""
        def z(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
            out = torch.empty_like(x)
            for s in range(0, len(x), CHUNK):  # chunks: no float32 copy of a whole split
                out[s:s + CHUNK] = ((x[s:s + CHUNK].float() - mean) / std).to(x.dtype)
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
        out[f"{name}_mean"] = mean.float()
        out[f"{name}_std"] = var.sqrt().float().clamp_min(eps)
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

    @property
    def num_classes(self) -> int:
        return len(self.categories)


def read_order(prepared: str | Path, split: str) -> np.ndarray:
    with h5py.File(Path(prepared) / f"{split}_order.h5", "r") as f:
        return np.asarray(f["order"][()], dtype=np.int64).reshape(-1)


def read_categories(prepared: str | Path, num_classes: int) -> list[str]:
    path = Path(prepared) / "categories.json"
    if path.is_file():
        cats = json.loads(path.read_text())
        if len(cats) != num_classes:
            raise ValueError(f"{path}: {len(cats)} categories but labels.h5 has {num_classes} "
                             "event classes")
        return list(cats)
    names = [f"class{i}" for i in range(num_classes)]
    print(f"data: {path} missing; categories named class0..class{num_classes - 1}", flush=True)
    return names


def load_dataset(prepared: str | Path, features: str | Path, visual: str, audio: str,
                 splits: tuple[str, ...] = SPLITS, verbose: bool = True) -> Dataset:
    """Read labels, orders and both feature files once; return the splits as tensors."""
    prepared = Path(prepared)
    with h5py.File(prepared / "labels.h5", "r") as f:
        labels = np.asarray(f["avadataset"][()], dtype=np.float32)
    vpath, apath = feature_path(features, visual), feature_path(features, audio)
    for p, key in ((vpath, "train.visual"), (apath, "train.audio")):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: feature file missing ({key}={p.stem!r}); run the "
                                    "features stage or pick an extracted name")
    vis, aud = load_features(vpath), load_features(apath)
    n = len(labels)
    for fs, p in ((vis, vpath), (aud, apath)):
        if len(fs.data) != n:
            raise ValueError(f"{p}: {len(fs.data)} rows but labels.h5 has {n} (rows must be "
                             "Annotations.txt line indices)")
    if vis.data.ndim != 5 or aud.data.ndim != 3:
        raise ValueError(f"expected visual (N,T,H,W,C) and audio (N,T,D); got {vis.data.shape} "
                         f"({vpath}) and {aud.data.shape} ({apath})")
    valid = np.asarray(vis.valid, bool) & np.asarray(aud.valid, bool)
    out = {}
    for split in splits:
        order = read_order(prepared, split)
        keep = order[valid[order]]
        dropped = order[~valid[order]]
        if verbose:
            print(f"data: {split}: {len(keep)} rows, {len(dropped)} excluded (invalid features)"
                  + (f": rows {dropped[:10].tolist()}{' ...' if len(dropped) > 10 else ''}"
                     if len(dropped) else ""))
        out[split] = SplitData(split, keep, dropped,
                               torch.from_numpy(np.ascontiguousarray(vis.data[keep])),
                               torch.from_numpy(np.ascontiguousarray(aud.data[keep])),
                               torch.from_numpy(labels[keep]))
    return Dataset(out, read_categories(prepared, labels.shape[-1] - 1),
                   int(vis.data.shape[-1]), int(aud.data.shape[-1]),
                   dict(vis.meta), dict(aud.meta))
