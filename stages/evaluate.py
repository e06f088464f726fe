"""DVC stage `evaluate`: test-split metrics and plots of ${paths.models}/best.pt.

Reads params `paths`, `train` (feature names, device), `evaluate`; writes DVCLive metrics
(details) and plots to ${paths.reports}/evaluate (metrics.json, plots/sklearn/confusion_matrix.json,
images), the page index.html, and the headline metrics ${paths.reports}/evaluate.json (accuracy,
event_f1; cml: accuracy = the A2V/V2A average).
"""
from __future__ import annotations

from pathlib import Path

from pipeline import layout
from pipeline.cli import stage_main, stage_parser
from pipeline.config import load_params
from pipeline.files import check_writable
from pipeline.runtime import atomic_write_json
from pipeline.evaluation.evaluate import evaluate


@stage_main
def main(argv: list[str] | None = None) -> None:
    p = stage_parser(__doc__)
    args = p.parse_args(argv)
    params = load_params(args.params, sections=("paths", "train", "evaluate"))
    paths, tc, ec = params["paths"], params["train"], params["evaluate"]
    check_writable(Path(paths.reports) / layout.EVALUATE_DIR)
    res = evaluate(layout.best_checkpoint(paths.models), paths.prepared, paths.features, tc.visual,
                   tc.audio, Path(paths.reports) / layout.EVALUATE_DIR, split=ec.split,
                   batch_size=ec.batch_size, timelines=ec.timelines, device=tc.device)
    headline = {"accuracy": res["accuracy"]}
    if "event" in res:
        headline["event_f1"] = res["event"]["f1"]
    atomic_write_json(Path(paths.reports) / layout.EVALUATE_METRICS, headline, indent=1)


if __name__ == "__main__":
    main()
