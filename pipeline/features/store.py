"""The one feature store: HDF5 in the AVE community layout.

* ``avadataset``: visual ``(N, 10, h, w, C)`` / audio ``(N, 10, D)``, float16 or float32, one row
  per ``Annotations.txt`` data line (the rows of ``labels.h5``); chunked one row per chunk.
* ``valid``: bool ``(N,)``; invalid rows hold zeros.
* attrs: ``model, encoder, weights, weights_sha256, frames_per_segment, sampling, image_size,
  sample_rate, dtype, code_version, created_by`` and more provenance (lists and dicts are
  JSON strings whose attribute name ends in ``_json``).

Writers go through a temporary file renamed into place, so a reader never sees a half
file; the same inputs give a byte-identical file (HDF5 object times are not tracked).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import h5py
import numpy as np

from pipeline.runtime import NUM_SEGMENTS, atomic_path

DATASET = "avadataset"  # the community's dataset name (visual_feature.h5, audio_feature.h5, labels.h5)
VALID = "valid"
REQUIRED_ATTRS = ("model", "encoder", "weights", "weights_sha256", "frames_per_segment", "sampling",
                  "image_size", "sample_rate", "dtype", "code_version", "created_by")


@dataclass
class FeatureSet:
    """A feature file loaded into memory."""

    data: np.ndarray  # (N, 10, h, w, C) or (N, 10, D), stored dtype
    valid: np.ndarray  # (N,) bool
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "visual" if self.data.ndim == 5 else "audio"


def _to_attr(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, Path):
        return str(value)
    return value


def _from_attr(key: str, value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.generic):
        value = value.item()
    if key.endswith("_json") and isinstance(value, str):
        return json.loads(value)
    return value


def write_meta(f: h5py.File, meta: dict[str, Any]) -> None:
    for key in sorted(meta):
        value = meta[key]
        if isinstance(value, (dict, list, tuple)) and not key.endswith("_json"):
            key = key + "_json"
        f.attrs[key] = _to_attr(value)


def read_meta(f: h5py.File) -> dict[str, Any]:
    return {k: _from_attr(k, v) for k, v in f.attrs.items()}


class StoreWriter:
    """Create a store file row by row; the file appears at ``path`` only on :meth:`close`.

    ``with StoreWriter(path, num_rows, feature_shape, "float16", meta) as w: w.write(rows, x, ok)``
    """

    def __init__(self, path: str | Path, num_rows: int, feature_shape: tuple[int, ...],
                 dtype: Literal["float16", "float32"], meta: dict[str, Any],
                 extras: Optional[dict[str, tuple[tuple[int, ...], str]]] = None):
        """``extras``: more per-row datasets, ``{name: (per-row shape, dtype)}`` (e.g. the
        sampled frame ``timestamps`` (10, F) float32)."""
        self.path = Path(path)
        self._commit = atomic_path(self.path)  # the file appears at path only on close()
        self.tmp = self._commit.__enter__()
        self.f = h5py.File(self.tmp, "w")
        shape = (num_rows, NUM_SEGMENTS, *feature_shape)
        self.data = self.f.create_dataset(DATASET, shape=shape, dtype=dtype, chunks=(1, *shape[1:]),
                                          fillvalue=0)
        self.extras = {name: self.f.create_dataset(name, shape=(num_rows, *s), dtype=dt, fillvalue=0)
                       for name, (s, dt) in (extras or {}).items()}
        self.valid_mask = np.zeros(num_rows, dtype=bool)
        self.meta = {**meta, "dtype": dtype}

    def set_meta(self, meta: dict[str, Any]) -> None:
        self.meta.update(meta)

    def write(self, rows: np.ndarray, data: np.ndarray, valid: np.ndarray,
              extras: Optional[dict[str, np.ndarray]] = None) -> None:
        """Rows get ``data`` (cast to the stored dtype), ``valid`` and ``extras``; invalid rows
        keep zeros."""
        rows = np.asarray(rows, dtype=np.int64)
        valid = np.asarray(valid, dtype=bool)
        for i, r in enumerate(rows):  # one chunk per row: row writes are the natural unit
            if valid[i]:
                self.data[r] = data[i].astype(self.data.dtype, copy=False)
                for name, arr in (extras or {}).items():
                    self.extras[name][r] = arr[i]
        self.valid_mask[rows] = valid

    def close(self) -> Path:
        self.f.create_dataset(VALID, data=self.valid_mask)
        write_meta(self.f, self.meta)
        self.f.close()
        self._commit.__exit__(None, None, None)
        return self.path

    def abort(self) -> None:
        self.f.close()
        # atomic_path's error path: the temporary is removed, the target left as it was
        self._commit.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_features(path: str | Path, data: np.ndarray, valid: Optional[np.ndarray],
                   meta: dict[str, Any], dtype: Optional[str] = None) -> Path:
    """Write a whole in-memory feature array as a store file."""
    data = np.asarray(data)
    dtype = dtype or ("float16" if data.dtype == np.float16 else "float32")
    valid = np.ones(len(data), bool) if valid is None else np.asarray(valid, bool)
    with StoreWriter(path, len(data), data.shape[2:], dtype, meta) as w:
        w.write(np.arange(len(data)), data, valid)
    return Path(path)


def load_features(path: str | Path) -> FeatureSet:
    """Load a store file (or a community file without ``valid``: all rows valid) into memory."""
    path = Path(path)
    with h5py.File(path, "r") as f:
        if DATASET not in f:
            raise KeyError(f"{path}: no '{DATASET}' dataset (found: {', '.join(f.keys())})")
        data = f[DATASET][()]
        valid = f[VALID][()].astype(bool) if VALID in f else np.ones(len(data), bool)
        meta = read_meta(f)
    return FeatureSet(data, valid, meta)


def import_community(h5_path: str | Path, out_path: str | Path, kind: Literal["visual", "audio"],
                     dtype: Optional[Literal["float16", "float32"]] = None, **meta: Any) -> Path:
    """A published ``visual_feature.h5`` / ``audio_feature.h5`` -> store file (all rows valid).

    Provenance of the published files (Tian et al., ECCV 2018): Keras VGG-19 ImageNet, pool5
    map averaged over 16 frames per second (visual); VGGish raw embeddings (audio)."""
    h5_path = Path(h5_path)
    with h5py.File(h5_path, "r") as f:
        if DATASET not in f:
            raise KeyError(f"{h5_path}: no '{DATASET}' dataset (found: {', '.join(f.keys())})")
        src = f[DATASET]
        want = 5 if kind == "visual" else 3
        if src.ndim != want or src.shape[1] != NUM_SEGMENTS:
            raise ValueError(f"{h5_path}: {kind} features must be (N, 10, {'h, w, C' if want == 5 else 'D'}), "
                             f"got {src.shape}")
        dtype = dtype or ("float16" if src.dtype == np.float16 else "float32")
        defaults = {
            "model": "vgg19" if kind == "visual" else "vggish",
            "encoder": "keras/vgg19" if kind == "visual" else "vggish",
            "weights": "published AVE features (Tian et al., ECCV 2018)",
            "weights_sha256": "", "frames_per_segment": 16 if kind == "visual" else 0,
            "sampling": "ave_reference" if kind == "visual" else "",
            "image_size": 224 if kind == "visual" else 0,
            "sample_rate": 0 if kind == "visual" else 16000,
            "code_version": "", "created_by": f"pipeline.features.store.import_community({h5_path.name})",
        }
        meta = {**defaults, **meta}
        with StoreWriter(out_path, src.shape[0], src.shape[2:], dtype, meta) as w:
            step = 256
            for start in range(0, src.shape[0], step):
                block = src[start:start + step]
                w.write(np.arange(start, start + len(block)), block, np.ones(len(block), bool))
    return Path(out_path)
