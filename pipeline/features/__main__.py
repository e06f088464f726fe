"""Command line of the features package.

``python -m pipeline.features export-community --visual vgg19 --audio vggish OUT_DIR`` writes
``<paths.features>/vgg19.h5`` + ``vggish.h5`` and the prepared label/order files in the layout
the AVE papers' code reads (see :mod:`pipeline.features.community`).
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from pipeline import layout
from pipeline.cli import stage_main
from pipeline.config import DEFAULT_PARAMS, ConfigError
from pipeline.features.community import DTYPES, export_community

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a feature name, never a path


def _feature_file(features_dir: Path, name: str, flag: str) -> Path:
    if not _NAME.match(name):
        raise ConfigError(f"{flag}: {name!r} is not a feature name (e.g. vgg19, resnet50_ft)")
    return layout.feature_file(features_dir, name)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.features", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export-community", help="write visual_feature.h5, audio_feature.h5, labels "
                                                "and order files for the authors' code")
    e.add_argument("out_dir", help="folder to write (existing files of other names are kept)")
    e.add_argument("--visual", required=True, help="visual feature name: <features>/<name>.h5")
    e.add_argument("--audio", required=True, help="audio feature name: <features>/<name>.h5")
    e.add_argument("--params", default=DEFAULT_PARAMS, help="params file giving paths.features and "
                                                           "paths.prepared (default: params.yaml)")
    e.add_argument("--features", help="feature folder (default: paths.features of --params)")
    e.add_argument("--prepared", help="prepared folder with labels.h5, *_order.h5 "
                                      "(default: paths.prepared of --params)")
    e.add_argument("--dtype", default="float64", choices=DTYPES,
                   help="feature dtype (default float64, as published; CMBS and CACE-Net need it)")
    e.add_argument("--drop-invalid", action="store_true",
                   help="leave rows without features out of the order files")
    e.add_argument("--empty-background-only", action="store_true",
                   help="write zero-row *_noisy.h5 files so that the weak scripts run on AVE alone")
    return p


def _folders(args: argparse.Namespace) -> tuple[Path, Path]:
    if args.features and args.prepared:
        return Path(args.features), Path(args.prepared)
    from pipeline.config import load_params

    paths = load_params(args.params)["paths"]
    return Path(args.features or paths.features), Path(args.prepared or paths.prepared)


@stage_main
def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    features, prepared = _folders(args)
    res = export_community(_feature_file(features, args.visual, "--visual"),
                           _feature_file(features, args.audio, "--audio"), prepared, args.out_dir,
                           dtype=args.dtype, drop_invalid=args.drop_invalid,
                           empty_background_only=args.empty_background_only)
    print(f"wrote {len(res.files)} files to {res.out_dir}: visual {res.visual_shape}, "
          f"audio {res.audio_shape}, {res.dtype}; {len(res.invalid)} invalid rows "
          f"({res.out_dir / layout.INVALID_ROWS_FILE}); see {res.out_dir / layout.EXPORT_README}")


if __name__ == "__main__":
    main()
