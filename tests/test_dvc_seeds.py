"""The results table with seeds as a user runs it, on a tiny copy of the project (see
test_dvc_pipeline.py): `dvc exp run report` with three seeds writes pooled rows with a
spread and intervals, and a fourth seed runs only its own cells."""
from __future__ import annotations

import json
import re
import sys
import time

import pytest

from test_dvc_pipeline import tiny_copy

pytestmark = pytest.mark.slow

# vgg19 + vggish: on the tiny set the tuned features of 1 fine-tuning epoch leave PSP predicting
# the same segments from every seed after 3 epochs (no spread to pool)
TABLE = ["-S", "report.heads=[psp,majority]", "-S", "report.settings=[fully]",
         "-S", "report.epochs=3", "-S", "train.visual=vgg19", "-S", "train.audio=vggish"]


def test_seeds_pool_into_rows_and_a_new_seed_runs_only_its_cells(tmp_path):
    root = tmp_path / "repo"
    run = tiny_copy(root)

    def sh(*cmd: str) -> str:
        proc = run(*cmd, timeout=1800)
        return proc.stdout + proc.stderr

    t0 = time.monotonic()
    log = sh(sys.executable, "-m", "dvc", "exp", "run", "report", *TABLE,
             "-S", "report.seeds=[0,1,2]")
    print(f"3 seeds: {time.monotonic() - t0:.1f} s")
    cells = set(re.findall(r"Running stage '(cell@[^']+)'", log))
    assert cells == {f"cell@{h}-fully-{s}" for h in ("psp", "majority") for s in (0, 1, 2)}, log
    rows = {r["head"]: r for r in json.loads((root / "reports" / "results.json").read_text())}
    print((root / "reports" / "results.md").read_text())
    for head, row in rows.items():
        assert row["seeds"] == [0, 1, 2]
        for key in ("accuracy", "accuracy_test_selected"):
            lo, hi = row[f"{key}_ci95"]
            assert lo <= row[key] <= hi, (head, key, row)
            assert row[f"{key}_sd"] is not None
    assert rows["psp"]["accuracy_sd"] > 0, rows["psp"]
    assert (root / "reports" / "results.html").is_file()

    t0 = time.monotonic()
    log = sh(sys.executable, "-m", "dvc", "exp", "run", "report", *TABLE,
             "-S", "report.seeds=[0,1,2,3]")
    print(f"a fourth seed: {time.monotonic() - t0:.1f} s")
    ran = set(re.findall(r"Running stage '([^']+)'", log))
    assert ran == {"cell@psp-fully-3", "cell@majority-fully-3", "report"}, log
    rows = json.loads((root / "reports" / "results.json").read_text())
    assert all(r["seeds"] == [0, 1, 2, 3] for r in rows)
