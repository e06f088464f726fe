"""DVC stage ``finetune``: CACE contrastive fine-tuning of the visual and audio encoders.

    python stages/finetune.py     # finetune.nproc processes: one in-process, more through torchrun
    torchrun --standalone --nproc_per_node=4 stages/finetune.py      # the same, started by hand

Reads ``finetune`` and ``paths``; writes the tuned encoders to ``<paths.finetune>/<encoder>.pth``
(the native format of the weights resolver, read by stage ``extract_finetuned@<role>``),
``<paths.finetune>/finetune.json`` and DVCLive metrics in ``<paths.reports>/finetune/``
(``retrieval_top1_before`` / ``retrieval_top1_after``). Per-epoch resume points live in
``<paths.resume>/finetune/<fingerprint>/`` (git-ignored; a rerun continues a matching one).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root, for `python stages/...`

from pipeline.cli import stage_main, stage_parser  # noqa: E402
from pipeline.config import ConfigError, load_params  # noqa: E402


@stage_main
def main(argv: list[str] | None = None) -> None:
    p = stage_parser(__doc__)
    args = p.parse_args(argv)
    params = load_params(args.params, sections=("paths", "data", "finetune"))
    if params["data"].source == "features":  # checked here: a rank's error is torchrun's traceback
        raise ConfigError("data.source: 'features' has no videos to fine-tune on; the published "
                          "route runs `dvc exp run evaluate` (docs/published-features.md)")
    nproc = params["finetune"].nproc
    if nproc > 1 and "LOCAL_RANK" not in os.environ:  # params checked: now one process per rank
        os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                  f"--nproc_per_node={nproc}", __file__, *argv])
    from pipeline.finetune.run import run  # here: decode workers re-import this script, not torch
    run(params)


if __name__ == "__main__":
    main()
