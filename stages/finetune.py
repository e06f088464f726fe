"""DVC stage ``finetune``: CACE contrastive fine-tuning of the visual and audio encoders.

    python stages/finetune.py                                        # one process (CPU or one GPU)
    torchrun --standalone --nproc_per_node=4 stages/finetune.py      # DDP over 4 GPUs (finetune.nproc)

Reads ``finetune`` and ``paths``; writes the tuned encoders to ``<paths.finetune>/<encoder>.pth``
(the native format of the weights resolver, read by stage ``extract_finetuned_*``),
``<paths.finetune>/finetune.json`` and DVCLive metrics in ``<paths.reports>/finetune/``
(``retrieval_top1_before`` / ``retrieval_top1_after``). Per-epoch resume points live in
``<paths.resume>/finetune/<fingerprint>/`` (git-ignored; a rerun continues a matching one).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root, for `python stages/...`

from pipeline.cli import stage_main, stage_parser  # noqa: E402
from pipeline.config import load_params  # noqa: E402


@stage_main
def main(argv: list[str] | None = None) -> None:
    p = stage_parser(__doc__)
    args = p.parse_args(argv)
    from pipeline.finetune.run import run  # here: decode workers re-import this script, not torch
    run(load_params(args.params))


if __name__ == "__main__":
    main()
