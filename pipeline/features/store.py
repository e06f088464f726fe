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

from pipeline.config import InputError
from pipeline.files import nonfinite_rows, open_h5, read, rows_text
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
        self.data = self.f.create_dataset(DATASET, shape=shape, dtype=dtype, fillvalue=0,
                                          chunks=(1, *shape[1:]) if num_rows else None)
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


def load_features(path: str | Path, log=print) -> FeatureSet:
    """Load a store file (or a community file without ``valid``: all rows valid) into memory.

    Rows holding a NaN or inf (e.g. bit flips on disk) are made invalid (zeroed, ``valid``
    cleared) and counted in one line ``features: <path>: ...`` (policy: :mod:`pipeline.files`).
    An unreadable, truncated or wrongly shaped file is an error naming it."""
    path = Path(path)
    with open_h5(path, DATASET) as f:
        src = f[DATASET]
        if src.ndim not in (3, 5) or (len(src) and src.shape[1] != NUM_SEGMENTS):
            raise InputError(f"{path}: '{DATASET}' has shape {src.shape}, expected visual "
                             f"(N, {NUM_SEGMENTS}, h, w, C) or audio (N, {NUM_SEGMENTS}, D)")
        data = read(src)
        valid = read(f[VALID]).astype(bool) if VALID in f else np.ones(len(data), bool)
        if valid.shape != (len(data),):
            raise InputError(f"{path}: '{VALID}' has shape {valid.shape}, expected ({len(data)},)")
        meta = read_meta(f)
    bad, values = nonfinite_rows(data)
    if len(bad):
        data[bad] = 0
        valid[bad] = False
        log(f"features: {path}: {len(bad)} rows hold {values} non-finite values (NaN or inf; "
            f"{rows_text(bad)}): treated as invalid, left out like undecodable videos")
    return FeatureSet(data, valid, meta)


# Provenance of the published AVE features (Tian et al., ECCV 2018; the authors' feature
# scripts): Keras VGG-19 (ImageNet) pool5 map of 16 frames per 1-s segment, averaged, frames
# squashed to 224 x 224 with Keras' caffe preprocessing; audio: VGGish (AudioSet) 128-d
# embeddings of each 1-s segment, raw (before PCA). ``model_spec`` names our encoder of the
# same architecture; ``weights: published`` says that those exact weights are not ours.
AVE_PUBLISHED: dict[str, dict[str, Any]] = {
    "visual": {
        "model": "vgg19", "encoder": "keras/vgg19",
        "weights": "published AVE features: Keras VGG-19 ImageNet "
                   "(vgg19_weights_tf_dim_ordering_tf_kernels.h5)",
        "frames_per_segment": 16, "sampling": "ave_reference", "image_size": 224,
        "sample_rate": 0, "extractor": "pool5 7x7x512 per frame, mean of 16 frames per segment",
        "model_spec": {"encoder": "vgg19", "weights": "published", "seed": 0,
                       "preprocess": "caffe", "postprocess": "none"},
    },
    "audio": {
        "model": "vggish", "encoder": "vggish",
        "weights": "published AVE features: VGGish AudioSet (vggish_model.ckpt), raw embeddings",
        "frames_per_segment": 0, "sampling": "1 s segments of the mono track", "image_size": 0,
        "sample_rate": 16000, "extractor": "128-d embedding per 1-s segment, before PCA",
        "model_spec": {"encoder": "vggish", "weights": "published", "seed": 0,
                       "preprocess": "weights", "postprocess": "none"},
    },
}
STEP_ROWS = 256  # rows copied per block on import


def community_kind(shape: tuple[int, ...]) -> Literal["visual", "audio"]:
    """``visual`` for ``(N, 10, h, w, C)``, ``audio`` for ``(N, 10, D)``; otherwise an error."""
    if len(shape) in (3, 5) and shape[1] == NUM_SEGMENTS:
        return "visual" if len(shape) == 5 else "audio"
    raise ValueError(f"features must be visual (N, 10, h, w, C) or audio (N, 10, D), got {shape}")


def import_community(h5_path: str | Path, out_path: str | Path,
                     kind: Optional[Literal["visual", "audio"]] = None,
                     dtype: Optional[Literal["float16", "float32"]] = None, log=print,
                     **meta: Any) -> Path:
    """A community feature file (``avadataset`` only, any float dtype, e.g. the published
    ``visual_feature.h5`` / ``audio_feature.h5``) -> store file.

    ``kind`` is checked against (or, when None, taken from) the shape. Rows holding a
    non-finite value are stored invalid. Provenance: :data:`AVE_PUBLISHED` of the kind,
    overridden by ``meta``."""
    h5_path = Path(h5_path)
    with open_h5(h5_path, DATASET) as f:
        src = f[DATASET]
        try:
            found = community_kind(src.shape)
        except ValueError as e:
            raise InputError(f"{h5_path}: {e}") from None
        if kind is not None and kind != found:
            raise InputError(f"{h5_path}: {kind} features must be (N, 10, "
                             f"{'h, w, C' if kind == 'visual' else 'D'}), got {src.shape}")
        dtype = dtype or ("float16" if src.dtype == np.float16 else "float32")
        defaults = {**AVE_PUBLISHED[found], "weights_sha256": "", "code_version": "",
                    "source_file": h5_path.name, "source_dtype": str(src.dtype),
                    "created_by": f"pipeline.features.store.import_community({h5_path.name})"}
        meta = {**defaults, **meta}
        bad = []
        with StoreWriter(out_path, src.shape[0], src.shape[2:], dtype, meta) as w:
            for start in range(0, src.shape[0], STEP_ROWS):
                block = np.asarray(src[start:start + STEP_ROWS], dtype=np.float32)
                ok = np.isfinite(block).reshape(len(block), -1).all(axis=1)
                if dtype == "float16":  # values past float16's range would become inf
                    ok &= (np.abs(block) <= np.finfo(np.float16).max).reshape(len(block), -1).all(axis=1)
                w.write(np.arange(start, start + len(block)), block, ok)
                bad.append(start + np.flatnonzero(~ok))
    bad = np.concatenate(bad) if bad else np.zeros(0, np.int64)
    if len(bad):
        log(f"features: {h5_path}: {len(bad)} rows hold non-finite values (NaN or inf"
            f"{', or past float16' if dtype == 'float16' else ''}; {rows_text(bad)}): stored invalid")
    return Path(out_path)
