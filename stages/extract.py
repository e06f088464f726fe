"""DVC stages ``extract@<model>`` (one per ``extract.models`` entry), ``extract_finetuned@<role>``.

    python stages/extract.py vgg19                          # one process (CPU or one GPU)
    torchrun --nproc_per_node=8 stages/extract.py resnet50  # shards videos over 8 GPUs
    python stages/extract.py --finetuned visual             # the CACE-tuned <finetune.visual>

Reads ``extract.common``, ``extract.<kind>``, the model's entry (``--finetuned``: the
``finetune`` section's encoder) and ``paths``; writes
``<paths.features>/<model>.h5``. Resumes an interrupted run from its committed shards.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root, for `python stages/...`

from pipeline.cli import stage_main, stage_parser  # noqa: E402


@stage_main
def main(argv: list[str] | None = None) -> None:
    p = stage_parser(__doc__)
    p.add_argument("model", nargs="?", help="a key of extract.models in params.yaml (e.g. vgg19, vggish)")
    p.add_argument("--finetuned", choices=("visual", "audio"),
                   help="instead of a model: the finetune stage's tuned encoder -> <encoder>_ft.h5")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    args = p.parse_args(argv)
    if (args.model is None) == (args.finetuned is None):
        p.error("give a model name or --finetuned visual|audio (one of them)")
    from pipeline.features.run import run_stage  # here: decode workers re-import this script, not torch
    run_stage(args.model, args.params, progress=not args.no_progress, finetuned=args.finetuned)


if __name__ == "__main__":
    main()
