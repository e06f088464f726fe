"""benchmarks/parity/: the log parser reads each released script's output format (hand-written
lines, no fetched code), and run_ours.py trains a head on a tiny make_features.py set."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

ROOT = Path(__file__).resolve().parents[1]
PARITY = ROOT / "benchmarks" / "parity"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"parity_{name}", PARITY / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _checks(checks):
    return [(c["epoch"], c["split"], round(c["accuracy"], 4)) for c in checks]


def test_psp_fully_log_keeps_one_check_per_split_and_epoch():
    log = """=== Epoch {4}   lr: {0.000300} | Loss: [{0.1}] loss_cls: [{0.1}] | loss_frame: [{0.02}] | training_acc {0.5}
=== Epoch {5}   lr: {0.000300} | Loss: [{0.1}] loss_cls: [{0.1}] | loss_frame: [{0.02}] | training_acc {0.6}
[val]acc:  0.8
val accuracy: 0.8 epoch= 5
best val accuracy: 0.8 ***
[test]acc:  0.81
test accuracy: 0.81 epoch= 5
"""
    assert _checks(_module("run_authors").parse(log)) == [(5, "val", 0.8), (5, "test", 0.81)]


def test_vscg_fully_percent_and_weak_lines():
    mod = _module("run_authors")
    fully = "=== Epoch {10}   lr: {0.0003} | Loss: [{0.2}]\n[val]acc:  87.5\nbest val accuracy: 87.5 ***\n[test]acc:  86.25\n"
    assert _checks(mod.parse(fully)) == [(10, "val", 0.875), (10, "test", 0.8625)]
    weak = "=== Epoch {15}   lr: {0.0003} | Loss: {0.3}\nval accuracy 0.7\nval accuracy: 0.7 epoch= 15\n"
    assert _checks(mod.parse(weak)) == [(15, "val", 0.7)]


def test_avel_bare_numbers_and_the_test_run():
    mod = _module("run_authors")
    log = "256\n=== Epoch {0}   Loss: {0.7087}  Running time: {2.8}\n0.455\n=== Epoch {1}   Loss: {0.70}  Running time: {2.8}\n"
    assert _checks(mod.parse(log, bare=True)) == [(0, "val", 0.455)]
    assert _checks(mod.parse(log)) == []  # a bare number is a check only for AVEL
    assert mod.avel_test("402\n0.61\n") == pytest.approx(0.61)


def test_cmbs_evaluation_lines_count_epochs():
    text = ("INFO Test Epoch [0][6/7]\tLoss 2.1\tPrec@1 42.5 (53.1)\n"
            "INFO ****\t\tEvaluation results (acc): 53.1000%.\n"
            "INFO ****\t\tEvaluation results (acc): 61.2500%.\n")
    assert _checks(_module("run_authors").parse_cmbs(text)) == [(0, "test", 0.531), (1, "test", 0.6125)]


def test_make_features_then_run_ours(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    data = tmp_path / "set"
    run = subprocess.run([sys.executable, str(PARITY / "make_features.py"), str(data), "--train", "8",
                          "--eval", "4", "--background-only", "2"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    with h5py.File(data / "visual_feature.h5") as f:
        assert f["avadataset"].shape == (16, 10, 7, 7, 512)
    stats = json.loads((data / "stats.json").read_text())
    assert stats["train"] == 8 and 0 < stats["audio-only ceiling (test)"] <= 1
    out = tmp_path / "runs" / "avel-fully-ours-1.json"
    run = subprocess.run([sys.executable, str(PARITY / "run_ours.py"), "--head", "avel", "--data", str(data),
                          "--epochs", "1", "--seed", "1", "--out", str(out)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    checks = json.loads(out.read_text())["checks"]
    # AVEL's script checks on val at epoch 0: ours adds the test accuracy of that model
    assert [(c["epoch"], c["split"]) for c in checks] == [(0, "val"), (0, "test")]
    assert all(0 <= c["accuracy"] <= 1 for c in checks)


def _write_run(folder: Path, name: str, checks: list[tuple[int, str, float]]) -> None:
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(
        {"checks": [{"epoch": e, "split": s, "accuracy": a} for e, s, a in checks]}))


def test_report_final_numbers_and_verdict(tmp_path):
    report = _module("report")
    runs = tmp_path / "runs"
    for seed, (v5, v10) in {"1": (0.5, 0.70), "2": (0.6, 0.72)}.items():
        _write_run(runs, f"psp-fully-theirs-{seed}", [(5, "val", v5), (5, "test", v5), (10, "val", v10), (10, "test", v10)])
    for seed, (v5, v10) in {"1": (0.55, 0.90), "2": (0.65, 0.92)}.items():
        _write_run(runs, f"psp-fully-ours-{seed}", [(5, "val", v5), (5, "test", v5), (10, "val", v10), (10, "test", v10)])
    # AVEL weak reports the last val check's model, fully the best (the first of equal ones)
    _write_run(runs, "avel-weak-theirs-1", [(0, "val", 0.4), (5, "val", 0.6), (10, "val", 0.5), (10, "test", 0.45)])
    _write_run(runs, "avel-fully-ours-1", [(0, "val", 0.4), (0, "test", 0.3), (5, "val", 0.6), (5, "test", 0.61),
                                           (10, "val", 0.6), (10, "test", 0.2)])
    data = report.load(runs)
    assert report.selected_epoch(("avel", "weak"), data[("avel", "weak")]["theirs"]["1"]) == 10
    assert report.selected_epoch(("avel", "fully"), data[("avel", "fully")]["ours"]["1"]) == 5
    rows = report.final(("psp", "fully"), data[("psp", "fully")])
    assert rows[0] == "| psp | fully | theirs | 2 | 10 | 0.710 ± 0.014 | 10 | 0.710 ± 0.014 |"
    assert rows[1] == "| psp | fully | ours | 2 | 10 | 0.910 ± 0.014 | 10 | 0.910 ± 0.014 |"
    # epoch 5: means differ by 0.05, 2 SE = 2 * sqrt(0.005 / 2 + 0.005 / 2) = 0.141 -> within;
    # epoch 10: 0.20 against 2 SE = 0.028 -> outside, on val and test
    assert report.verdict(("psp", "fully"), data[("psp", "fully")]) == \
        "| psp | fully | 2 of 4 | test 10: +0.200 (2 SE 0.028); val 10: +0.200 (2 SE 0.028) |"
    assert report.final(("avel", "fully"), data[("avel", "fully")])[0].endswith("| selected | 0.610 |")
