"""DVC stage `evaluate`: test-split metrics and plots of ${paths.models}/best.pt.

Reads params `paths`, `train` (feature names, device), `evaluate`; writes DVCLive metrics and
plots to ${paths.reports}/evaluate (metrics.json, plots/sklearn/confusion_matrix.json, images).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import load_params  # noqa: E402
from pipeline.evaluation.evaluate import evaluate  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--params", default="params.yaml")
    args = p.parse_args()
    params = load_params(args.params)
    paths, tc, ec = params["paths"], params["train"], params["evaluate"]
    evaluate(Path(paths.models) / "best.pt", paths.prepared, paths.features, tc.visual, tc.audio,
             Path(paths.reports) / "evaluate", split=ec.split, batch_size=ec.batch_size,
             timelines=ec.timelines, device=tc.device)


if __name__ == "__main__":
    main()
