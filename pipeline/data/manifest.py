"""The prepared manifest (``manifest.csv``, ``background_manifest.csv``), written by
:mod:`pipeline.data.prepare` and read by the stages that follow it; no decoding here, so a
reader of the manifest does not load the decoder."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from pipeline import layout

MANIFEST_COLUMNS = ("index", "video_id", "category", "split", "start", "end", "path", "status",
                    "duration", "fps", "num_frames", "has_audio", "flags", "message")
EXCLUDED = frozenset({"corrupt", "missing", "no_video", "unusable"})  # no features for these
_TYPES = {"index": int, "start": int, "end": int, "duration": float, "fps": float,
          "num_frames": int}


def load_manifest(prepared_dir: str | os.PathLike,
                  name: str = layout.MANIFEST_FILE) -> list[dict[str, Any]]:
    """Rows of ``manifest.csv`` (or ``name``, e.g. ``background_manifest.csv``) with typed values
    (``flags`` a tuple, ``has_audio`` a bool)."""
    rows = []
    with open(Path(prepared_dir) / name, newline="") as f:
        for raw in csv.DictReader(f):
            row: dict[str, Any] = dict(raw)
            for k, tp in _TYPES.items():
                row[k] = tp(row[k])
            row["has_audio"] = row["has_audio"] in ("1", "True", "true")
            row["flags"] = tuple(x for x in row["flags"].split(";") if x)
            rows.append(row)
    return rows
