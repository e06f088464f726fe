"""AVE annotations, standard splits and label tensors.

Format (Tian et al., ECCV 2018): ``Annotations.txt`` has one sample a line,
``Category&VideoID&Quality&StartTime&EndTime``; the event covers the 1-second segments
``StartTime .. EndTime-1`` of the ten, the rest is background. ``trainSet.txt`` /
``valSet.txt`` / ``testSet.txt`` repeat lines of ``Annotations.txt``; the published
``*_order.h5`` files hold their 0-based line indices in ``Annotations.txt``.

Category index = order of first appearance in ``Annotations.txt``; background = C (28 on AVE).

Policy for bad input (each case is a ``AnnotationWarning`` naming file and line, never a crash):

* wrong field count or non-integer times: the line is unusable; its index is kept (indices are
  line numbers), its label row is all background and it is left out of every split;
* a video id that cannot safely name a file (:func:`pipeline.data.ids.video_id_problem`: a path
  separator, ``..``, a leading ``/`` or ``~``, control characters, characters outside
  ``[A-Za-z0-9_.-]``): the line is unusable, as above; such ids never become paths;
* times outside ``0..num_segments`` or ``start > end``: clamped / swapped into range; the split
  files' copies of such a line (its original text) stay in their split;
* empty interval (``start == end``, real line 27): kept, all segments background, as the
  published ``labels.h5`` does;
* a split line that is not in ``Annotations.txt`` (unknown category or video), has an unsafe
  video id, or repeats an earlier split line: left out of the split;
* an annotation line repeated verbatim: kept (it is its own index), warned about;
* text (:func:`pipeline.files.read_text_lines`): every file is read as bytes from inside the
  root (symlinks resolved: a file resolving elsewhere is an error, never read); a UTF-8 or
  UTF-16 BOM is honoured; a line that does not decode is a ``file:line`` warning and is left
  out (it takes no index); a file that is mostly not text, or far beyond AVE's size, is refused;
* an ``Annotations.txt`` most of whose lines are unusable (more than :data:`UNUSABLE_SHARE`, at
  least :data:`UNUSABLE_MIN`), or whose label tensor would exceed :data:`MAX_LABEL_BYTES`
  (AVE's: 4.8 MB), is not an AVE annotation file: refused before anything is written.

Cross-modality localization split (``<root>/cml/{train,val,test}Set.txt``, optional): the
partition the AVE reference code uses for A2V / V2A (its ``{train,val,test}_order_match.h5``),
written and matched like the standard split files.

Video-level labels (``mil_labels.h5`` of the reference code, the weak setting's targets): the
event class alone, background = 0 in every row (:meth:`AVEAnnotations.video_labels`).

CLI: ``python -m pipeline.data.ave export-labels RAW_DIR OUT_DIR`` writes the community files
``labels.h5`` (``avadataset``, float32 ``(N,10,C+1)``), ``mil_labels.h5`` (``avadataset``,
float32 ``(N,C+1)``), ``{train,val,test}_order.h5`` and, when ``RAW_DIR/cml/`` holds the split,
``{train,val,test}_order_match.h5`` (``order``, int64).
"""
from __future__ import annotations

import argparse
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from pipeline import layout
from pipeline.config import InputError
from pipeline.files import read_text_lines
from pipeline.data.ids import UnsafePathError, inside, video_id_problem
from pipeline.layout import (ANNOTATIONS_FILE, BACKGROUND_FILE, CML_DIR, SPLITS, VIDEO_DIR)
from pipeline.runtime import NUM_SEGMENTS
SPLIT_FILES = {split: layout.SPLIT_FILE.format(split=split) for split in SPLITS}
HEADER_PREFIX = "Category&VideoID"
UNUSABLE_SHARE = 0.5  # more unusable lines than this share: not an AVE annotation file
UNUSABLE_MIN = 20  # ... when at least this many (a tiny file with two bad lines is still read)
MAX_LABEL_BYTES = 64 * 2**20  # labels.h5 bound (AVE: 4143 x 10 x 29 float32 = 4.8 MB)
QUOTE_CHARS = 80  # characters of a bad line quoted in a warning


class AnnotationWarning(UserWarning):
    """A bad line in an AVE annotation or split file (the message names file and line)."""


@dataclass(frozen=True)
class Sample:
    """One annotation line: one (video, category, interval) sample."""

    index: int  # 0-based data-line index in Annotations.txt (the published order.h5 value)
    category: str
    video_id: str
    quality: str
    start: int  # first event segment
    end: int  # one past the last event segment (start == end: no event)
    source: str = field(default="", compare=False)  # the line as written (before any repair)

    @property
    def line(self) -> str:
        return f"{self.category}&{self.video_id}&{self.quality}&{self.start}&{self.end}"


@dataclass
class AVEAnnotations:
    """Parsed AVE annotations and splits of one AVE-format root."""

    root: Path
    num_lines: int  # data lines in Annotations.txt (unusable ones included)
    samples: list[Sample]  # usable samples, in file order
    categories: list[str]  # index order = first appearance
    splits: dict[str, list[int]] = field(default_factory=dict)  # split -> sample indices
    problems: list[str] = field(default_factory=list)  # every warning issued while parsing
    cml_splits: dict[str, list[int]] = field(default_factory=dict)  # cml/ split (may be empty)

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    @property
    def background(self) -> int:
        return len(self.categories)

    def by_index(self) -> dict[int, Sample]:
        return {s.index: s for s in self.samples}

    def video_path(self, video_id: str) -> Path:
        """``<root>/AVE/<video_id>.mp4``; :class:`pipeline.data.ids.UnsafePathError` when the id
        is unsafe or the file resolves (symlinks followed) outside ``<root>/AVE/``."""
        problem = video_id_problem(video_id)
        if problem:
            raise UnsafePathError(f"video id {video_id!r} {problem}")
        path = self.root / VIDEO_DIR / f"{video_id}{layout.VIDEO_SUFFIX}"
        inside(path, self.root / VIDEO_DIR)
        return path

    def video_ids(self) -> list[str]:
        """Unique video ids in first-appearance order (a video may carry two samples)."""
        return list(dict.fromkeys(s.video_id for s in self.samples))

    def labels(self, num_segments: int = NUM_SEGMENTS) -> np.ndarray:
        """Fully supervised one-hot labels ``(num_lines, T, C+1)`` float32, row = line index."""
        out = np.zeros((self.num_lines, num_segments, self.num_classes + 1), np.float32)
        out[:, :, self.background] = 1.0
        cat = {c: i for i, c in enumerate(self.categories)}
        for s in self.samples:
            out[s.index, s.start : s.end, self.background] = 0.0
            out[s.index, s.start : s.end, cat[s.category]] = 1.0
        return out

    def order(self, split: str) -> np.ndarray:
        return np.asarray(self.splits[split], dtype=np.int64)

    def video_labels(self) -> np.ndarray:
        """Video-level labels ``(num_lines, C+1)`` float32 as the published ``mil_labels.h5``:
        the sample's event class alone (background = 0 in every row, also for an empty
        interval); unusable lines are all zero."""
        out = np.zeros((self.num_lines, self.num_classes + 1), np.float32)
        cat = {c: i for i, c in enumerate(self.categories)}
        for s in self.samples:
            out[s.index, cat[s.category]] = 1.0
        return out

    def cml_order(self, split: str) -> np.ndarray:
        """Indices of the cross-modality localization split (``<split>_order_match.h5``)."""
        return np.asarray(self.cml_splits[split], dtype=np.int64)


def _warn(problems: list[str], msg: str) -> None:
    problems.append(msg)
    warnings.warn(msg, AnnotationWarning, stacklevel=3)


def _read_lines(path: Path, root: Path, problems: list[str],
                undecodable: bool = False) -> list[tuple[int, str | None]]:
    """(1-based file line number, stripped text) of non-empty lines, header skipped; ``path``
    read inside ``root`` under the text policy. A line that does not decode is warned about;
    it is left out, or kept with text ``None`` when ``undecodable`` (an annotation line keeps
    its index)."""
    lines, bad = read_text_lines(path, root, "AVE text file")
    for msg in bad:
        _warn(problems, msg)
    out: list[tuple[int, str | None]] = []
    for n, raw in lines:
        if raw is None:
            if undecodable:
                out.append((n, None))
            continue
        text = raw.strip()
        if not text or (n == 1 and text.startswith(HEADER_PREFIX)):
            continue
        out.append((n, text))
    return out


def _quote(text: str) -> str:
    """``text`` quoted for a warning, at most :data:`QUOTE_CHARS` characters of it."""
    return repr(text) if len(text) <= QUOTE_CHARS else f"{text[:QUOTE_CHARS]!r}..."


def parse_annotation_line(
    text: str, index: int, where: str, problems: list[str], num_segments: int = NUM_SEGMENTS
) -> Sample | None:
    """Parse one ``Category&VideoID&Quality&StartTime&EndTime`` line under the module's policy."""
    parts = text.split("&")
    if len(parts) != 5:
        _warn(problems, f"{where}: expected 5 '&'-separated fields, got {len(parts)}: {_quote(text)}; "
                        "line unusable (all background, left out of splits)")
        return None
    category, video_id, quality, s_txt, e_txt = (p.strip() for p in parts)
    try:
        start, end = int(s_txt), int(e_txt)
    except ValueError:
        _warn(problems, f"{where}: StartTime/EndTime not integers ({_quote(s_txt)}, {_quote(e_txt)}); "
                        "line unusable (all background, left out of splits)")
        return None
    if not category or not video_id:
        _warn(problems, f"{where}: empty category or video id: {_quote(text)}; line unusable")
        return None
    problem = video_id_problem(video_id)
    if problem:
        _warn(problems, f"{where}: unsafe video id {_quote(video_id)} ({problem}); line unusable "
                        "(all background, left out of splits)")
        return None
    if start > end:
        _warn(problems, f"{where}: StartTime {start} > EndTime {end}; swapped")
        start, end = end, start
    if start < 0 or end > num_segments:
        c0, c1 = max(0, min(start, num_segments)), max(0, min(end, num_segments))
        _warn(problems, f"{where}: interval {start}..{end} outside 0..{num_segments}; "
                        f"clamped to {c0}..{c1}")
        start, end = c0, c1
    if start == end:
        _warn(problems, f"{where}: empty interval {start}..{end}; all segments background "
                        "(as the published labels.h5)")
    return Sample(index, category, video_id, quality, start, end, _normalized(text))


def _normalized(text: str) -> str:
    """A line's fields with surrounding blanks removed (how split lines are matched)."""
    return "&".join(p.strip() for p in text.split("&"))


def load_annotations(root: str | Path, num_segments: int = NUM_SEGMENTS,
                     splits: bool = True) -> AVEAnnotations:
    """Parse ``<root>/Annotations.txt`` and (when present) the three split files."""
    root = Path(root)
    ann_path = root / ANNOTATIONS_FILE
    if not ann_path.is_file():
        raise FileNotFoundError(f"{ann_path}: no AVE annotation file (expected "
                                f"'{ANNOTATIONS_FILE}' with Category&VideoID&Quality&Start&End lines)")
    problems: list[str] = []
    lines = _read_lines(ann_path, root, problems, undecodable=True)
    samples, seen, unusable = [], {}, {}
    for index, (n, text) in enumerate(lines):
        if text is None:  # reported by the reader; unusable, its index kept
            continue
        s = parse_annotation_line(text, index, f"{ann_path}:{n}", problems, num_segments)
        if s is None:
            unusable.setdefault(_normalized(text), f"{ann_path}:{n}")
            continue
        if s.line in seen:
            _warn(problems, f"{ann_path}:{n}: repeats line {seen[s.line]} verbatim; kept as its own "
                            "sample (index = line number)")
        seen.setdefault(s.line, n)
        samples.append(s)
    categories = list(dict.fromkeys(s.category for s in samples))
    _check_size(ann_path, len(lines), len(samples), len(categories), num_segments)
    ann = AVEAnnotations(root, len(lines), samples, categories, problems=problems)
    if splits:
        for split in SPLITS:
            path = root / SPLIT_FILES[split]
            if path.is_file():
                ann.splits[split] = _match_split(path, root, samples, categories, problems,
                                                 unusable)
            else:
                ann.splits[split] = []
                _warn(problems, f"{path}: split file missing; split '{split}' is empty")
        if (root / CML_DIR).is_dir():
            ann.cml_splits = _read_cml_splits(root, samples, categories, problems, unusable)
    return ann


def _check_size(path: Path, lines: int, usable: int, categories: int, num_segments: int) -> None:
    """Refuse an annotation file that is mostly not AVE lines, or whose label tensor would be
    far beyond AVE's, before anything is written."""
    unusable = lines - usable
    if unusable >= UNUSABLE_MIN and unusable > UNUSABLE_SHARE * lines:
        raise InputError(f"{path}: {unusable} of {lines} lines are not "
                         "Category&VideoID&Quality&StartTime&EndTime lines; not an AVE annotation "
                         "file")
    size = lines * num_segments * (categories + 1) * 4
    if size > MAX_LABEL_BYTES:
        raise InputError(f"{path}: {lines} lines x {categories} categories would make a "
                         f"{size / 2**20:.0f} MB labels.h5 (AVE: 4143 x 28, 4.8 MB; limit "
                         f"{MAX_LABEL_BYTES // 2**20} MB); not an AVE annotation file")


def _read_cml_splits(root: Path, samples: list[Sample], categories: list[str],
                     problems: list[str], unusable: dict[str, str]) -> dict[str, list[int]]:
    """The cml split files, matched like the standard ones (a missing file: an empty split)."""
    out = {}
    for split in SPLITS:
        path = root / CML_DIR / SPLIT_FILES[split]
        if path.is_file():
            out[split] = _match_split(path, root, samples, categories, problems, unusable)
        else:
            out[split] = []
            _warn(problems, f"{path}: cml split file missing; cml split '{split}' is empty")
    return out


def _match_split(path: Path, root: Path, samples: list[Sample], categories: list[str],
                 problems: list[str], unusable: dict[str, str] | None = None) -> list[int]:
    """Map each split line to the index of the Annotations.txt line it copies: the line as
    written there (so a line repaired on parsing keeps its split), or its repaired text. A
    split line copying an unusable annotation line (``unusable``: text -> ``file:line``) is
    left out with both line numbers."""
    unusable = unusable or {}
    candidates: dict[str, list[int]] = {}
    for s in samples:
        for key in dict.fromkeys((s.source, s.line)):
            candidates.setdefault(key, []).append(s.index)
    known = set(categories)
    order, taken, used = [], set(), {}
    for n, text in _read_lines(path, root, problems):
        key = _normalized(text)
        parts = key.split("&")
        index = next((i for i in candidates.get(key, ()) if i not in taken), None)
        if index is not None:
            used[key] = n
            taken.add(index)
            order.append(index)
        elif key in used:
            _warn(problems, f"{path}:{n}: repeats split line {used[key]}; left out")
        elif len(parts) > 1 and video_id_problem(parts[1]):
            _warn(problems, f"{path}:{n}: unsafe video id {_quote(parts[1])} "
                            f"({video_id_problem(parts[1])}); left out of the split")
        elif key in unusable:
            _warn(problems, f"{path}:{n}: its annotation line {unusable[key]} is unusable (reported "
                            "there); left out of the split")
        elif parts[0] not in known:
            _warn(problems, f"{path}:{n}: unknown category {_quote(parts[0])} (not in "
                            f"{ANNOTATIONS_FILE}); left out of the split")
        else:
            _warn(problems, f"{path}:{n}: line not found in {ANNOTATIONS_FILE}: {_quote(text)}; "
                            "left out of the split")
    return order


def background_video_ids(root: str | Path, problems: list[str] | None = None) -> list[str]:
    """Video ids of ``<root>/backgroundSet.txt`` (background-only training videos, one id a
    line; the synthetic set writes one, AVE published only their features): ``[]`` without
    the file. Unsafe ids (:func:`pipeline.data.ids.video_id_problem`) are warned about and left out."""
    path = Path(root) / BACKGROUND_FILE
    if not path.is_file():
        return []
    problems = [] if problems is None else problems
    ids = []
    for n, text in _read_lines(path, Path(root), problems):
        problem = video_id_problem(text)
        if problem:
            _warn(problems, f"{path}:{n}: unsafe video id {_quote(text)} ({problem}); left out")
            continue
        ids.append(text)
    return list(dict.fromkeys(ids))


def export_labels(root: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Write the community label/order files from the annotation files alone."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return write_label_files(load_annotations(root), out_dir)


def write_label_files(ann: "AVEAnnotations", out_dir: Path) -> dict[str, Path]:
    """``labels.h5``, ``mil_labels.h5`` and the split order files (``_order_match.h5`` too when
    the root has the cml split) of ``ann`` into ``out_dir``: the one writer of these files
    (``prepare`` and ``export-labels``). Returns ``{name: path}``."""
    written = {}
    for key, name, data in (("labels", layout.LABELS_FILE, ann.labels()),
                            ("mil_labels", layout.VIDEO_LABELS_FILE, ann.video_labels())):
        written[key] = out_dir / name
        with h5py.File(written[key], "w") as f:
            f.create_dataset("avadataset", data=data)
    for split in SPLITS:
        written[split] = write_order(layout.order_file(out_dir, split), ann.order(split))
        if ann.cml_splits:
            written[f"{split}_match"] = write_order(layout.order_file(out_dir, split, match=True),
                                                    ann.cml_order(split))
    return written


def write_order(path: Path, order: np.ndarray) -> Path:
    """A community order file: dataset ``order``, int64 line indices."""
    with h5py.File(path, "w") as f:
        f.create_dataset("order", data=np.asarray(order, dtype=np.int64))
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pipeline.data.ave", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export-labels", help="write labels.h5, mil_labels.h5, "
                       "{train,val,test}_order.h5 and {train,val,test}_order_match.h5")
    e.add_argument("raw_dir", help="AVE-format root with Annotations.txt and the split files")
    e.add_argument("out_dir")
    args = p.parse_args(argv)
    if args.cmd == "export-labels":
        for name, path in export_labels(args.raw_dir, args.out_dir).items():
            print(f"{name}: {path}")


if __name__ == "__main__":
    main()
