"""The results table with seeds as a user runs it, on a tiny copy of the project (see
test_dvc_pipeline.py): `dvc exp run report` with three seeds writes pooled rows with a
spread and intervals, and a fourth seed runs only its own cells."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from test_dvc_pipeline import REPO, TINY, _merge, _tracked_files

pytestmark = pytest.mark.slow

TABLE = ["-S", "report.heads=[psp,majority]", "-S", "report.settings=[fully]",
         "-S", "report.epochs=3"]


def test_seeds_pool_into_rows_and_a_new_seed_runs_only_its_cells(tmp_path):
    root = tmp_path / "repo"
    for f in _tracked_files():
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, root / f)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(_merge(params, TINY), sort_keys=False))
    env = {**os.environ, "PYTHONPATH": ".",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1"}
    env.pop("DVC_ROOT", None)

    def sh(*cmd: str) -> str:
        proc = subprocess.run(list(cmd), cwd=root, env=env, capture_output=True, text=True,
                              timeout=1800)
        if proc.returncode:
            raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc.stdout + proc.stderr

    sh("git", "init", "-q")
    sh("git", "add", "-A")
    sh("git", "commit", "-q", "-m", "tiny project")
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
