"""The work of stages ``extract@<model>`` and ``extract_finetuned@<role>`` (``stages/extract.py``).

Single process: ``python stages/extract.py vgg19``. Several GPUs / nodes: the same script
under ``torchrun`` (``torchrun --nproc_per_node=8 stages/extract.py vgg19``; multi-node:
``--nnodes``/``--rdzv-endpoint`` and a shared filesystem for ``paths.features``): each rank
takes every ``world_size``-th shard on ``cuda:LOCAL_RANK`` (nccl) or the CPU (gloo), rank 0
merges. The output is the same file as a single-process run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import h5py
import numpy as np
import torch.distributed as dist

from pipeline.files import check_writable
from pipeline import layout
from pipeline.config import DEFAULT_PARAMS, ConfigError, load_params, recorded, to_dict
from pipeline.data.manifest import load_manifest
from pipeline.encoders.spec import ModelSpec, weights_inside
from pipeline.features.engine import DIST_TIMEOUT_S, extract
from pipeline.features.store import DATASET, read_meta, write_features
from pipeline.runtime import dist_env, git_revision, init_distributed, select_device


def extract_background_only(name, spec, cfg, paths, device, rank, world, progress, log) -> None:
    """The background-only training videos of the weak setting (``background_manifest.csv``,
    written by prepare when the root lists them) into ``<paths.features>/<name>_noisy.h5``,
    the layout of the reference code's ``*_feature_noisy.h5``. Without such videos the file is
    written with zero rows, so that it is always a stage output (a clean checkout restores it
    from the cache) and training reads the same thing in every copy of the repository."""
    out = layout.feature_file(paths.features, layout.background_only_name(name))
    if (Path(paths.prepared) / layout.BACKGROUND_MANIFEST_FILE).is_file():
        rows = load_manifest(paths.prepared, layout.BACKGROUND_MANIFEST_FILE)
        extract(name, spec, rows, out, cfg, device=device, rank=rank, world_size=world,
                progress=progress, log=log)
        return
    log(f"extract[{name}]: no background-only videos in {paths.prepared}; {out} has zero rows")
    if rank == 0:
        with h5py.File(layout.feature_file(paths.features, name), "r") as f:  # shape and provenance only
            empty, meta = np.zeros((0, *f[DATASET].shape[1:]), f[DATASET].dtype), read_meta(f)
        write_features(out, empty, None, {**meta, "background_only": "none"}, dtype=str(empty.dtype))


def finetuned_model(params: dict, role: str) -> tuple[str, ModelSpec]:
    """Name and spec of the CACE-tuned ``role`` (visual | audio) encoder, derived from the
    ``finetune`` section alone: ``<finetune.<role>>_ft``, weights = the finetune stage's
    ``<paths.finetune>/<encoder>.pth``."""
    if role not in ("visual", "audio"):
        raise ValueError(f"finetuned: {role!r} is not a role; allowed: 'visual', 'audio'")
    encoder = getattr(params["finetune"], role)
    return (layout.tuned_name(encoder),
            ModelSpec(encoder=encoder, weights=str(layout.tuned_weights(params["paths"].finetune, encoder))))


def run_stage(name: Optional[str], params_path: str | Path = DEFAULT_PARAMS, *, progress: bool = True,
              overrides: Optional[dict] = None, finetuned: Optional[str] = None):
    """Extract model ``name`` (a key of ``extract.models``), or with ``finetuned`` (visual |
    audio) the tuned encoder of the finetune stage, for the prepared manifest into
    ``<paths.features>/<name>.h5``; returns the :class:`~pipeline.features.engine.ExtractResult`."""
    params = load_params(params_path, overrides,
                         sections=("paths", "extract") + (("finetune",) if finetuned else ()))
    cfg, paths = params["extract"], params["paths"]
    if finetuned is not None:
        name, spec = finetuned_model(params, finetuned)
    elif name not in cfg.models:
        raise ConfigError(f"{params_path}: extract.models has no model {name!r}; it has: "
                          f"{', '.join(cfg.models)}")
    else:
        spec = cfg.models[name]
    check_writable(paths.features)
    weights_inside(spec.weights, f"extract.models.{name}.weights" if finetuned is None
                   else f"finetune ({finetuned})", Path(params_path).resolve().parent)
    env = dist_env()
    log = print if env.main else (lambda msg: None)
    device = select_device(cfg.device, "extract.common.device", env.local_rank, log=log)
    # Ranks wait for each other at the merge barrier: the timeout covers a whole extraction.
    init_distributed(device.type, env, timeout_s=DIST_TIMEOUT_S)
    log(f"extract[{name}]: git {git_revision()}; spec {to_dict(spec)}; "
        f"config { {k: v for k, v in recorded('extract', cfg).items() if k != 'models'} }")
    rows = load_manifest(paths.prepared)
    try:
        result = extract(name, spec, rows, layout.feature_file(paths.features, name), cfg,
                         device=device, rank=env.rank, world_size=env.world, progress=progress, log=log)
        extract_background_only(name, spec, cfg, paths, device, env.rank, env.world, progress, log)
        return result
    finally:
        if env.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
