"""The ``prepare`` stage: AVE-format root -> manifest, label tensors, split orders, report.

Reads ``<root>/Annotations.txt`` and the split files (:mod:`pipeline.data.ave`; its warnings go
to the report), probes every unique video once in worker processes with a timeout
(:func:`pipeline.media.probe_many`), and writes to ``out_dir`` (atomically: a temporary
directory renamed into place):

* ``manifest.csv``: one row per Annotations.txt data line (``index`` = line index = row of
  labels.h5 and of the feature files), columns :data:`MANIFEST_COLUMNS`;
* ``labels.h5`` / ``mil_labels.h5`` (``avadataset``; video-level labels as published: the
  event class alone), ``{train,val,test}_order.h5`` and, when the root has the cml split,
  ``{train,val,test}_order_match.h5`` (``order``: the split files as published; rows that are
  not usable stay in the orders and are masked by consumers through the manifest status / the
  feature files' ``valid``);
* ``categories.json`` (names in label-index order) and ``report.md``;
* background-only training samples of the weak setting, when the root has them:
  ``background_manifest.csv`` (the videos of ``backgroundSet.txt``, same columns; the extract
  stages write their features to ``<model>_noisy.h5``) and ``labels_noisy.h5`` (``avadataset``
  ``(B, C+1)``, background alone, as the reference code's file). A root with the published
  ``labels_noisy.h5`` and no videos: that file is checked and copied (its features are the
  published ``*_feature_noisy.h5``, imported by the user; docs/ave-data.md).

Policy per video (a bad video never stops the run):

============== ================================ ===========================================
status          cause                            what is done
============== ================================ ===========================================
missing         no file                          excluded (features marked invalid)
corrupt         cannot be opened / decoded       excluded
no_video        no video stream                  excluded
unusable        probe hung or crashed; video     excluded (flag ``too_short`` for the
                shorter than ``min_duration``;    duration case); a file resolving outside
                annotation line unparsable;       the data root is never opened
                file outside ``<root>/AVE/``
short           video < 10 s                     last frame repeated (flag ``padded_short``)
no_audio        no audio stream                  silence (flag ``no_audio``)
unprobed        ``source="features"``: videos     none: rows are valid per the imported
                are not read                      feature files (``valid``)
ok              --                               --
============== ================================ ===========================================

Other flags: ``padded_audio`` (audio shorter than the clip: silence appended; the decoder's
rule, :func:`pipeline.media.audio_flags`), ``vfr`` (variable frame rate: sampled by timestamps).
A video id that cannot name a file safely makes its annotation line unusable
(:mod:`pipeline.data.ave`); a video file that resolves (symlinks followed) outside
``<root>/AVE/`` is ``unusable`` and never probed.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import h5py
import numpy as np
from tqdm import tqdm

from pipeline.config import InputError
from pipeline.data._fs import replace_dir
from pipeline import layout
from pipeline.data.ave import (AVEAnnotations, background_video_ids, load_annotations,
                               write_label_files)
from pipeline.data.ids import UnsafePathError
from pipeline.files import check_writable, contained, read_h5
from pipeline.media.decode import (FLAG_NO_AUDIO, FLAG_PADDED_AUDIO, FLAG_PADDED_SHORT, FLAG_VFR,
                                   VideoInfo, audio_flags)
from pipeline.media.pool import probe_many
from pipeline.layout import SPLITS
from pipeline.runtime import NUM_SEGMENTS

from pipeline.data.manifest import EXCLUDED, MANIFEST_COLUMNS

STATUSES = ("ok", "short", "no_audio", "corrupt", "missing", "no_video", "unusable", "unprobed")
FLAG_TOO_SHORT = "too_short"  # shorter than min_duration: excluded
_EXCLUDE = "excluded (features marked invalid)"
ACTIONS = {"missing": _EXCLUDE, "corrupt": _EXCLUDE, "no_video": _EXCLUDE, "unusable": _EXCLUDE,
           "short": "padded with the last frame", "no_audio": "silent audio", "ok": "",
           "unprobed": "video not read (data.source: features); valid per the feature files"}


@dataclass
class PrepareResult:
    """What :func:`prepare` wrote and found."""

    out_dir: Path
    rows: list[dict[str, Any]]
    categories: list[str]
    annotation_problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    background_rows: list[dict[str, Any]] = field(default_factory=list)  # backgroundSet.txt videos

    def counts(self) -> dict[str, int]:
        c = Counter(r["status"] for r in self.rows)
        return {s: c[s] for s in STATUSES if c[s]}

    def summary(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.counts().items())
        usable = sum(r["status"] not in EXCLUDED for r in self.rows)
        return (f"prepare: {len(self.rows)} samples, {len(self.categories)} categories, "
                f"{usable} usable ({counts}); {len(self.annotation_problems)} annotation "
                f"problems; {self.seconds:.1f} s -> {self.out_dir}")


def video_status(info: VideoInfo, min_duration: float,
                 num_segments: int = NUM_SEGMENTS) -> tuple[str, list[str], str]:
    """``(status, flags, message)`` of one probed video under the module's policy."""
    if info.status in EXCLUDED or info.status == "unprobed":
        return info.status, [], info.message
    if info.duration < min_duration:
        return "unusable", [FLAG_TOO_SHORT], (f"video is {info.duration:.2f} s < min_duration "
                                              f"{min_duration:g} s")
    flags, notes = [], []
    if info.status == "short":
        flags.append(FLAG_PADDED_SHORT)
        notes.append(f"video {info.duration:.2f} s < {num_segments} s")
    audio = audio_flags(info.audio_duration if info.has_audio else 0.0, num_segments)
    flags += audio
    if FLAG_NO_AUDIO in audio:
        notes.append("no audio stream")
    elif FLAG_PADDED_AUDIO in audio:
        notes.append(f"audio {info.audio_duration:.2f} s")
    if info.vfr:
        flags.append(FLAG_VFR)
        notes.append("variable frame rate")
    status = "short" if info.status == "short" else ("no_audio" if not info.has_audio else "ok")
    return status, flags, "; ".join(notes)


def build_rows(ann: AVEAnnotations, infos: dict[str, VideoInfo], min_duration: float) -> list[dict]:
    """Manifest rows, one per annotation data line (unparsable lines: status ``unusable``);
    ``path`` is the checked video path (empty for a file outside the root, never opened)."""
    split_of = {i: split for split in SPLITS for i in ann.splits.get(split, [])}
    by_index = ann.by_index()
    rows = []
    for index in range(ann.num_lines):
        s = by_index.get(index)
        if s is None:
            rows.append(dict(index=index, video_id="", category="", split="none", start=0, end=0,
                             path="", status="unusable", duration=0.0, fps=0.0, num_frames=0,
                             has_audio=False, flags=(), message="annotation line unusable "
                             "(see annotation problems)"))
            continue
        info = infos[s.video_id]
        status, flags, message = video_status(info, min_duration)
        rows.append(dict(index=index, video_id=s.video_id, category=s.category,
                         split=split_of.get(index, "none"), start=s.start, end=s.end,
                         path=info.path, status=status,
                         duration=round(info.duration, 4), fps=round(info.fps, 4),
                         num_frames=info.num_frames, has_audio=info.has_audio,
                         flags=tuple(flags), message=message))
    return rows


def background_rows(ann: AVEAnnotations, ids: list[str], infos: dict[str, VideoInfo],
                    min_duration: float) -> list[dict[str, Any]]:
    """Manifest rows of the background-only videos (index = row of ``<model>_noisy.h5``)."""
    rows = []
    for index, vid in enumerate(ids):
        status, flags, message = video_status(infos[vid], min_duration)
        info = infos[vid]
        rows.append(dict(index=index, video_id=vid, category="", split="background", start=0,
                         end=0, path=str(ann.video_path(vid)), status=status,
                         duration=round(info.duration, 4), fps=round(info.fps, 4),
                         num_frames=info.num_frames, has_audio=info.has_audio,
                         flags=tuple(flags), message=message))
    return rows


def prepare(root: str | os.PathLike, out_dir: str | os.PathLike, *, min_duration: float = 1.0,
            workers: int = 2, timeout_s: float = 30.0, progress: bool = False,
            source: str = "videos") -> PrepareResult:
    """Run the stage: read ``root``, write ``out_dir`` atomically; see the module doc.

    ``source="features"``: no video is opened (the published-features route): every row is
    ``unprobed`` and the labels, orders and manifest come from the annotation files alone."""
    t0 = time.time()
    root, out_dir = Path(root), Path(out_dir)
    check_writable(out_dir.parent)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # each one is in ann.problems, hence in the report
        ann = load_annotations(root)
        bg_ids = background_video_ids(root, ann.problems)
    if source not in ("videos", "features"):
        raise ValueError(f"data.source: {source!r} is not allowed; allowed: 'videos', 'features'")
    paths, infos = contained_videos(ann, list(dict.fromkeys(ann.video_ids() + bg_ids)))
    if source == "videos":
        infos_iter: Iterable[VideoInfo] = probe_many(paths.values(), workers=workers, timeout_s=timeout_s)
        if progress:
            infos_iter = tqdm(infos_iter, total=len(paths), desc="probe", unit="video")
    else:
        infos_iter = (VideoInfo(str(p), "unprobed", message="video not read (data.source: features)")
                      for p in paths.values())
    infos.update(zip(paths, infos_iter))
    rows = build_rows(ann, infos, min_duration)
    result = PrepareResult(out_dir, rows, list(ann.categories), list(ann.problems))
    result.background_rows = background_rows(ann, bg_ids, infos, min_duration)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _write_outputs(tmp, ann, result, root, min_duration)
        result.seconds = time.time() - t0
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def contained_videos(ann: AVEAnnotations, ids: list[str]) -> tuple[dict[str, Path], dict[str, VideoInfo]]:
    """``({video id: path to probe}, {video id: unusable info})``: a file that resolves outside
    ``<root>/AVE/`` (a symlink leading away) is never opened."""
    paths, outside = {}, {}
    for vid in ids:
        try:
            paths[vid] = ann.video_path(vid)
        except UnsafePathError as e:
            outside[vid] = VideoInfo("", "unusable", message=f"not opened: {e}")
    return paths, outside


def _write_outputs(out: Path, ann: AVEAnnotations, result: PrepareResult, root: Path,
                   min_duration: float) -> None:
    write_manifest(out / layout.MANIFEST_FILE, result.rows)
    write_label_files(ann, out)
    _write_background(out, ann, result, root)
    (out / layout.CATEGORIES_FILE).write_text(json.dumps(result.categories, indent=1) + "\n")
    (out / layout.REPORT_FILE).write_text(render_report(result, ann, root, min_duration))


def _write_background(out: Path, ann: AVEAnnotations, result: PrepareResult, root: Path) -> None:
    """``background_manifest.csv`` + ``labels_noisy.h5`` of the background-only videos, or the
    root's published ``labels_noisy.h5`` (checked: background alone, C+1 columns)."""

    published = root / layout.BACKGROUND_LABELS_FILE
    if result.background_rows:
        write_manifest(out / layout.BACKGROUND_MANIFEST_FILE, result.background_rows)
        labels = np.zeros((len(result.background_rows), ann.num_classes + 1), np.float32)
        labels[:, ann.background] = 1.0
        with h5py.File(out / layout.BACKGROUND_LABELS_FILE, "w") as f:
            f.create_dataset("avadataset", data=labels)
    elif published.is_file():
        contained(published, root, "published label file")
        labels = np.asarray(read_h5(published, "avadataset"), dtype=np.float32)
        if labels.ndim != 2 or labels.shape[1] != ann.num_classes + 1 or \
                not (labels[:, ann.background] == 1).all() or labels[:, :ann.background].any():
            raise InputError(f"{published}: expected (B, {ann.num_classes + 1}) rows of "
                             f"background alone, got shape {labels.shape}")
        shutil.copyfile(published, out / layout.BACKGROUND_LABELS_FILE)


def write_manifest(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({**r, "flags": ";".join(r["flags"]), "has_audio": int(r["has_audio"])})


def render_report(result: PrepareResult, ann: AVEAnnotations, root: Path,
                  min_duration: float) -> str:
    """Human-readable report: counts, then every problem and what was done about it."""
    rows = result.rows
    lines = ["# Prepare report", "",
             f"- root: `{root}`", f"- annotation lines: {ann.num_lines}; usable samples: "
             f"{sum(r['status'] not in EXCLUDED for r in rows)}; unique videos: "
             f"{len(ann.video_ids())}; categories: {len(result.categories)}",
             "- splits: " + ", ".join(f"{s} {len(ann.splits.get(s, []))}" for s in SPLITS),
             _cml_line(ann),
             f"- background-only videos (weak training): {len(result.background_rows)}",
             f"- min_duration: {min_duration:g} s", "",
             "## Samples per status", "", "| status | samples | what is done |", "|---|---|---|"]
    for status, n in result.counts().items():
        lines.append(f"| {status} | {n} | {ACTIONS[status] or 'used as is'} |")
    flags = Counter(f for r in rows for f in r["flags"])
    if flags:
        lines += ["", "## Flags", "", "| flag | samples |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(flags.items())]
    lines += ["", f"## Annotation problems ({len(result.annotation_problems)})", ""]
    lines += [f"- {p}" for p in result.annotation_problems] or ["none"]
    bad = {}
    for r in rows:
        if r["video_id"] and (r["status"] != "ok" or r["flags"]):
            bad.setdefault(r["video_id"], r)
    lines += ["", f"## Video problems ({len(bad)} videos)", ""]
    if bad:
        lines += ["| video | manifest rows | status | flags | what is done | details |",
                  "|---|---|---|---|---|---|"]
        by_video: dict[str, list[int]] = {}
        for r in rows:
            by_video.setdefault(r["video_id"], []).append(r["index"])
        for vid, r in bad.items():
            done = ACTIONS[r["status"]]
            if r["status"] not in EXCLUDED:
                done = "; ".join(_FLAG_ACTIONS.get(f, f) for f in r["flags"]) or "used as is"
            lines.append(f"| `{vid}` ({r['path']}) | {', '.join(map(str, by_video[vid]))} | "
                         f"{r['status']} | {';'.join(r['flags'])} | {done} | "
                         f"{r['message'].replace('|', '/')} |")
    else:
        lines.append("none")
    return "\n".join(lines) + "\n"


def _cml_line(ann: AVEAnnotations) -> str:
    """Report line of the cml split: sizes, and events spanning all segments (left out of cml
    training and evaluation, with events of no segment)."""
    if not ann.cml_splits:
        return "- cml split: none (no cml/ folder in the root; the cml setting cannot run)"
    by_index = ann.by_index()
    parts = []
    for split in SPLITS:
        lengths = [by_index[i].end - by_index[i].start for i in ann.cml_splits[split]]
        full = sum(n == NUM_SEGMENTS for n in lengths)
        parts.append(f"{split} {len(lengths)} ({full} full-length, {lengths.count(0)} empty)")
    return "- cml split: " + ", ".join(parts)


_FLAG_ACTIONS = {FLAG_PADDED_AUDIO: "audio padded with silence", FLAG_VFR: "sampled by timestamps",
                 FLAG_NO_AUDIO: "silent audio", FLAG_PADDED_SHORT: "padded with the last frame"}
