"""Results table over heads x settings (dvc.yaml stages `cell@<head>-<setting>` and `report`).

`cell --head H --setting S`: train H in S with ${report.epochs} epochs (null = paper default)
into ${paths.models}/matrix/H-S, evaluate both its val-selected and its test-selected checkpoint
(best_val.pt, best_test.pt: the released script's protocol) on test, write
${paths.reports}/matrix/H-S/row.json;
a setting the head does not define (e.g. cml for all but m2n) trains nothing and gives a row
noting 'not defined by the paper'.
`table`: gather the rows of ${report.heads} x ${report.settings} into
${paths.reports}/results.json and results.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import typing
from pathlib import Path

from pipeline.cli import stage_main
from pipeline.config import load_params
from pipeline.data.ids import output_file
from pipeline.evaluation import report
from pipeline.evaluation.evaluate import evaluate
from pipeline.heads import get_head_class
from pipeline.heads._registry import TRAIN_KEYS
from pipeline.runtime import atomic_write_json, atomic_write_text
from pipeline.training.config import Setting, check_head
from pipeline.training.run import train_from_params
from pipeline.training.selection import PROTOCOLS, schedule


EMPTY_TABLE = """# AVE localization results

No cell: `report.heads` (or `report.settings`) is empty in params.yaml, as in the default run.
Give it heads to fill this table, e.g. `dvc exp run -S 'report.heads=[psp,cmbs]'`.
"""


def cell_dir(root: str | Path, head: str, setting: str) -> Path:
    """``<root>/matrix/<head>-<setting>``; the name is sanitised and stays inside the folder."""
    return output_file(Path(root) / "matrix", f"{head}-{setting}")


def cell(params, head: str, setting: str) -> None:
    paths, tc, rc, ec = params["paths"], params["train"], params["report"], params["evaluate"]
    check_head(head, "--head")
    out = cell_dir(paths.reports, head, setting)
    models = cell_dir(paths.models, head, setting)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    models.mkdir(parents=True, exist_ok=True)  # a DVC out even when the cell has no model
    if setting not in get_head_class(head).settings:
        row = report.cell_row(head, setting, tc.visual, tc.audio, None, report.NOT_DEFINED)
    else:
        # Every cell runs its paper's recipe; only the epochs follow report.epochs.
        changes = {**{k: None for k in TRAIN_KEYS}, "head": head, "setting": setting,
                   "epochs": rc.epochs}
        resume = cell_dir(paths.resume, head, setting)  # <paths.resume>/matrix/<head>-<setting>
        train_from_params(params, out_dir=models, live_dir=out / "train", resume_dir=resume,
                          **changes)
        res = {protocol: evaluate(models / f"best_{protocol}.pt", paths.prepared,
                                  paths.features, tc.visual, tc.audio,
                                  out / f"evaluate_{protocol}", split=ec.split,
                                  batch_size=ec.batch_size, timelines=0, device=tc.device)
               for protocol in PROTOCOLS}
        note = f"{rc.epochs} epochs (demo profile)" if rc.epochs is not None else ""
        row = report.cell_row(head, setting, tc.visual, tc.audio, res["val"], note,
                              result_test_selected=res["test"],
                              selection=schedule(head, setting).source)
    atomic_write_json(out / "row.json", row, indent=1)


def table(params) -> None:
    paths, rc = params["paths"], params["report"]
    rows = []
    for head in rc.heads:
        for setting in rc.settings:
            path = cell_dir(paths.reports, head, setting) / "row.json"
            rows.append(json.loads(path.read_text()))
    if not rows:  # the default run: no cell
        out = Path(paths.reports)
        atomic_write_json(out / "results.json", [], indent=1)
        atomic_write_text(out / "results.md", EMPTY_TABLE)
        print(f"no results table: report.heads or report.settings is empty; wrote {out}/results.md")
        return
    for p in report.write_table(rows, paths.reports):
        print(f"wrote {p}")


@stage_main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--params", default="params.yaml")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cell")
    c.add_argument("--head", required=True)
    c.add_argument("--setting", required=True, choices=typing.get_args(Setting))
    sub.add_parser("table")
    args = p.parse_args(argv)
    params = load_params(args.params)
    if args.cmd == "cell":
        cell(params, args.head, args.setting)
    else:
        table(params)


if __name__ == "__main__":
    main()
