"""benchmarks/gpu.py: refuses to run on the CPU, and its dry run writes the JSON and the table."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "gpu.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")
def test_without_cuda_it_says_so_and_does_not_run(tmp_path, capsys):
    assert _module().main(["--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().out
    assert not (tmp_path / "gpu.json").exists()


def test_dry_run_writes_json_and_markdown(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--dry-run", "--models",
                           "resnet50,vggish", "--out", str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "gpu.json").read_text())
    assert [r["model"] for r in res["extraction"]] == ["resnet50", "vggish"]
    for r in res["extraction"]:
        assert r["per_s"] > 0 and r["engine_vs_floor"] > 0 and r["workers_needed"] >= 1
        assert r["projected_ave_min"] == pytest.approx(r["wall_s"] / res["settings"]["videos"] * 4143 / 60)
    assert res["finetune"]["steps_per_s"] > 0 and res["cmbs"]["epoch_s"] > 0
    table = (tmp_path / "gpu.md").read_text()
    assert "| resnet50 |" in table and "| vggish |" in table and "CACE fine-tuning" in table
