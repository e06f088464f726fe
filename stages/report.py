"""Results table over heads x settings x seeds (dvc.yaml stages `cell@<head>-<setting>-<seed>`, `report`).

`cell --head H --setting S --seed N`: train H in S with seed N (None: the head's default seed)
and ${report.epochs} epochs (null = paper default) into ${paths.models}/matrix/H-S-seedN,
evaluate both its val-selected and its test-selected checkpoint (best_val.pt, best_test.pt: the
released script's protocol) on test (each evaluation also writes per_video.json), write
${paths.reports}/matrix/H-S-seedN/row.json with the seed the run used;
a setting the head does not define (e.g. cml for all but m2n) trains nothing and gives a row
noting 'not defined by the paper'.
`table`: pool the seeds of each of ${report.heads} x ${report.settings} into one row (mean, sd,
bootstrap intervals; pipeline.evaluation.report) in ${paths.reports}/results.json, results.md
and results.html.
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
from pipeline import layout
from pipeline.evaluation.evaluate import evaluate
from pipeline.heads import get_head_class
from pipeline.heads._registry import TRAIN_KEYS
from pipeline.runtime import atomic_write_json
from pipeline.training import checkpoint as ckpt_io
from pipeline.training.config import Setting, check_head
from pipeline.training.run import train_from_params
from pipeline.training.selection import PROTOCOLS, schedule


def cell_dir(root: str | Path, head: str, setting: str, seed: int | None) -> Path:
    """``<root>/matrix/<head>-<setting>-seed<seed>`` (``seedNone``: the head's default seed, as
    dvc.yaml writes a null seed); sanitised, it stays inside the folder."""
    return output_file(Path(root) / "matrix", f"{head}-{setting}-seed{seed}")


def cell(params, head: str, setting: str, seed: int | None = None) -> None:
    paths, tc, rc, ec = params["paths"], params["train"], params["report"], params["evaluate"]
    check_head(head, "--head")
    out = cell_dir(paths.reports, head, setting, seed)
    models = cell_dir(paths.models, head, setting, seed)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    models.mkdir(parents=True, exist_ok=True)  # a DVC out even when the cell has no model
    if setting not in get_head_class(head).settings:
        row = report.cell_row(head, setting, tc.visual, tc.audio, None, report.NOT_DEFINED)
        row["seed"] = seed
    else:
        # Every cell runs its paper's recipe; only the epochs follow report.epochs.
        changes = {**{k: None for k in TRAIN_KEYS}, "head": head, "setting": setting,
                   "epochs": rc.epochs, "seed": seed}
        resume = cell_dir(paths.resume, head, setting, seed)  # <paths.resume>/matrix/<cell>
        train_from_params(params, out_dir=models, live_dir=out / "train", resume_dir=resume,
                          **changes)
        res = {protocol: evaluate(layout.best_checkpoint(models, protocol), paths.prepared,
                                  paths.features, tc.visual, tc.audio,
                                  out / f"evaluate_{protocol}", split=ec.split,
                                  batch_size=ec.batch_size, timelines=0, device=tc.device)
               for protocol in PROTOCOLS}
        note = f"{rc.epochs} epochs (demo profile)" if rc.epochs is not None else ""
        row = report.cell_row(head, setting, tc.visual, tc.audio, res["val"], note,
                              result_test_selected=res["test"],
                              selection=schedule(head, setting).source)
        row["seed"] = ckpt_io.load(layout.best_checkpoint(models, "val"))["seed"]  # as resolved
    atomic_write_json(out / "row.json", row, indent=1)


def read_run(root: str | Path, head: str, setting: str, seed: int | None) -> dict:
    """One cell's ``{"row": row.json, "scores": {protocol: per_video.json}}``."""
    d = cell_dir(root, head, setting, seed)
    scores = {p: json.loads((d / f"evaluate_{p}" / layout.PER_VIDEO_FILE).read_text())
              for p in PROTOCOLS if (d / f"evaluate_{p}" / layout.PER_VIDEO_FILE).is_file()}
    return {"row": json.loads((d / "row.json").read_text()), "scores": scores}


def table(params) -> None:
    paths, rc = params["paths"], params["report"]
    rows, runs = [], {}
    for head in rc.heads:
        for setting in rc.settings:
            runs[(head, setting)] = [read_run(paths.reports, head, setting, seed)
                                     for seed in rc.seeds]
            rows.append(report.seed_runs_row(runs[(head, setting)]))
    report.compare_heads(rows, runs)
    for p in report.write_table(rows, paths.reports):
        print(f"wrote {p}")


def _seed(text: str) -> int | None:
    return None if text in ("None", "null") else int(text)


@stage_main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--params", default="params.yaml")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cell")
    c.add_argument("--head", required=True)
    c.add_argument("--setting", required=True, choices=typing.get_args(Setting))
    c.add_argument("--seed", type=_seed, default=None,
                   help="an integer, or None (as DVC writes a null report.seeds entry): the "
                        "head's default seed")
    sub.add_parser("table")
    args = p.parse_args(argv)
    params = load_params(args.params)
    if args.cmd == "cell":
        cell(params, args.head, args.setting, args.seed)
    else:
        table(params)


if __name__ == "__main__":
    main()
