"""From validated params to a trained head (the train stage and the report matrix cells)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from pipeline import layout
from pipeline.config import ConfigError, recorded
from pipeline.runtime import git_revision
from pipeline.training.data import load_dataset
from pipeline.training.loop import RunSpec, TrainResult, run_spec, train


def spec_from_params(params: dict[str, Any], **changes: Any) -> RunSpec:
    """The run of ``params['train']`` / ``params['heads']`` resolved once; ``changes`` replace
    train keys (``head``, ``setting``, ``epochs`` ...) as the report matrix does per cell."""
    return _spec(dataclasses.replace(params["train"], **changes), params["heads"])


def _spec(tc, heads) -> RunSpec:
    return run_spec(tc.head, tc.setting, heads.of(tc.head), tc.recipe_overrides(), tc.seed,
                    device=tc.device, resume=tc.resume, feature_norm=tc.feature_norm,
                    select=tc.select)


def train_from_params(params: dict[str, Any], out_dir: str | Path, live_dir: str | Path | None,
                      resume_dir: str | Path | None = None, **changes: Any) -> TrainResult:
    """Print the configuration and git revision, load the data once, train, return the result.

    ``resume_dir``: where the resume point lives (the stage: ``<paths.resume>/train``; default
    ``out_dir``). The params snapshot in the checkpoints holds what training reads (``paths``,
    ``train`` without its runtime knobs, ``heads.<head>``) and ``data.min_duration`` (prepare's
    rule, which ``localize`` applies; it changes the prepared folder, a dep of train), so no
    other key changes its bytes."""
    tc = dataclasses.replace(params["train"], **changes)
    spec = _spec(tc, params["heads"])
    paths = params["paths"]
    snapshot = {"paths": recorded("paths", paths), "train": recorded("train", tc),
                "heads": {tc.head: params["heads"].of(tc.head)},
                "data": {"min_duration": params["data"].min_duration}}
    print(f"git revision: {git_revision()}")
    print("configuration:\n" + json.dumps({k: snapshot[k] for k in ("paths", "train")}, indent=2)
          + f"\nheads.{tc.head}: {snapshot['heads'].get(tc.head, {})}")
    data = load_dataset(paths.prepared, paths.features, tc.visual, tc.audio, setting=tc.setting,
                        background_only=tc.background_only)
    return train(spec, data, out_dir, live_dir=live_dir, params_snapshot=snapshot,
                 resume_dir=resume_dir)


def feature_names(params: dict[str, Any]) -> list[str]:
    """Names ``train.visual`` / ``train.audio`` may take: a stage of dvc.yaml writes each one
    (``extract.models``, the tuned encoders, ``published.files``)."""
    ext, ft, pub = params["extract"], params["finetune"], params["published"]
    return [*ext.models, layout.tuned_name(ft.visual), layout.tuned_name(ft.audio), *pub.files]


def check_feature_names(params: dict[str, Any]) -> None:
    """``train.visual`` / ``train.audio`` name a feature file some stage writes, or one on disk."""
    names, features = feature_names(params), Path(params["paths"].features)
    for key in ("visual", "audio"):
        name = getattr(params["train"], key)
        if name not in names and not layout.feature_file(features, name).is_file():
            raise ConfigError(f"train.{key}: no stage writes {name!r} and {layout.feature_file(features, name)} "
                              f"does not exist; names: {', '.join(names)}")


def resolved_run(params: dict[str, Any]) -> dict[str, Any]:
    """What the train stage depends on: ``train`` without its runtime knobs and
    ``heads.<train.head>`` (so tuning another head leaves these bytes, and train, unchanged)."""
    tc = params["train"]
    return {"train": recorded("train", tc), "heads": {tc.head: params["heads"].of(tc.head)}}

