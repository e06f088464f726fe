"""Settings are objects of their own package, below the heads: a new setting is one module.

A setting added the way a contributor adds one (a module registered through the
``ave_pipeline.settings`` entry point of another installed package) is accepted by params,
trains, evaluates and gets its columns in the results table with no file of this repository
touched. A head trains in it when it lists it in ``settings`` with a ``TRAIN_DEFAULTS`` recipe
and a ``SELECTION`` schedule for it (registration requires both). ``pipeline.settings`` imports
no heads, training or evaluation code, and ``pipeline.heads`` no training or evaluation code.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import settings

REPO = Path(__file__).resolve().parents[1]

SETTING = '''
"""Sparse labels: only the even segments of a training video carry their label."""
from pipeline.settings import Setting, register_setting


@register_setting
class Sparse(Setting):
    name = "sparse"
    order = 50

    def batch(self, data, idx, device, epoch, epochs):
        batch = super().batch(data, idx, device, epoch, epochs)
        batch["labelled"] = batch["labels"].new_zeros(batch["labels"].shape[:2]).bool()
        batch["labelled"][:, ::2] = True
        return batch
'''

HEAD = '''
"""A head that trains in the fully setting and in the sparse setting of the same package."""
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

import ave_plugin_sparse  # noqa: F401  (the setting it lists)
from pipeline.heads import Head, Schedule, register_head

RECIPE = {"optimizer": "adam", "lr": 0.05, "weight_decay": 0.0, "batch_size": 16, "epochs": 3,
          "lr_step": 0, "lr_milestones": [], "lr_gamma": 1.0, "clip_grad": 0.0}


@register_head("sparse_linear")
class SparseLinear(Head):
    settings = ("fully", "sparse")
    TRAIN_DEFAULTS = {"fully": RECIPE, "sparse": RECIPE}
    SELECTION = {"fully": Schedule(), "sparse": Schedule(source="sparse: test, every epoch")}

    @dataclass(frozen=True)
    class Config:
        hidden: int = 8  # width of the hidden layer

    def __init__(self, cfg, visual_dim, audio_dim, num_classes, setting="fully"):
        super().__init__(cfg, visual_dim, audio_dim, num_classes, setting)
        self.fc = nn.Sequential(nn.Linear(visual_dim + audio_dim, cfg.hidden), nn.ReLU(),
                                nn.Linear(cfg.hidden, num_classes + 1))

    def forward(self, visual, audio):
        return {"logits": self.fc(torch.cat([audio, visual.mean(dim=(2, 3))], -1))}

    def loss(self, out, batch):
        logits, target = out["logits"], batch["labels"].argmax(-1)
        keep = batch.get("labelled", torch.ones_like(target, dtype=torch.bool))
        return F.cross_entropy(logits[keep], target[keep]), {}

    def predict(self, out):
        return out["logits"].argmax(-1)
'''


def _install_plugin(site: Path) -> None:
    """An installed package with one setting module and one head module, by entry points."""
    (site / "ave_plugin_sparse.py").write_text(SETTING)
    (site / "ave_plugin_sparse_head.py").write_text(HEAD)
    dist = site / "ave_plugin_sparse-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ave-plugin-sparse\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[ave_pipeline.settings]\nsparse = ave_plugin_sparse\n\n"
                                           "[ave_pipeline.heads]\nsparse = ave_plugin_sparse_head\n")


def test_a_setting_of_another_package_trains_evaluates_and_is_tabled(tmp_path):
    from test_registry import plugin_run

    params, stage = plugin_run(tmp_path, _install_plugin, "sparse_linear", "sparse",
                               ["fully", "sparse"])
    out = stage("stages/train.py")
    assert "head: sparse_linear (sparse)" in out and "sparse: test, every epoch" in out
    stage("stages/evaluate.py")
    metrics = json.loads((tmp_path / "reports" / "evaluate" / "metrics.json").read_text())
    per_video = json.loads((tmp_path / "reports" / "evaluate" / "per_video.json").read_text())
    assert 0 <= metrics["accuracy"] <= 1 and per_video["setting"] == "sparse"
    for setting in ("fully", "sparse"):
        stage("stages/report.py", "cell", "--head", "sparse_linear", "--setting", setting)
    stage("stages/report.py", "table")
    rows = {r["setting"]: r for r in json.loads((tmp_path / "reports" / "results.json").read_text())}
    assert rows["sparse"]["accuracy"] is not None and rows["fully"]["accuracy"] is not None
    table = (tmp_path / "reports" / "results.md").read_text()
    assert "| sparse (ours, val) | sparse (ours, test) | sparse (paper) |" in table
    # Without the package the setting is unknown: params name the key and the known settings.
    bad = subprocess.run([sys.executable, "stages/train.py", "--params", str(params)], cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2
    assert "train.setting: 'sparse' is not allowed; allowed: 'fully', 'weak', 'cml'" in bad.stderr


def test_registry_orders_names_and_refuses_a_duplicate():
    assert settings.names()[:3] == ["fully", "weak", "cml"]
    with pytest.raises(KeyError, match=r"unknown setting 'semi'; known: fully, weak, cml"):
        settings.get("semi")

    class Again(settings.Setting):
        name = "fully"

    with pytest.raises(ValueError, match=r"setting 'fully' is registered twice"):
        settings.register_setting(Again)
    assert type(settings.get("fully")).__name__ == "Fully"


def _imports(package: str) -> dict[str, set[str]]:
    """Modules each file of ``pipeline/<package>`` imports (absolute, relative ones resolved)."""
    out = {}
    for path in sorted((REPO / "pipeline" / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(["pipeline", package] + ([base] if base else []))
                names.add(base)
                names.update(f"{base}.{a.name}" for a in node.names)
        out[str(path.relative_to(REPO))] = names
    return out


@pytest.mark.parametrize("package,forbidden", [
    ("settings", ("pipeline.heads", "pipeline.training", "pipeline.evaluation")),
    ("heads", ("pipeline.training", "pipeline.evaluation")),
])
def test_settings_sit_below_heads_and_heads_below_training(package, forbidden):
    found = sorted(f"{path}: {name}" for path, names in _imports(package).items() for name in names
                   if any(name == f or name.startswith(f + ".") for f in forbidden))
    assert not found, "\n".join(found)
