"""The results table's cells and their gathering (the dvc.yaml stages ``cell@<head>-<setting>-<seed>``
and ``report``, through ``stages/report.py``).

``cell``: train a head in a setting with one seed (``None``: the head's authors' seed) and
``report.epochs`` epochs (null = the paper's) into ``<paths.models>/matrix/<head>-<setting>-seed<seed>``,
evaluate both its val-selected and its test-selected checkpoint (``best_val.pt``,
``best_test.pt``: the released script's protocol) on test (each evaluation also writes
``per_video.json``) and write ``<paths.reports>/matrix/<cell>/row.json`` with the seed the run used;
a setting the head does not define trains nothing and gives a row noting 'not defined by the
paper'. ``table``: pool the seeds of each head x setting into one row (mean, sd, bootstrap
intervals; :mod:`pipeline.evaluation.report`) in ``results.json``, ``results.md``, ``results.html``.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from pipeline import layout
from pipeline.data.ids import output_file
from pipeline.evaluation import report
from pipeline.evaluation.evaluate import evaluate
from pipeline.heads import get_head_class, schedule
from pipeline.heads._registry import TRAIN_KEYS
from pipeline.runtime import atomic_write_json
from pipeline.training import checkpoint as ckpt_io
from pipeline.training.config import check_head
from pipeline.training.run import train_from_params
from pipeline.training.selection import PROTOCOLS


def cell_dir(root: str | Path, head: str, setting: str, seed: int | None) -> Path:
    """``<root>/matrix/<head>-<setting>-seed<seed>`` (``seedNone``: the head's default seed, as
    dvc.yaml writes a null seed); sanitised, it stays inside the folder."""
    return output_file(Path(root) / layout.MATRIX_DIR, f"{head}-{setting}-seed{seed}")


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
        train_from_params(params, out_dir=models, live_dir=out / layout.TRAIN_DIR, resume_dir=resume,
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
    atomic_write_json(out / layout.ROW_FILE, row, indent=1)


def read_run(root: str | Path, head: str, setting: str, seed: int | None) -> dict:
    """One cell's ``{"row": row.json, "scores": {protocol: per_video.json}}``."""
    d = cell_dir(root, head, setting, seed)
    scores = {p: json.loads((d / f"evaluate_{p}" / layout.PER_VIDEO_FILE).read_text())
              for p in PROTOCOLS if (d / f"evaluate_{p}" / layout.PER_VIDEO_FILE).is_file()}
    return {"row": json.loads((d / layout.ROW_FILE).read_text()), "scores": scores}


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
