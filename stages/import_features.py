"""DVC stage `import@<name>` (dvc.yaml): a published feature file -> the feature store.

Reads params `published` (root, dtype, files.<name>) and `paths`; writes
${paths.features}/<name>.h5 from ${published.root}/<file>, its rows checked against the
prepared labels (Annotations.txt). Decodes and extracts nothing.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli import stage_main
from pipeline.config import load_params
from pipeline.features.published import import_published
from pipeline.features.store import load_features


@stage_main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("name", help="a key of published.files in params.yaml (e.g. published_vgg19)")
    p.add_argument("--params", default="params.yaml")
    args = p.parse_args(argv)
    params = load_params(args.params)
    paths, cfg = params["paths"], params["published"]
    out = import_published(args.name, cfg, paths.prepared, paths.features)
    fs = load_features(out)
    print(f"import[{args.name}]: {Path(cfg.root) / cfg.files[args.name].file} -> {out} "
          f"{fs.data.shape} {fs.data.dtype}, {int((~fs.valid).sum())} invalid rows; "
          f"{fs.meta.get('encoder')}: {fs.meta.get('weights')}")


if __name__ == "__main__":
    main()
