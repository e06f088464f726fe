"""What every stage needs, written once: device choice and its log line, distributed init (with
a timeout), the git revision, atomic writes, seeding, and the clip geometry of AVE.

Every package imports these instead of keeping its own copy.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import random
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

NUM_SEGMENTS = 10  # AVE clips are ten 1-second segments
SEGMENT_SECONDS = 1.0

DIST_TIMEOUT_S = 1800  # collective timeout of torch.distributed (a dead rank fails the run, never hangs it)


# ------------------------------------------------------------------------------------------
# Device
# ------------------------------------------------------------------------------------------
def select_device(requested: str, key: str, local_rank: int = 0,
                  log: Optional[Callable[[str], None]] = print):
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without CUDA is an error naming
    ``key`` (never a silent move to CPU). The choice is logged in one line ``<key>: <device> (...)``."""
    import torch
    log = log or (lambda s: None)
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"{key}: {requested!r} is not a device; allowed: 'auto', 'cpu', 'cuda'")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{key} is 'cuda' but no CUDA device is visible; set {key}: auto or cpu")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        log(f"{key}: cpu ({'requested' if requested == 'cpu' else 'auto: no CUDA device'})")
        return torch.device("cpu")
    dev = torch.device("cuda", local_rank)
    log(f"{key}: {dev} ({torch.cuda.get_device_name(dev)}{', auto' if requested == 'auto' else ''})")
    return dev


# ------------------------------------------------------------------------------------------
# Distributed
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def dist_env() -> DistEnv:
    """Rank, world size and local rank from torchrun's environment (one process without it)."""
    return DistEnv(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed(device_type: str, env: Optional[DistEnv] = None,
                     timeout_s: float = DIST_TIMEOUT_S) -> DistEnv:
    """Join the process group when ``world > 1`` (NCCL on CUDA, gloo on CPU) with a timeout."""
    import torch
    import torch.distributed as dist
    env = env or dist_env()
    if env.world > 1 and not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(env.local_rank)
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", rank=env.rank,
                                world_size=env.world, timeout=datetime.timedelta(seconds=timeout_s))
    return env


# ------------------------------------------------------------------------------------------
# Provenance
# ------------------------------------------------------------------------------------------
def git_revision(cwd: str | Path | None = None) -> str:
    """``<short sha>`` of HEAD, ``+dirty`` when tracked files differ, ``unknown`` outside git."""
    try:
        run = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True, timeout=10,
                                        cwd=cwd).stdout.strip()
        rev = run("rev-parse", "--short", "HEAD")
        if not rev:
            return "unknown"
        return rev + ("+dirty" if run("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


REPO_ROOT = Path(__file__).resolve().parents[1]


def source_digest(*dirs: str, root: str | Path | None = None) -> str:
    """sha256 (hex) over the relative name and bytes of every ``*.py`` under ``dirs`` (relative
    to ``root``, default the repository): the code identity that feature files and resume
    fingerprints record."""
    import hashlib
    base = Path(root) if root else REPO_ROOT
    h = hashlib.sha256()
    for d in dirs:
        for p in sorted((base / d).rglob("*.py")):
            h.update(str(p.relative_to(base)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def file_identity(path: str | Path, full_hash_below: int = 256 << 20) -> str:
    """What identifies an input file's content for a resume fingerprint: its size, mtime and a
    sha256 of the whole file (below ``full_hash_below`` bytes) or of its first and last MiB
    (HDF5 keeps its superblock and attributes there; any rewrite also changes the mtime)."""
    import hashlib
    path = Path(path)
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if st.st_size < full_hash_below:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        else:
            h.update(f.read(1 << 20))
            f.seek(st.st_size - (1 << 20))
            h.update(f.read(1 << 20))
    return f"{path.name}:{st.st_size}:{st.st_mtime_ns}:{h.hexdigest()[:16]}"


# ------------------------------------------------------------------------------------------
# Seeding
# ------------------------------------------------------------------------------------------
def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; ``deterministic`` asks torch for deterministic kernels
    (warning, not failing, where none exists)."""
    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


# ------------------------------------------------------------------------------------------
# State dicts
# ------------------------------------------------------------------------------------------
DATA_PARALLEL = "module."  # nn.DataParallel / DistributedDataParallel prefix every key with it


def without_data_parallel(state_dict: dict) -> dict:
    """``state_dict`` without the ``module.`` that ``nn.DataParallel`` puts before every key
    (the one prefix rule of every checkpoint reader: stripped only when every key has it)."""
    if state_dict and all(str(k).startswith(DATA_PARALLEL) for k in state_dict):
        return {k[len(DATA_PARALLEL):]: v for k, v in state_dict.items()}
    return dict(state_dict)


# ------------------------------------------------------------------------------------------
# Plugins (heads, encoders)
# ------------------------------------------------------------------------------------------
def discover_plugins(package_name: str, package_path, group: str) -> None:
    """Import every public module of a package (a module registers what it defines on import,
    e.g. ``pipeline/heads/<paper>.py``) and load the entry points of ``group`` (heads or
    encoders of other installed packages): a new module is found without editing any
    ``__init__.py``."""
    import importlib
    import pkgutil
    from importlib.metadata import entry_points

    for info in pkgutil.iter_modules(package_path):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package_name}.{info.name}")
    for ep in entry_points(group=group):
        ep.load()


# ------------------------------------------------------------------------------------------
# Atomic writes
# ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one rename,
    on error it is removed. A reader (or a killed run) never sees a half-written file. The
    temporary name is unique per process, so concurrent runs never share one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # the mode an ordinary open() gives, not mkstemp's 0600
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        from pipeline.files import write_error
        named = write_error(e, path) if isinstance(e, Exception) else None
        if named is not None:  # full disk, read-only, quota: one line naming the file
            raise named from e
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, obj: Any, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` of a plain dict of tensors/state_dicts, atomically."""
    import torch
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
