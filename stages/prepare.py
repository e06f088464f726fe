"""DVC stage `prepare`: AVE-format root (params `data.root`) -> params `paths.prepared`.

Reads params.yaml `data` (root, min_duration, probe_timeout_s, workers) and `paths.prepared`.
Writes manifest.csv, labels.h5, mil_labels.h5, {train,val,test}_order.h5 (and *_order_match.h5
for the cml split), categories.json and
report.md (every problem and what was done about it); bad videos never stop the run.
"""
from __future__ import annotations

from pathlib import Path

from pipeline import layout
from pipeline.cli import stage_main, stage_parser
from pipeline.config import load_params, to_dict
from pipeline.data.prepare import prepare


@stage_main
def main(argv: list[str] | None = None) -> None:
    p = stage_parser(__doc__)
    args = p.parse_args(argv)
    params = load_params(args.params, sections=("paths", "data"))
    cfg, out = params["data"], params["paths"].prepared
    print(f"prepare: {to_dict(cfg)} -> {out}")
    result = prepare(cfg.root, out, min_duration=cfg.min_duration, workers=cfg.workers,
                     timeout_s=cfg.probe_timeout_s, progress=True, source=cfg.source)
    print(result.summary())
    print(f"prepare: report at {Path(out) / layout.REPORT_FILE}")


if __name__ == "__main__":
    main()
