"""Published / community feature files -> the feature store (stage ``import@<name>``).

The published AVE features (``visual_feature.h5`` (4143,10,7,7,512), ``audio_feature.h5``
(4143,10,128), and for the weak setting ``*_noisy.h5``), or any other file in the community
``avadataset`` layout (e.g. ResNet-50 / Cnn14 features), are imported by store name
(``published.files``: ``<name>: {file: <file in data.root>}``) into
``<paths.features>/<name>.h5``, the file ``train.visual`` / ``train.audio`` name. The files are
read from ``data.root`` (``published.root``, when set, must equal it), so the route follows the
data root. Stored float32 by default (``published.dtype``; float16 opt-in).

Each entry's background-only videos (weak setting) are imported by ``import_background_only``
(stage ``import_background_only@<name>``) from ``<file>_noisy.h5`` beside it into
``<paths.features>/<name>_noisy.h5``, or written with zero rows when that file is absent: the
``fully`` setting never reads them, and weak training then says it trains without them.

Checks, each an error naming the file:

* a regular file's rows are the rows of the prepared ``labels.h5`` (= ``Annotations.txt``
  lines); when ``published.root`` also holds the published ``labels.h5``, it must equal the
  prepared one (same rows, same order), so the features and our labels cannot be misaligned;
* a ``<name>_noisy`` file holds the background-only extra training videos of the weak setting
  (AVE: 178); when ``labels_noisy.h5`` is present, its rows must match and be background only.

Contract with the training data layer: ``<paths.features>/<name>_noisy.h5`` beside
``<name>.h5``, same store layout (``avadataset`` rows, ``valid``, provenance attrs), every row a
background-only video; ``<visual>_noisy.h5`` and ``<audio>_noisy.h5`` have the same rows; their
labels are the published ``labels_noisy.h5`` in ``data.root``, which ``prepare`` checks and
copies.
"""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline import layout
from pipeline.config import InputError
from pipeline.features.config import CommunityFile, PublishedConfig
from pipeline.features.store import DATASET, community_kind, import_community
from pipeline.files import contained, open_h5, read_h5
from pipeline.layout import BACKGROUND_SUFFIX

LABELS = layout.LABELS_FILE  # published per-segment labels (4143, 10, 29), compared when present
BACKGROUND_LABELS = layout.BACKGROUND_LABELS_FILE  # video labels of the background-only videos (178, 29)


def _read(path: Path, dataset: str = DATASET, root: Path | None = None) -> np.ndarray:
    if root is not None:
        contained(path, root, "published file")
    return read_h5(path, dataset)


def _shape(path: Path, root: Path | None = None) -> tuple[int, ...]:
    if root is not None:
        contained(path, root, "published feature file")
    with open_h5(path, DATASET) as f:
        return tuple(f[DATASET].shape)


def check_rows(name: str, src: Path, root: Path, prepared: Path) -> int:
    """Rows the file must have; raises when it or the published labels disagree with prepare."""
    if name.endswith(BACKGROUND_SUFFIX):
        rows = _shape(src, root)[0]
        if (root / BACKGROUND_LABELS).is_file():
            background = _read(root / BACKGROUND_LABELS, root=root)
            classes = _read(prepared / LABELS).shape[-1]
            if background.ndim != 2 or background.shape[1] != classes:
                raise InputError(f"{root / BACKGROUND_LABELS}: shape {background.shape}, expected (rows, "
                                 f"{classes}) video labels as {prepared / LABELS}")
            if len(background) != rows:
                raise InputError(f"{src}: {rows} rows but {root / BACKGROUND_LABELS} has "
                                 f"{len(background)}")
            if not (background[:, -1] == 1).all() or background[:, :-1].any():
                raise InputError(f"{root / BACKGROUND_LABELS}: not background-only; the {BACKGROUND_SUFFIX} "
                                 "files must hold background-only videos")
        return rows
    labels = _read(prepared / LABELS)
    if (root / LABELS).is_file():
        published = _read(root / LABELS, root=root)
        if published.shape != labels.shape or not np.array_equal(published.astype(np.float32),
                                                                  labels.astype(np.float32)):
            raise InputError(f"{root / LABELS}: {published.shape} differs from {prepared / LABELS} "
                             f"{labels.shape}, prepared from Annotations.txt: the feature rows would "
                             "not match the annotation lines (data.root must hold the same "
                             "Annotations.txt as the features)")
    return len(labels)


def provenance(entry: CommunityFile, kind: str) -> dict[str, Any]:
    """Provenance beyond the AVE preset: a non-AVE file without ``encoder`` says it is unknown."""
    meta: dict[str, Any] = {"published_file": entry.file}
    ave = entry.file.replace(BACKGROUND_SUFFIX, "") in (layout.PUBLISHED_VISUAL_FILE,
                                                        layout.PUBLISHED_AUDIO_FILE)
    if entry.encoder or not ave:
        enc = entry.encoder or "unknown"
        meta.update(model=enc, encoder=enc, weights=entry.weights or "unknown",
                    extractor=f"community file {entry.file}",
                    model_spec={"encoder": enc, "weights": "published", "seed": 0,
                                "preprocess": "weights", "postprocess": "none"})
        if not ave:
            meta.update(frames_per_segment=0, sampling="unknown", image_size=0, sample_rate=0)
    elif entry.weights:
        meta["weights"] = entry.weights
    return meta


def _root(cfg: PublishedConfig, root: str | Path | None) -> Path:
    if root is None and cfg.root is None:
        raise ValueError("no folder for the published files: pass data.root")
    return Path(root if root is not None else cfg.root)


def _entry(name: str, cfg: PublishedConfig) -> CommunityFile:
    if name not in cfg.files:
        raise KeyError(f"published.files has no {name!r}; it has: {', '.join(cfg.files) or 'none'}")
    return cfg.files[name]


def import_published(name: str, cfg: PublishedConfig, prepared: str | Path,
                     features: str | Path, root: str | Path | None = None) -> Path:
    """Import ``cfg.files[name]`` from ``root`` (the stage: ``data.root``; default
    ``cfg.root``) into ``<features>/<name>.h5`` after the row checks."""
    entry, root, prepared = _entry(name, cfg), _root(cfg, root), Path(prepared)
    src = root / entry.file
    if not src.is_file():
        raise FileNotFoundError(f"{src}: missing; put the published file {entry.file} in "
                                f"{root}/ (data.root), or remove published.files.{name}")
    if not (prepared / LABELS).is_file():
        raise FileNotFoundError(f"{prepared / LABELS}: missing; run prepare first "
                                "(with data.source: features no video is read)")
    contained(src, root, "published feature file")
    rows = check_rows(name, src, root, prepared)
    shape = _shape(src, root)
    if shape[0] != rows:
        raise InputError(f"{src}: {shape[0]} rows but {prepared / LABELS} has {rows} "
                         "(one row per Annotations.txt line)")
    try:
        kind = community_kind(shape)
    except ValueError as e:
        raise InputError(f"{src}: {e}") from None
    expected, why = expected_kind(name, entry)
    if expected is not None and kind != expected:
        raise InputError(f"{src}: shape {shape} is {kind} features, but it is imported as "
                         f"{expected} features ({why}); not imported")
    out = layout.feature_file(features, name)
    import_community(src, out, kind, cfg.dtype, **provenance(entry, kind))
    return out


def expected_kind(name: str, entry: CommunityFile) -> tuple[str | None, str]:
    """``(kind, why)``: the modality an entry is imported as, from its ``encoder`` (the encoder
    registry's modality) or AVE's file names (``visual_feature*.h5``, ``audio_feature*.h5``);
    ``(None, "")`` when neither says."""
    if entry.encoder:
        from pipeline.encoders.base import encoder_modality
        try:
            return encoder_modality(entry.encoder), f"published.files.{name}.encoder: {entry.encoder}"
        except (KeyError, ValueError):
            pass
    for kind in ("visual", "audio"):
        if entry.file.startswith(f"{kind}_feature"):
            return kind, f"published.files.{name}.file: {entry.file}, AVE's {kind} file name"
    return None, ""


def import_background_only(name: str, cfg: PublishedConfig, prepared: str | Path,
                           features: str | Path, root: str | Path | None = None
                           ) -> tuple[Path, str]:
    """``<features>/<name>_noisy.h5`` from ``<file>_noisy.h5`` beside ``cfg.files[name]``
    (checked as :func:`import_published` checks it), or with zero rows (the main file's shape)
    when that file is absent; returns the path and what was done."""
    entry, root = _entry(name, cfg), _root(cfg, root)
    background = layout.background_only_name(name)
    src = root / layout.background_only_file(entry.file)
    if src.is_file():
        one = dataclasses.replace(cfg, files={background: dataclasses.replace(entry, file=src.name)})
        return import_published(background, one, prepared, features, root), f"imported {src}"
    main = root / entry.file
    if not main.is_file():
        raise FileNotFoundError(f"{main}: missing; put the published file {entry.file} in "
                                f"{root}/ (data.root), or remove published.files.{name}")
    shape = _shape(main, root)
    out = layout.feature_file(features, background)
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / src.name
        with h5py.File(empty, "w") as f:
            f.create_dataset(DATASET, data=np.zeros((0, *shape[1:]), np.float32))
        kind = community_kind(shape)
        import_community(empty, out, kind, cfg.dtype, background_only="none",
                         **provenance(dataclasses.replace(entry, file=src.name), kind))
    return out, (f"{src} absent: {out} has zero rows (fully never reads it; weak trains "
                 "without background-only videos and says so)")
