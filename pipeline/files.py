"""Every file a user hands us is opened here: checkpoints, weights files, HDF5 feature and label
files, and the text files (annotations, splits, params).

Containment. A file named by data or params is opened only inside its root, symlinks resolved
(:func:`contained`): ``error: <root>/Annotations.txt: the AVE text file resolves to /etc/passwd,
outside <root>; not read``. Output folders are checked writable before long work
(:func:`check_writable`).

Text. :func:`read_text_lines` reads bytes and decodes them under one policy: a UTF-8 or UTF-16
BOM is honoured (UTF-8 otherwise); a line that does not decode, or holds control characters, is
a ``file:line`` warning and left out; a file that is mostly not text, larger than
:data:`MAX_TEXT_BYTES` or with a line longer than :data:`MAX_LINE_BYTES` is refused in one line.

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
import errno
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np

from pipeline.errors import InputError

ROWS_PER_BLOCK = 256  # rows checked at a time for non-finite values (bounded memory)
# Text files a user hands us. AVE's largest (Annotations.txt) is 144 KB with lines under 60
# bytes; a params.yaml is a few KB. Far beyond that is not an AVE file: refused before anything
# is parsed or written.
MAX_TEXT_BYTES = 8 * 2**20  # 8 MB
MAX_LINE_BYTES = 4096
BINARY_SHARE = 0.5  # more than this share of lines undecodable / control characters: not text
# OS errors that are the machine's state, not our bug: one line naming the path, exit 2
USER_OS_ERRORS = frozenset({errno.EROFS, errno.ENOSPC, errno.EACCES, errno.EPERM,
                            getattr(errno, "EDQUOT", errno.ENOSPC)})


class OutsideRootError(InputError):
    """A file resolves (symlinks followed) outside the folder it must lie in."""


# ------------------------------------------------------------------------------------------
# Containment and writable folders
# ------------------------------------------------------------------------------------------
def contained(path: str | os.PathLike, root: str | os.PathLike, what: str = "file") -> Path:
    """``path`` with symlinks resolved; :class:`OutsideRootError` (an :class:`InputError`)
    unless it lies inside ``root`` (itself resolved: a root that is a symlink to another disk
    is fine): ``<path>: the <what> resolves to <real>, outside <root>; not read``."""
    real, base = Path(path).resolve(), Path(root).resolve()
    if real != base and base not in real.parents:
        raise OutsideRootError(f"{path}: the {what} resolves to {real}, outside {root}; not read")
    return real


def check_writable(*folders: str | os.PathLike) -> None:
    """Each folder (or, when it does not exist yet, the nearest folder above it, where it will
    be created) accepts a new file, checked before a stage's long work and without creating
    anything that stays; else an :class:`InputError` naming the folder and the reason."""
    import tempfile

    for folder in folders:
        folder = Path(folder)
        probe_dir = folder
        while not probe_dir.exists() and probe_dir != probe_dir.parent:
            probe_dir = probe_dir.parent
        if not probe_dir.is_dir():
            raise InputError(f"{folder}: output folder cannot be made: {probe_dir} is not a folder")
        try:
            with tempfile.NamedTemporaryFile(dir=probe_dir, prefix=".write-check-") as f:
                f.write(b"0")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise InputError(f"{folder}: output folder not writable "
                             f"({e.strerror or type(e).__name__}); nothing was written") from None


_ERRNO_IN_TEXT = re.compile(r"errno = (\d+)")  # h5py: "... errno = 28, error message = ..."
_NAME_IN_TEXT = re.compile(r"name = '([^']*)'")
# what writers that keep no errno say (h5py, torch's zip writer: PytorchStreamWriter /
# inline_container "unexpected pos" when a write came up short)
_WRITE_FAILED = ("file write failed", "No space left", "Read-only file system", "Disk quota",
                 "PytorchStreamWriter", "inline_container", "write failed")


def user_os_errno(err: BaseException) -> Optional[int]:
    """The errno of ``err`` when it is one of :data:`USER_OS_ERRORS` (read from the message
    where a library (h5py, torch) kept only the text), else ``None``."""
    code = getattr(err, "errno", None)
    if code is None:
        found = _ERRNO_IN_TEXT.search(str(err))
        code = int(found.group(1)) if found else None
    return code if code in USER_OS_ERRORS else None


def os_error_text(err: BaseException) -> Optional[str]:
    """One line for an OS error that is the machine's state (read-only, full disk, no
    permission, quota), naming the path; ``None`` for any other error."""
    code = user_os_errno(err)
    if code is None:
        return None
    path = getattr(err, "filename", None)
    if path is None:
        found = _NAME_IN_TEXT.search(str(err))
        path = found.group(1) if found else "(a file the system did not name)"
    hint = {errno.ENOSPC: "free space and rerun: the run resumes where it stopped",
            errno.EROFS: "the file system is read-only; point the output elsewhere",
            getattr(errno, "EDQUOT", errno.ENOSPC): "free space within the quota and rerun",
            }.get(code, "check the permissions and rerun")
    return f"{path}: {os.strerror(code)}; {hint}"


def write_error(err: BaseException, path: str | os.PathLike) -> Optional[OSError]:
    """An ``OSError`` naming ``path`` for a failed write of ``path`` that the machine caused
    (full disk, read-only, quota), also where the writer (torch's zip writer) kept no errno:
    then the folder's free space decides; ``None`` when ``err`` is something else."""
    code = user_os_errno(err)
    if code is None and isinstance(err, (OSError, RuntimeError)) and \
            any(s in str(err) for s in _WRITE_FAILED):
        folder = Path(path).parent
        try:
            st = os.statvfs(folder)
            code = (errno.EROFS if st.f_flag & os.ST_RDONLY else
                    errno.ENOSPC if st.f_bavail * st.f_frsize < 2**20 else None)
        except OSError:
            code = None
        if code is None and not os.access(folder, os.W_OK):
            code = errno.EACCES
    if code is None:
        return None
    return OSError(code, os.strerror(code), str(path))


# ------------------------------------------------------------------------------------------
# Text files
# ------------------------------------------------------------------------------------------
_BOMS = ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _size_bound(path: Path, data_len: int, limit: int) -> None:
    if data_len > limit:
        raise InputError(f"{path}: {data_len:,} bytes, more than the {limit:,} a text file of "
                         "this kind can have; not read")


def read_text_bytes(path: str | os.PathLike, limit: int = MAX_TEXT_BYTES) -> bytes:
    """The bytes of ``path``, refused when it is larger than ``limit`` (before reading it)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    _size_bound(path, path.stat().st_size, limit)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except PermissionError as e:
        raise InputError(f"{path}: not readable: {e.strerror}") from None
    _size_bound(path, len(data), limit)
    return data


def decode_lines(data: bytes, path: str | os.PathLike, *, max_line: int = MAX_LINE_BYTES
                 ) -> tuple[list[tuple[int, Optional[str]]], list[str]]:
    """``([(1-based line number, text without its line end)], [warnings])`` of ``data`` under
    the module's text policy (see the module doc). A line that does not decode has text
    ``None`` (its caller leaves it out; it keeps its number) and a ``file:line`` warning.
    :class:`InputError` naming ``path`` for a file that is mostly not text (undecodable lines
    and lines with control characters) or has a line longer than ``max_line`` bytes."""
    encoding = "UTF-8"
    for bom, enc in _BOMS:
        if data.startswith(bom):
            data = data[len(bom):]
            if enc != "utf-8":
                if len(data) % 2:
                    raise InputError(f"{path}: not text: a UTF-16 file (BOM) of an odd number "
                                     "of bytes; not read")
                # UTF-16 -> UTF-8 bytes, an undecodable unit as a lone surrogate (caught below)
                data = _utf16_to_utf8(data, enc)
                encoding = "UTF-16"
            break
    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    lines: list[tuple[int, Optional[str]]] = []
    warnings_, bad = [], 0
    for n, raw in enumerate(raw_lines, start=1):
        raw = raw[:-1] if raw.endswith(b"\r") else raw
        if len(raw) > max_line:
            raise InputError(f"{path}:{n}: a line of {len(raw):,} bytes, more than {max_line:,}; "
                             "not a text file of this kind; not read")
        try:
            text: Optional[str] = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            bad += 1
            warnings_.append(f"{path}:{n}: not {encoding} text (byte 0x{raw[e.start]:02x} at "
                             f"column {e.start + 1}); line left out")
            lines.append((n, None))
            continue
        if _CONTROL.search(text):
            bad += 1  # kept (its parser says what is wrong), but counted as not text
        lines.append((n, text))
    if bad and bad > BINARY_SHARE * len(raw_lines):
        raise InputError(f"{path}: not a text file ({bad} of {len(raw_lines)} lines are not "
                         f"{encoding} text); not read")
    return lines, warnings_


def _utf16_to_utf8(data: bytes, encoding: str) -> bytes:
    """UTF-16 ``data`` as UTF-8 bytes; a unit that does not decode becomes a byte that is not
    UTF-8 (0xff), so that its line is reported like any other undecodable line."""
    text = data.decode(encoding, errors="replace")
    return text.encode("utf-8").replace("\ufffd".encode("utf-8"), b"\xff")


def read_text_lines(path: str | os.PathLike, root: Optional[str | os.PathLike] = None,
                    what: str = "text file", *, limit: int = MAX_TEXT_BYTES
                    ) -> tuple[list[tuple[int, str]], list[str]]:
    """:func:`decode_lines` of the file ``path``, which must lie inside ``root`` when given
    (:func:`contained`)."""
    if root is not None and Path(path).exists():
        contained(path, root, what)
    return decode_lines(read_text_bytes(path, limit), path)



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
