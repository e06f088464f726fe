"""DVC stage `resolve`: check the run's params before any stage runs; write the resolved run.

Reads params `train`, `heads`, `report`, the feature names (`extract.models`, `finetune.visual`,
`finetune.audio`, `published.files`); writes ${paths.reports}/run.json: `train` (without its
runtime knobs) and `heads.<train.head>`, the only params `train` depends on. Tuning another
head's overrides re-runs this stage alone: run.json keeps its bytes, so `train` stays cached.
A mistyped head, setting, key or feature name is one line naming the valid values (exit 2), and
no output of another stage is touched. When params.yaml differs from the last commit (a failed
`dvc exp run -S` leaves its values there), the line gives the command that restores it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

from pipeline.cli import stage_main
from pipeline.config import ConfigError, load_params, recorded
from pipeline.runtime import atomic_write_text


def feature_names(params) -> list[str]:
    """Names `train.visual` / `train.audio` may take: a stage of dvc.yaml writes each one."""
    ext, ft, pub = params["extract"], params["finetune"], params["published"]
    return [*ext.models, f"{ft.visual}_ft", f"{ft.audio}_ft", *pub.files]


def check_features(params) -> None:
    """`train.visual` / `train.audio` name a feature file some stage writes, or one on disk."""
    names, features = feature_names(params), Path(params["paths"].features)
    for key in ("visual", "audio"):
        name = getattr(params["train"], key)
        if name not in names and not (features / f"{name}.h5").is_file():
            raise ConfigError(f"train.{key}: no stage writes {name!r} and {features}/{name}.h5 "
                              f"does not exist; names: {', '.join(names)}")


def resolved_run(params) -> dict:
    tc = params["train"]
    return {"train": recorded("train", tc), "heads": {tc.head: params["heads"].of(tc.head)}}


def restore_hint(path: str) -> str:
    """'; ...' when ``path`` differs from the last commit (an experiment's baseline): the command
    that restores it. Compares bytes: git's index may not have seen DVC's rewrite."""
    rev = os.environ.get("DVC_EXP_BASELINE_REV") or "HEAD"
    try:
        proc = subprocess.run(["git", "show", f"{rev}:./{path}"], capture_output=True, timeout=30)
        current = Path(path).read_bytes()
    except (OSError, subprocess.SubprocessError):
        return ""
    if proc.returncode != 0 or proc.stdout == current:
        return ""
    # `git status` may not show it: after a failed `dvc exp run`, git's index can hold the new
    # file's size and time with the old content, and `git checkout` then skips the file.
    return (f"; {path} keeps these values (`git status` may not show it); "
            f"`git show HEAD:{path} > {path}` restores the last commit's")


@stage_main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--params", default="params.yaml")
    args = p.parse_args(argv)
    try:
        params = load_params(args.params)
        check_features(params)
    except ConfigError as e:
        raise ConfigError(f"{e}{restore_hint(args.params)}") from None
    out = Path(params["paths"].reports) / "run.json"
    atomic_write_text(out, json.dumps(resolved_run(params), indent=1) + "\n")
    tc = params["train"]
    print(f"resolve: {tc.head} ({tc.setting}) on {tc.visual} + {tc.audio} -> {out}")


if __name__ == "__main__":
    main()
