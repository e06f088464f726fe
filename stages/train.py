"""DVC stage `train`: train head ${train.head} in setting ${train.setting} on the prepared split.

Reads params `paths`, `train`, `heads`; writes ${paths.models}/best.pt (best validation
epoch) and ${paths.models}/last.pt (resume point), DVCLive logs in ${paths.reports}/train.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import load_params  # noqa: E402
from pipeline.training.run import train_from_params  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--params", default="params.yaml")
    args = p.parse_args()
    params = load_params(args.params)
    paths = params["paths"]
    train_from_params(params, out_dir=paths.models, live_dir=Path(paths.reports) / "train")


if __name__ == "__main__":
    main()
