"""Ids and names read from input files are data: they name a file only after these checks.

* :func:`video_id_problem`: why a video id from ``Annotations.txt`` or a split file is not
  safe to join into a path (``None`` when it is). Safe: ``[A-Za-z0-9_-]`` plus ``.`` (not
  leading), at most :data:`MAX_ID_LENGTH` characters; so no path separator, no ``..``, no
  leading ``/`` or ``~``, no control character. Real AVE ids are 11-character YouTube ids.
* :func:`inside`: a path resolved (symlinks followed) that must lie inside a folder.
* :func:`safe_filename`: any text (a video id, a head name) made into one file-name
  component; text that needed changing gets a short hash of the original, so two different
  names never share a file.
* :func:`output_file`: ``folder / safe_filename(name)``, checked to stay inside ``folder``.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from pipeline.config import InputError
from pipeline.files import contained

MAX_ID_LENGTH = 64  # YouTube ids are 11 characters; anything far longer is not an id
_SAFE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
_UNSAFE_CHAR = re.compile(r"[^A-Za-z0-9_.-]")
MAX_NAME_LENGTH = 80  # file-name component length kept from the text (plus a hash if changed)


class UnsafePathError(InputError):
    """A path built from data would leave the folder it belongs to."""


def video_id_problem(video_id: str) -> str | None:
    """Why ``video_id`` cannot name a file (one phrase), or ``None`` when it is safe."""
    if not video_id:
        return "empty"
    if any(ord(c) < 32 or ord(c) == 127 for c in video_id):
        return "contains control characters"
    if "/" in video_id or "\\" in video_id or os.sep in video_id:
        return "contains a path separator"
    if ".." in video_id:
        return "contains '..'"
    if video_id[0] in "~.":
        return f"starts with {video_id[0]!r}"
    if len(video_id) > MAX_ID_LENGTH:
        return f"longer than {MAX_ID_LENGTH} characters"
    if not _SAFE_ID.fullmatch(video_id):
        return "has characters outside A-Z a-z 0-9 _ - ."
    return None


def inside(path: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """``path`` with symlinks resolved; :class:`UnsafePathError` unless it lies inside ``folder``
    (itself resolved, so a data folder that is a symlink to another disk is fine)."""
    try:
        return contained(path, folder)
    except InputError as e:
        raise UnsafePathError(str(e)) from None


def safe_filename(text: str, max_length: int = MAX_NAME_LENGTH) -> str:
    """One file-name component for ``text``: characters outside ``[A-Za-z0-9_.-]`` become
    ``_``, runs of dots and underscores one ``_``, leading ones are dropped, the length is bounded; when anything changed, ``-<hash>``
    of the original is appended (distinct texts give distinct names)."""
    name = re.sub(r"[._]*[_.]{2,}[._]*|_+", "_", _UNSAFE_CHAR.sub("_", text)).lstrip("._")[:max_length]
    if name != text or not name:
        name = f"{name or '_'}-{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"
    return name


def output_file(folder: str | os.PathLike, name: str, suffix: str = "") -> Path:
    """``folder / (safe_filename(name) + suffix)``, guaranteed to stay inside ``folder``."""
    path = Path(folder) / (safe_filename(name) + suffix)
    inside(path, folder)
    return path
