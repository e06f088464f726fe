"""DVC stage `resolve`: check the run's params before any stage runs; write the resolved run.

Reads params `train`, `heads`, `report`, the feature names (`extract.models`, `finetune.visual`,
`finetune.audio`, `published.files`); writes ${paths.reports}/run.json: `train` (without its
runtime knobs) and `heads.<train.head>`, the only params `train` depends on. Tuning another
head's overrides re-runs this stage alone: run.json keeps its bytes, so `train` stays cached.
A mistyped head, setting, key or feature name is one line naming the valid values (exit 2), and
no output of another stage is touched. When params.yaml differs from the last commit (a failed
`dvc exp run -S` leaves its values there), the line names the key to set back and its
committed value.
"""
from __future__ import annotations

import json
from pathlib import Path

from pipeline import layout
from pipeline.cli import params_restore_hint, stage_main, stage_parser
from pipeline.config import ConfigError, load_params
from pipeline.files import check_writable
from pipeline.runtime import atomic_write_text
from pipeline.training.run import check_feature_names, resolved_run


@stage_main
def main(argv: list[str] | None = None) -> None:
    p = stage_parser(__doc__)
    args = p.parse_args(argv)
    try:
        params = load_params(args.params)
        check_feature_names(params)
    except ConfigError as e:
        raise ConfigError(f"{e}{params_restore_hint(args.params, str(e))}") from None
    out = Path(params["paths"].reports) / layout.RUN_FILE
    check_writable(out.parent)
    atomic_write_text(out, json.dumps(resolved_run(params), indent=1) + "\n")
    tc = params["train"]
    print(f"resolve: {tc.head} ({tc.setting}) on {tc.visual} + {tc.audio} -> {out}")


if __name__ == "__main__":
    main()
