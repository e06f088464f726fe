"""DVC stage `import@<name>` (dvc.yaml): a published feature file -> the feature store.

Reads params `published` (dtype, files.<name>), `data.root` and `paths`; writes
${paths.features}/<name>.h5 from ${data.root}/<file>, its rows checked against the prepared
labels (Annotations.txt). `--background-only` (stage `import_background_only@<name>`):
${paths.features}/<name>_noisy.h5 from ${data.root}/<file stem>_noisy.h5, zero rows when
absent. Decodes and extracts nothing.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.cli import stage_main, stage_parser
from pipeline.config import load_params
from pipeline.files import check_writable
from pipeline.features.published import import_background_only, import_published
from pipeline.features.store import load_features


@stage_main
def main(argv: list[str] | None = None) -> None:
    p = stage_parser(__doc__)
    p.add_argument("name", help="a key of published.files in params.yaml (e.g. published_vgg19)")
    p.add_argument("--background-only", action="store_true",
                   help="the entry's background-only videos (<file>_noisy.h5; zero rows when absent)")
    args = p.parse_args(argv)
    params = load_params(args.params, sections=("paths", "data", "published"))
    paths, cfg, root = params["paths"], params["published"], params["data"].root
    check_writable(paths.features)
    if args.background_only:
        out, done = import_background_only(args.name, cfg, paths.prepared, paths.features, root)
        print(f"import_background_only[{args.name}]: {done}")
        return
    out = import_published(args.name, cfg, paths.prepared, paths.features, root)
    fs = load_features(out)
    print(f"import[{args.name}]: {Path(root) / cfg.files[args.name].file} -> {out} "
          f"{fs.data.shape} {fs.data.dtype}, {int((~fs.valid).sum())} invalid rows; "
          f"{fs.meta.get('encoder')}: {fs.meta.get('weights')}")


if __name__ == "__main__":
    main()
