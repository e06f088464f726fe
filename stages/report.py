"""DVC stages `cell@<head>-<setting>-<seed>` and `report`: the results table over heads x
settings x seeds (pipeline.evaluation.matrix).

`cell --head H --setting S --seed N`: train H in S with seed N (None: the head's authors' seed),
evaluate its val- and test-selected checkpoints, write ${paths.reports}/matrix/H-S-seedN/.
`table`: pool the seeds of each of ${report.heads} x ${report.settings} into
${paths.reports}/results.json, results.md and results.html.
"""
from __future__ import annotations

from pipeline import settings
from pipeline.cli import stage_main, stage_parser
from pipeline.config import load_params
from pipeline.files import check_writable
from pipeline.evaluation.matrix import cell, table


def _seed(text: str) -> int | None:
    return None if text in ("None", "null") else int(text)


@stage_main
def main(argv: list[str] | None = None) -> None:
    p = stage_parser(__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cell")
    c.add_argument("--head", required=True)
    c.add_argument("--setting", required=True, choices=settings.names())
    c.add_argument("--seed", type=_seed, default=None,
                   help="an integer, or None (as DVC writes an empty report.seeds entry): the "
                        "head's authors' seed")
    sub.add_parser("table")
    args = p.parse_args(argv)
    if args.cmd == "cell":
        params = load_params(args.params, sections=("paths", "data", "train", "heads", "evaluate",
                                                    "report"))
        check_writable(params["paths"].reports)
        cell(params, args.head, args.setting, args.seed)
    else:
        params = load_params(args.params, sections=("paths", "report"))
        check_writable(params["paths"].reports)
        table(params)


if __name__ == "__main__":
    main()
