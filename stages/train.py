"""DVC stage `train`: train head ${train.head} in setting ${train.setting} on the prepared split.

Reads params `paths`, `train`, `heads.${train.head}` (DVC tracks them through
${paths.reports}/run.json, written by stage `resolve`); writes ${paths.models}/best.pt (best
validation epoch), DVCLive logs in ${paths.reports}/train (details) and the headline metrics
${paths.reports}/train.json (val_accuracy, best_epoch counted from 1, epochs, train_seconds);
keeps its resume point in ${paths.resume}/train/last.pt (git-ignored, continued only when its
fingerprint matches).
"""
from __future__ import annotations

from pathlib import Path

from pipeline import layout
from pipeline.cli import stage_main, stage_parser
from pipeline.config import load_params
from pipeline.files import check_writable
from pipeline.runtime import atomic_write_json
from pipeline.training.run import train_from_params


@stage_main
def main(argv: list[str] | None = None) -> None:
    p = stage_parser(__doc__)
    args = p.parse_args(argv)
    params = load_params(args.params, sections=("paths", "data", "train", "heads"))
    paths = params["paths"]
    check_writable(paths.models, Path(paths.reports) / layout.TRAIN_DIR,
                   Path(paths.resume) / layout.TRAIN_RESUME_DIR)
    res = train_from_params(params, out_dir=paths.models,
                            live_dir=Path(paths.reports) / layout.TRAIN_DIR,
                            resume_dir=Path(paths.resume) / layout.TRAIN_RESUME_DIR)
    atomic_write_json(Path(paths.reports) / layout.TRAIN_METRICS,
                      {"val_accuracy": res.best_val_accuracy, "best_epoch": res.best_epoch + 1,
                       "epochs": res.epochs, "train_seconds": round(res.train_seconds, 1)},
                      indent=1)


if __name__ == "__main__":
    main()
