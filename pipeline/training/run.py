"""From validated params to a trained head (the train stage and the report matrix cells)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from pipeline.config import to_dict
from pipeline.data.ave import ORDER_FILE, ORDER_MATCH_FILE
from pipeline.training.data import (SPLITS, VIDEO_LABELS, background_only_paths, feature_path,
                                    load_dataset)
from pipeline.training.loop import RunSpec, TrainResult, git_revision, train


def spec_from_params(params: dict[str, Any], **changes: Any) -> RunSpec:
    """RunSpec of ``params['train']`` / ``params['heads']``; ``changes`` replace train keys
    (``head``, ``setting``, ``epochs`` ...) as the report matrix does per cell."""
    tc = dataclasses.replace(params["train"], **changes) if changes else params["train"]
    return RunSpec(head=tc.head, setting=tc.setting, hparam_overrides=params["heads"].of(tc.head),
                   recipe_overrides=tc.recipe_overrides(), seed=tc.seed, device=tc.device,
                   resume=tc.resume, feature_norm=tc.feature_norm, select=tc.select)


def data_files(paths, tc) -> tuple[Path, ...]:
    """The files a run reads (their identity is part of the resume fingerprint)."""
    prepared = Path(paths.prepared)
    order = ORDER_MATCH_FILE if tc.setting == "cml" else ORDER_FILE
    files = [prepared / "labels.h5", prepared / VIDEO_LABELS,
             *(prepared / order.format(split=s) for s in SPLITS),
             feature_path(paths.features, tc.visual), feature_path(paths.features, tc.audio)]
    if tc.setting == "weak" and tc.background_only:
        files += [p for p in background_only_paths(prepared, paths.features, tc.visual,
                                                   tc.audio).values() if p.is_file()]
    return tuple(files)


def train_from_params(params: dict[str, Any], out_dir: str | Path, live_dir: str | Path | None,
                      **changes: Any) -> TrainResult:
    """Print the configuration and git revision, load the data once, train, return the result."""
    tc = dataclasses.replace(params["train"], **changes) if changes else params["train"]
    spec = spec_from_params(params, **changes)
    paths = params["paths"]
    snapshot = {k: to_dict(v) for k, v in params.items()}
    snapshot["train"] = to_dict(tc)
    print(f"git revision: {git_revision()}")
    print("configuration:\n" + json.dumps({k: snapshot[k] for k in ("paths", "train")}, indent=2)
          + f"\nheads.{tc.head}: {snapshot['heads'].get(tc.head, {})}")
    data = load_dataset(paths.prepared, paths.features, tc.visual, tc.audio, setting=tc.setting,
                        background_only=tc.background_only)
    files = data_files(paths, tc)
    return train(spec, data, out_dir, live_dir=live_dir, params_snapshot=snapshot,
                 data_files=files)
