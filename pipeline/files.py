"""Every file a user hands us is opened here: checkpoints, weights files, HDF5 feature and label
files.

Each failure (a missing or unreadable file, a pickle that is not plain tensors, a truncated zip
or HDF5 file, a missing dataset, a wrong shape, non-finite numbers) is an
:class:`~pipeline.config.InputError` (or ``FileNotFoundError``) whose message starts with the
file: ``error: <path>: <what is wrong>``, exit status 2 from :func:`pipeline.cli.stage_main`.
Nothing in a checkpoint is ever executed (``torch.load(weights_only=True)``), and no message
repeats torch's advice to load with ``weights_only=False``.

Non-finite numbers. A feature row holding NaN or inf (e.g. bit flips on disk) is **invalid**,
like a video that could not be decoded: :func:`nonfinite_rows` finds such rows, the feature
store zeroes them and clears their ``valid`` bit, and the reader says how many rows and values
it left out. A checkpoint holding non-finite weights is refused (:func:`check_finite_state`).
"""
from __future__ import annotations

import contextlib
import re
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np

from pipeline.config import InputError

ROWS_PER_BLOCK = 256  # rows checked at a time for non-finite values (bounded memory)


# ------------------------------------------------------------------------------------------
# Checkpoints and weights files (torch, safetensors)
# ------------------------------------------------------------------------------------------
def _numpy_safe_globals() -> list:
    # numpy arrays pickled inside foreign checkpoints (e.g. PCA parameters); data only.
    core = getattr(np, "_core", None) or np.core
    out = [core.multiarray._reconstruct, np.ndarray, np.dtype]
    out += [type(np.dtype(t)) for t in ("float32", "float64", "int64", "int32", "uint8", "bool")]
    return out


def load_checkpoint(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """A dict read from ``path``: safetensors (by suffix), or ``torch.load(weights_only=True)``
    (numpy arrays allow-listed, nothing else). Anything else is an :class:`InputError`
    ``<path>: not a readable <what>: <reason>``; nothing in the file runs."""
    import torch
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    try:
        if path.suffix == ".safetensors":
            obj = load_file(str(path), device="cpu")
        else:
            with torch.serialization.safe_globals(_numpy_safe_globals()), warnings.catch_warnings():
                # torch warns about a plain pickle's protocol, then refuses it (reason below)
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as e:
        raise InputError(f"{path}: not readable: {e.strerror}") from None
    except Exception as e:  # torch, pickle, zip and safetensors each raise their own types
        reason = load_reason(e)
        if "refused" not in reason and _is_damaged_zip(path):
            reason = f"truncated or damaged (a torch zip file without its end; {type(e).__name__})"
        raise InputError(f"{path}: not a readable {what}: {reason}") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    return obj


def _is_damaged_zip(path: Path) -> bool:
    """A file that starts as a zip archive (torch's format) but does not read as one."""
    import zipfile

    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04" and not zipfile.is_zipfile(path)


def load_reason(err: BaseException) -> str:
    """The cause of a failed load in one phrase, without torch's advice to load unsafely."""
    text = str(err)
    if "Weights only load failed" in text:  # torch's safe unpickler refused the file
        code = re.search(r"GLOBAL ([\w.]+)", text)
        if code:
            return f"it refers to Python code or objects ({code.group(1)}), not only tensors; refused"
        op = re.search(r"Unsupported operand (\d+)", text)
        what = f" (pickle opcode {op.group(1)})" if op else ""
        return f"not a checkpoint of tensors{what}; refused by the safe loader"
    if "central directory" in text or "zip archive" in text or isinstance(err, EOFError):
        return f"truncated or damaged ({type(err).__name__})"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)
    first = first.split("weights_only")[0].rstrip(" ,;:(")  # never torch's unsafe advice
    return f"{type(err).__name__}: {first[:200]}"


def check_finite_state(state: Mapping[str, Any], where: str) -> None:
    """Raise :class:`InputError` when a floating tensor of ``state`` (a state dict) holds NaN or
    inf, naming ``where``, the count and the first such entries."""
    import torch

    bad, total = [], 0
    for key, value in state.items():
        if torch.is_tensor(value) and value.is_floating_point():
            n = int((~torch.isfinite(value)).sum())
            if n:
                bad.append(key)
                total += n
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise InputError(f"{where}: {total} non-finite weights (NaN or inf) in "
                         f"{', '.join(bad[:3])}{more}")


# ------------------------------------------------------------------------------------------
# HDF5 files
# ------------------------------------------------------------------------------------------
def _shape_text(shape: Sequence[Optional[int | str]]) -> str:
    return "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"


def check_shape(path: str | Path, dataset: str, got: Sequence[int],
                want: Sequence[Optional[int | str]]) -> None:
    """``got`` must match ``want`` (a tuple whose ``None`` or str entries match any size)."""
    if len(got) != len(want) or any(isinstance(w, int) and w != g for w, g in zip(want, got)):
        raise InputError(f"{path}: '{dataset}' has shape {tuple(got)}, expected "
                         f"{_shape_text(want)}")


@contextlib.contextmanager
def open_h5(path: str | Path, dataset: Optional[str] = None,
            shape: Optional[Sequence[Optional[int | str]]] = None) -> Iterator[Any]:
    """``h5py.File(path, "r")``, with ``dataset`` (when given) present and of ``shape``
    (``None`` entries: any size). An unreadable or truncated file is an :class:`InputError`
    naming the file; read data with :func:`read` to have a damaged block named too."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except PermissionError as e:
        raise InputError(f"{path}: not readable: {e.strerror}") from None
    except OSError as e:
        raise InputError(f"{path}: not a readable HDF5 file ({_h5_reason(e)})") from None
    with f:
        if dataset is not None:
            if dataset not in f:
                raise InputError(f"{path}: no '{dataset}' dataset (found: "
                                 f"{', '.join(f.keys()) or 'nothing'})")
            if not isinstance(f[dataset], h5py.Dataset):
                raise InputError(f"{path}: '{dataset}' is a group, not a dataset")
            if shape is not None:
                check_shape(path, dataset, f[dataset].shape, shape)
        yield f


def read(dataset: Any, index: Any = ()) -> np.ndarray:
    """``dataset[index]`` of an open HDF5 dataset; a failed read (a damaged block) is an
    :class:`InputError` naming the file."""
    try:
        return dataset[index]
    except OSError as e:
        raise InputError(f"{dataset.file.filename}: cannot read '{dataset.name.lstrip('/')}' "
                         f"({_h5_reason(e)}); the file is damaged or truncated") from None


def _h5_reason(err: OSError) -> str:
    text = " ".join(str(err).split())
    inner = re.search(r"\(([^()]*)\)\s*$", text)  # h5py: "Unable to ... (truncated file: eof = ...)"
    return (inner.group(1) if inner else text)[:200]


def read_h5(path: str | Path, dataset: str,
            shape: Optional[Sequence[Optional[int | str]]] = None) -> np.ndarray:
    """The whole of ``dataset`` in ``path`` (see :func:`open_h5`)."""
    with open_h5(path, dataset, shape) as f:
        return np.asarray(read(f[dataset]))


# ------------------------------------------------------------------------------------------
# Non-finite values
# ------------------------------------------------------------------------------------------
def nonfinite_rows(data: Any) -> tuple[np.ndarray, int]:
    """``(rows, values)``: indices of the rows of ``data`` (an array or an HDF5 dataset) that hold
    a NaN or inf, and how many such values there are; read in blocks of rows."""
    rows, values = [], 0
    for start in range(0, len(data), ROWS_PER_BLOCK):
        block = np.asarray(read(data, slice(start, start + ROWS_PER_BLOCK))
                           if hasattr(data, "file") else data[start:start + ROWS_PER_BLOCK])
        if not np.issubdtype(block.dtype, np.floating):
            break
        bad = ~np.isfinite(block.reshape(len(block), -1))
        per_row = bad.sum(axis=1)
        rows.append(start + np.flatnonzero(per_row))
        values += int(per_row.sum())
    return (np.concatenate(rows) if rows else np.zeros(0, np.int64)).astype(np.int64), values


def rows_text(rows: np.ndarray, limit: int = 10) -> str:
    """``rows 3, 17, 40 ...`` (the first ``limit``)."""
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    return f"rows {shown}{' ...' if len(rows) > limit else ''}"
