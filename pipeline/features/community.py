"""Export a feature pair to the folder layout the AVE papers' own code reads.

The authors' repositories (AVE-ECCV18, PSP_CVPR_2021, CMBS, CACE-Net, VSCG) open fixed file
names in one data folder, each holding one HDF5 dataset:

==========================  =============  ===========================  ======================
file                        dataset        shape, dtype                 read by
==========================  =============  ===========================  ======================
visual_feature.h5           avadataset     (N,10,h,w,C) ``dtype``       all five
audio_feature.h5            avadataset     (N,10,D) ``dtype``           all five
labels.h5                   avadataset     (N,10,C+1) float32           AVE-ECCV18, CMBS, CACE
right_labels.h5             avadataset     = labels.h5                  PSP, VSCG
prob_label.h5               avadataset     (N,C+1) float32, Y.mean(1)   PSP, VSCG (weak)
labels_closs.h5             avadataset     (N,10) float32, 1-bg         AVE-ECCV18 (cmm)
visual_feature_vec.h5       avadataset     (N,10,C), h,w averaged       AVE-ECCV18 (cmm)
{train,val,test}_order.h5   order          (n,) int64                   all five
mil_labels.h5               avadataset     (N,C+1) float32              weak setting (copied)
{split}_order_match.h5      order          (n,) int64                   AVE-ECCV18 cmm (copied)
==========================  =============  ===========================  ======================

``dtype`` is float64 by default, as the published features: CMBS's and CACE-Net's scripts call
``model.double()`` and feed the HDF5 arrays unconverted, so a float32 (or float16) file stops in
their first Linear layer; the other three copy rows into float32 buffers and take either.

Rows are those of our store (= ``Annotations.txt`` lines = rows of ``labels.h5``). Rows whose
``valid`` is 0 in either store file hold zeros; they are listed in ``invalid_rows.tsv`` with
the video id and the reason from ``manifest.csv``, and ``README.txt`` says how many, never
silently. ``drop_invalid`` also removes them from the order files.

The weak setting's background-only videos (``visual_feature_noisy.h5``,
``audio_feature_noisy.h5``, ``labels_noisy.h5``: 178 extra videos that are not in the AVE
archive) cannot be produced from AVE; ``empty_background_only`` writes zero-row files so that the weak
scripts run on the AVE videos alone.

Every file is written through a temporary file renamed into place; features are copied in row
blocks (the visual file is several GB), never loaded whole.
"""
from __future__ import annotations

import contextlib
import csv
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import h5py
import numpy as np

from pipeline.config import InputError
from pipeline.features.store import DATASET, NUM_SEGMENTS, VALID, read_meta, write_meta
from pipeline import layout
from pipeline.files import nonfinite_rows, open_h5, read_h5, rows_text
from pipeline.layout import SPLITS
from pipeline.runtime import atomic_path, atomic_write_text

ORDER = "order"  # dataset name of the order files
VISUAL, AUDIO = layout.PUBLISHED_VISUAL_FILE, layout.PUBLISHED_AUDIO_FILE
VISUAL_VEC = layout.PUBLISHED_VISUAL_VEC_FILE
LABELS, RIGHT_LABELS, PROB_LABELS, CLOSS_LABELS = (layout.LABELS_FILE, layout.RIGHT_LABELS_FILE,
                                                   layout.PROB_LABELS_FILE, layout.CLOSS_LABELS_FILE)
MIL_LABELS = layout.VIDEO_LABELS_FILE
BACKGROUND_ONLY = (layout.background_only_file(VISUAL), layout.background_only_file(AUDIO),
         layout.BACKGROUND_LABELS_FILE)  # the weak setting's background-only videos
INVALID_TSV, README = layout.INVALID_ROWS_FILE, layout.EXPORT_README
DTYPES = ("float64", "float32")
BLOCK_BYTES = 64 << 20  # rows copied per block: about this many output bytes
# what the repositories' code hard-codes: map, audio and label sizes of the published files
PAPER_SHAPES = {"visual": (7, 7, 512), "audio": (128,), "labels": 29}


@dataclass(frozen=True)
class InvalidRow:
    """A feature row without features (zeros in the exported files)."""

    row: int
    video_id: str
    split: str
    zeros: str  # the exported files holding zeros in this row: "visual+audio" | "visual" | "audio"
    reason: str


@dataclass
class ExportResult:
    out_dir: Path
    files: list[str]  # names written into out_dir
    missing: list[str]  # names the repositories open that were not written
    invalid: list[InvalidRow] = field(default_factory=list)
    visual_shape: tuple[int, ...] = ()
    audio_shape: tuple[int, ...] = ()
    dtype: str = "float64"
    num_labels: int = 29  # classes + background


def export_community(visual: str | Path, audio: str | Path, prepared_dir: str | Path,
                     out_dir: str | Path, *, dtype: str = "float64", drop_invalid: bool = False,
                     empty_background_only: bool = False) -> ExportResult:
    """Write ``out_dir`` in the community layout from two store files and the prepared folder."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    visual, audio, prepared_dir, out = Path(visual), Path(audio), Path(prepared_dir), Path(out_dir)
    vshape, ashape, vvalid, avalid, nonfinite = check_pair(visual, audio)
    labels = read_labels(prepared_dir / LABELS, len(vvalid))
    invalid = invalid_rows(vvalid, avalid, prepared_dir, nonfinite)
    out.mkdir(parents=True, exist_ok=True)
    res = ExportResult(out, [], [], invalid, vshape, ashape, dtype, labels.shape[-1])
    copy_features(visual, out / VISUAL, dtype, pooled=out / VISUAL_VEC)
    copy_features(audio, out / AUDIO, dtype)
    res.files += [VISUAL, VISUAL_VEC, AUDIO]
    res.files += write_community_labels(labels, out)
    drop = np.array([r.row for r in invalid], np.int64) if drop_invalid else np.zeros(0, np.int64)
    written, missing = copy_prepared(prepared_dir, out, drop)
    res.files += written
    res.missing += missing
    background = background_only_sources(visual, audio, prepared_dir)
    if background:
        res.files += copy_background_only(background, out, dtype)
    elif empty_background_only:
        res.files += write_empty_background_only(out, vshape, ashape, labels.shape[-1], dtype)
    else:
        res.missing += list(BACKGROUND_ONLY)
    with atomic_path(out / INVALID_TSV) as tmp:
        write_invalid_tsv(tmp, invalid)
    atomic_write_text(out / README, render_readme(res, visual, audio, drop_invalid, empty_background_only))
    res.files += [INVALID_TSV, README]
    return res


def check_pair(visual: Path, audio: Path
               ) -> tuple[tuple, tuple, np.ndarray, np.ndarray, dict[int, str]]:
    """Shapes and ``valid`` masks of a visual and an audio store file, and the rows holding a
    NaN or inf (made invalid here: ``{row: "visual" | "audio" | "visual+audio"}``); errors name
    the file."""
    shapes, valids, nonfinite = [], [], {}
    for path, kind, ndim in ((visual, "visual", 5), (audio, "audio", 3)):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such feature file")
        with open_h5(path, DATASET) as f:
            shape = f[DATASET].shape
            if len(shape) != ndim or shape[1] != NUM_SEGMENTS:
                want = "(N, 10, h, w, C)" if kind == "visual" else "(N, 10, D)"
                raise InputError(f"{path}: {kind} features must be {want}, got {shape}")
            valid = f[VALID][()].astype(bool) if VALID in f else np.ones(shape[0], bool)
            bad, values = nonfinite_rows(f[DATASET])
        if len(bad):
            valid[bad] = False
            for r in bad.tolist():
                nonfinite[r] = "+".join(filter(None, (nonfinite.get(r), kind)))
            print(f"features: {path}: {len(bad)} rows hold {values} non-finite values (NaN or inf; "
                  f"{rows_text(bad)}): exported as invalid rows (zeros)")
        valids.append(valid)
        shapes.append(shape)
    if shapes[0][0] != shapes[1][0]:
        raise InputError(f"{audio}: {shapes[1][0]} rows, but {visual} has {shapes[0][0]}")
    return shapes[0], shapes[1], valids[0], valids[1], nonfinite


def read_labels(path: Path, num_rows: int) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no labels file (run the prepare stage first)")
    labels = read_h5(path, DATASET)
    if labels.ndim != 3 or labels.shape[:2] != (num_rows, NUM_SEGMENTS):
        raise InputError(f"{path}: labels {labels.shape} do not match the {num_rows} feature rows")
    return labels


def copy_features(src: Path, dst: Path, dtype: str, pooled: Optional[Path] = None) -> None:
    """Stream ``avadataset`` of a store file into ``dst`` as ``dtype`` (and, for visual maps,
    the spatial mean ``(N,10,C)`` into ``pooled``), in row blocks; provenance attributes kept.
    A row holding a NaN or inf is written as zeros (an invalid row)."""
    with open_h5(src, DATASET) as f, atomic_path(dst) as tmp, _maybe_atomic(pooled) as tmp_pool:
        data = f[DATASET]
        meta = {**read_meta(f), "dtype": dtype, "exported_from": src.name}
        row_bytes = int(np.prod(data.shape[1:])) * np.dtype(dtype).itemsize
        step = max(1, BLOCK_BYTES // row_bytes)
        with h5py.File(tmp, "w") as g, _maybe_h5(tmp_pool) as p:
            out = g.create_dataset(DATASET, shape=data.shape, dtype=dtype)
            vec_shape = data.shape[:2] + data.shape[-1:]
            vec = p.create_dataset(DATASET, shape=vec_shape, dtype=dtype) if p else None
            for start in range(0, data.shape[0], step):
                block = data[start:start + step].astype(dtype)
                block[~np.isfinite(block.reshape(len(block), -1)).all(axis=1)] = 0
                out[start:start + len(block)] = block
                if vec is not None:
                    vec[start:start + len(block)] = block.mean(axis=(2, 3))
            write_meta(g, meta)
            if p:
                write_meta(p, {**meta, "pooling": "mean over the h, w map"})


def _maybe_atomic(path: Optional[Path]):
    return atomic_path(path) if path is not None else contextlib.nullcontext()


def _maybe_h5(path: Optional[Path]):
    return h5py.File(path, "w") if path is not None else contextlib.nullcontext()


def _write_h5(path: Path, name: str, data: np.ndarray) -> None:
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset(name, data=data)


def write_community_labels(labels: np.ndarray, out: Path) -> list[str]:
    """labels.h5 and the label files derived from it alone (PSP/VSCG names, PSP's weak
    targets, AVE-ECCV18's cross-modal matching targets)."""
    labels = labels.astype(np.float32, copy=False)
    _write_h5(out / LABELS, DATASET, labels)
    _write_h5(out / RIGHT_LABELS, DATASET, labels)  # PSP/VSCG open labels.h5 under this name
    _write_h5(out / PROB_LABELS, DATASET, labels.mean(axis=1))  # PSP Sec. 3: Y_weak = mean over t
    _write_h5(out / CLOSS_LABELS, DATASET, 1.0 - labels[:, :, -1])  # event (1) / background (0)
    return [LABELS, RIGHT_LABELS, PROB_LABELS, CLOSS_LABELS]


def copy_prepared(prepared: Path, out: Path, drop: np.ndarray) -> tuple[list[str], list[str]]:
    """Order files (rows in ``drop`` left out) and mil_labels.h5 from the prepared folder;
    returns (written, missing) names. The split orders are required; the rest is copied when
    present."""
    written, missing = [], []
    for split in SPLITS:
        for name, required in ((layout.order_file("", split).name, True),
                               (layout.order_file("", split, match=True).name, False)):
            src = prepared / name
            if not src.is_file():
                if required:
                    raise FileNotFoundError(f"{src}: no order file (run the prepare stage first)")
                missing.append(name)
                continue
            order = read_h5(src, ORDER)
            _write_h5(out / name, ORDER, order[~np.isin(order, drop)])
            written.append(name)
    if (prepared / MIL_LABELS).is_file():
        with atomic_path(out / MIL_LABELS) as tmp:
            shutil.copyfile(prepared / MIL_LABELS, tmp)
        written.append(MIL_LABELS)
    else:
        missing.append(MIL_LABELS)
    return written, missing


def background_only_sources(visual: Path, audio: Path, prepared: Path) -> tuple[Path, Path, Path] | None:
    """The background-only training videos of the weak setting when this pipeline has them:
    ``<visual>_noisy.h5`` and ``<audio>_noisy.h5`` beside the store files (extraction writes them
    for the videos of ``backgroundSet.txt``) and ``labels_noisy.h5`` in the prepared folder."""
    paths = (visual.with_name(layout.background_only_file(visual.name)),
             audio.with_name(layout.background_only_file(audio.name)),
             prepared / BACKGROUND_ONLY[2])
    return paths if all(p.is_file() for p in paths) else None


def copy_background_only(sources: tuple[Path, Path, Path], out: Path, dtype: str) -> list[str]:
    """The background-only files under the names the weak scripts open."""
    copy_features(sources[0], out / BACKGROUND_ONLY[0], dtype)
    copy_features(sources[1], out / BACKGROUND_ONLY[1], dtype)
    with atomic_path(out / BACKGROUND_ONLY[2]) as tmp:
        shutil.copyfile(sources[2], tmp)
    return list(BACKGROUND_ONLY)


def write_empty_background_only(out: Path, vshape: tuple, ashape: tuple, num_labels: int, dtype: str) -> list[str]:
    """Zero-row background-only files: the weak scripts then train on the AVE videos alone."""
    _write_h5(out / BACKGROUND_ONLY[0], DATASET, np.zeros((0, *vshape[1:]), dtype))
    _write_h5(out / BACKGROUND_ONLY[1], DATASET, np.zeros((0, *ashape[1:]), dtype))
    _write_h5(out / BACKGROUND_ONLY[2], DATASET, np.zeros((0, num_labels), np.float32))
    return list(BACKGROUND_ONLY)


def invalid_rows(vvalid: np.ndarray, avalid: np.ndarray, prepared: Path,
                 nonfinite: Optional[dict[int, str]] = None) -> list[InvalidRow]:
    """Rows with ``valid`` 0 in either file, with video id, split and reason from
    ``manifest.csv`` (when the prepared folder has one), or the non-finite values found."""
    nonfinite = nonfinite or {}
    manifest = {}
    if (prepared / layout.MANIFEST_FILE).is_file():
        with open(prepared / layout.MANIFEST_FILE, newline="") as f:
            manifest = {int(r["index"]): r for r in csv.DictReader(f)}
    out = []
    for row in np.flatnonzero(~(vvalid & avalid)):
        m = manifest.get(int(row), {})
        zeros = "+".join(k for k, ok in (("visual", vvalid[row]), ("audio", avalid[row])) if not ok)
        reason = m.get("status", "") + (f": {m['message']}" if m.get("message") else "")
        if int(row) in nonfinite:
            reason = f"non-finite values (NaN or inf) in the {nonfinite[int(row)]} features"
        out.append(InvalidRow(int(row), m.get("video_id", ""), m.get("split", ""), zeros,
                              reason or "valid = 0 in the feature file"))
    return out


def write_invalid_tsv(path: Path, rows: list[InvalidRow]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["row", "video_id", "split", "zeros", "reason"])
        for r in rows:
            w.writerow([r.row, r.video_id, r.split, r.zeros, " ".join(r.reason.split())])


def read_invalid_tsv(path: str | Path) -> list[InvalidRow]:
    with open(path, newline="") as f:
        return [InvalidRow(int(r["row"]), r["video_id"], r["split"], r["zeros"], r["reason"])
                for r in csv.DictReader(f, delimiter="\t")]


REPOS = (
    ("AVE-ECCV18 (YapengTian)", "data/ (its scripts' defaults: data/visual_feature.h5 ...)",
     "supervised_main.py; weak_supervised_main.py (noisy files); cmm_train.py (visual_feature_vec.h5, "
     "labels_closs.h5, *_order_match.h5)"),
    ("PSP_CVPR_2021 (jasongief)", "data/ (defaults ./data/<file>)",
     "fully_supervised_main.py (right_labels.h5); weakly_supervised_main.py (mil_labels.h5, "
     "prob_label.h5, noisy files)"),
    ("CMBS (marmot-xy)", "data/ (AVEDataset('./data/'))",
     "supv_main.py; weakly_main.py (mil_labels.h5, noisy files); needs float64"),
    ("CACE-Net (Brain-Cog-Lab)", "CACE/data/ (AVEDataset('./data/') run from CACE/)",
     "supv_main.py; needs float64"),
    ("VSCG (Bravo5542)", "data/ (defaults ./data/<file>)",
     "fully_supervised_main.py / weakly_supervised_main.py, same files as PSP"),
)


def render_readme(res: ExportResult, visual: Path, audio: Path, drop_invalid: bool,
                  empty_background_only: bool) -> str:
    lines = [
        "AVE features in the community layout (written by python -m pipeline.features export-community)",
        "",
        f"visual_feature.h5  avadataset {res.visual_shape} {res.dtype}  from {visual.name}",
        f"audio_feature.h5   avadataset {res.audio_shape} {res.dtype}  from {audio.name}",
        "Rows are Annotations.txt lines, as in labels.h5; order files hold row indices.",
        "",
        "Point each repository at this folder (copy or link its files into the folder named):",
    ]
    lines += [f"  {name}: {where}; {what}" for name, where, what in REPOS]
    if res.dtype != "float64":
        lines += ["", f"{res.dtype}: CMBS and CACE-Net run their models in float64 and pass these arrays on "
                      "unconverted; they stop at their first layer. Export with the default dtype for them."]
    lines += ["", *_shape_notes(res), *_invalid_notes(res, drop_invalid), *_missing_notes(res, empty_background_only)]
    lines += ["", "Files: " + ", ".join(sorted(res.files))]
    return "\n".join(lines) + "\n"


def _shape_notes(res: ExportResult) -> list[str]:
    v, a = tuple(res.visual_shape[2:]), tuple(res.audio_shape[2:])
    notes = []
    if v == PAPER_SHAPES["visual"] and a == PAPER_SHAPES["audio"]:
        notes.append("Feature shapes are the papers' (7x7x512 maps, 128-d audio): the code runs unchanged.")
    else:
        notes += [f"Feature shapes differ from the papers' (visual {v} vs (7, 7, 512), audio {a} vs (128,)):",
                  "  AVE-ECCV18, PSP and VSCG hard-code 7x7x512 and 128 in their dataloader buffers and",
                  "  models; CMBS and CACE-Net in configs/main.json (video_inputdim, audio_inputdim) and",
                  "  model/*.py (512, 128, 49 = 7x7). Edit those to the shapes above."]
    if res.num_labels != PAPER_SHAPES["labels"]:
        notes.append(f"Labels have {res.num_labels} columns (classes + background); the repositories "
                     "hard-code AVE's 29 (28 classes + background) in loaders and models.")
    return notes


def _invalid_notes(res: ExportResult, drop_invalid: bool) -> list[str]:
    n = len(res.invalid)
    if not n:
        return ["Invalid rows: none (invalid_rows.tsv has its header only)."]
    where = ("they are left out of the order files" if drop_invalid else
             "they stay in the order files as published; export with --drop-invalid to leave them out")
    return [f"Invalid rows: {n} {'row has' if n == 1 else 'rows have'} no features (zeros in the "
            f"files named in invalid_rows.tsv: row, video_id, split, zeros, reason); {where}."]


def _missing_notes(res: ExportResult, empty_background_only: bool) -> list[str]:
    notes = []
    if empty_background_only:
        notes.append("visual_feature_noisy.h5, audio_feature_noisy.h5, labels_noisy.h5 have zero rows: "
                     "the weak setting trains on the AVE videos alone, without the 178 background-only "
                     "videos of the papers.")
    missing = [m for m in res.missing if m not in BACKGROUND_ONLY]
    if any(m in BACKGROUND_ONLY for m in res.missing):
        notes.append("Not written: visual_feature_noisy.h5, audio_feature_noisy.h5, labels_noisy.h5 "
                     "(weak setting): features of 178 background-only videos that are not in the AVE "
                     "archive; they cannot be produced from AVE. Export with --empty-background-only for "
                     "zero-row files.")
    if missing:
        notes.append(f"Not in the prepared folder, not written: {', '.join(missing)} "
                     "(mil_labels.h5: weak setting; *_order_match.h5: AVE-ECCV18 cmm_*.py).")
    return notes
