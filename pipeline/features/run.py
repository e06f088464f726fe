"""The ``extract_visual`` / ``extract_audio`` stage logic (``stages/extract.py`` calls it).

Single process: ``python stages/extract.py vgg19``. Several GPUs / nodes: the same script
under ``torchrun`` (``torchrun --nproc_per_node=8 stages/extract.py vgg19``; multi-node:
``--nnodes``/``--rdzv-endpoint`` and a shared filesystem for ``paths.features``): each rank
takes every ``world_size``-th shard on ``cuda:LOCAL_RANK`` (nccl) or the CPU (gloo), rank 0
merges. The output is the same file as a single-process run.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Optional

from pipeline.config import DEFAULT_PARAMS, load_params, to_dict


def dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the torchrun environment (1 process without it)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (rev or "unknown") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_stage(name: str, params_path: str | Path = DEFAULT_PARAMS, *, progress: bool = True,
              overrides: Optional[dict] = None):
    """Extract model ``name`` (a key of ``extract.models``) for the prepared manifest into
    ``<paths.features>/<name>.h5``; returns the :class:`~pipeline.features.engine.ExtractResult`."""
    params = load_params(params_path, overrides)
    cfg, paths = params["extract"], params["paths"]
    if name not in cfg.models:
        raise KeyError(f"unknown model {name!r}; extract.models has: {', '.join(cfg.models)}")
    rank, world, local_rank = dist_env()
    log = print if rank == 0 else (lambda msg: None)

    import torch.distributed as dist

    from pipeline.data.prepare import load_manifest
    from pipeline.features.engine import DIST_TIMEOUT_S, extract
    from pipeline.runtime import init_distributed, select_device

    device = select_device(cfg.device, "extract.device", local_rank, log=log)
    init_distributed(device.type, timeout_s=DIST_TIMEOUT_S)
    spec = cfg.models[name]
    log(f"extract[{name}]: git {git_revision()}; spec {to_dict(spec)}; "
        f"config { {k: v for k, v in to_dict(cfg).items() if k != 'models'} }")
    rows = load_manifest(paths.prepared)
    try:
        return extract(name, spec, rows, Path(paths.features) / f"{name}.h5", cfg, device=device,
                       rank=rank, world_size=world, progress=progress, log=log)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()
