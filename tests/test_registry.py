"""One place for each fact: the head registry is the only list of heads.

A head added the way a contributor adds one (a single module, registered through the
``ave_pipeline.heads`` entry point of another installed package) trains and evaluates through
the stages and appears in the results table with its declared schedule, with no file of this
repository touched. Outside ``pipeline/heads/`` no library module names a head; params.yaml and
the docs list every registered head; every file name the architecture doc lists is the layout
module's."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline import layout
from pipeline.heads import get_head_class, list_heads

REPO = Path(__file__).resolve().parents[1]

PLUGIN = '''
"""A head of another package: a linear classifier over audio and pooled visual features."""
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.heads import NO_RELEASED_CODE, Head, Reported, Schedule, register_head


@register_head("plugin_linear")
class PluginLinear(Head):
    settings = ("fully",)
    @dataclass(frozen=True)
    class Config:
        hidden: int = 8  # width of the hidden layer
    TRAIN_DEFAULTS = {"fully": {"optimizer": "adam", "lr": 0.05, "weight_decay": 0.0,
                                "batch_size": 16, "epochs": 3, "lr_step": 0,
                                "lr_milestones": [], "lr_gamma": 1.0, "clip_grad": 0.0}}
    SELECTION = {"fully": Schedule("test", every=2, source="plugin script: test, epoch % 2 == 0")}
    SEEDS = {"fully": 7}
    REPORTED = {"fully": Reported(42.0, "Plugin paper, Table 1")}

    def __init__(self, cfg, visual_dim, audio_dim, num_classes, setting="fully"):
        super().__init__(cfg, visual_dim, audio_dim, num_classes, setting)
        self.fc = nn.Sequential(nn.Linear(visual_dim + audio_dim, cfg.hidden), nn.ReLU(),
                                nn.Linear(cfg.hidden, num_classes + 1))

    def forward(self, visual, audio):
        return {"logits": self.fc(torch.cat([audio, visual.mean(dim=(2, 3))], -1))}

    def loss(self, out, batch):
        logits = out["logits"]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                               batch["labels"].argmax(-1).reshape(-1)), {}

    def predict(self, out):
        return out["logits"].argmax(-1)
'''


def _install_plugin(site: Path) -> None:
    """A package on ``site`` with one head module and its entry point (an installed dist)."""
    (site / "ave_plugin_head.py").write_text(PLUGIN)
    dist = site / "ave_plugin_head-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ave-plugin-head\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[ave_pipeline.heads]\nlinear = ave_plugin_head\n")


def plugin_run(tmp_path, install, head: str, setting: str, report_settings: list[str]):
    """A tiny feature set, a params file training ``head`` in ``setting`` (hidden width 6), and
    a function running a stage script on it with the plugin package ``install(site)`` wrote on
    PYTHONPATH: ``(params, stage)``."""
    from test_training import write_set

    site = tmp_path / "site"
    site.mkdir()
    install(site)
    prepared, feats = write_set(tmp_path / "set", n_per_split=(16, 8, 8))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "paths": {"prepared": str(prepared), "features": str(feats),
                  "models": str(tmp_path / "models"), "reports": str(tmp_path / "reports"),
                  "resume": str(tmp_path / "resume")},
        "train": {"head": head, "setting": setting, "visual": "vis", "audio": "aud",
                  "device": "cpu", "epochs": None},
        "heads": {head: {"hidden": 6}},
        "evaluate": {"timelines": 0},
        "report": {"heads": [head], "settings": report_settings, "epochs": None}}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}

    def stage(script: str, *args: str) -> str:
        proc = subprocess.run([sys.executable, script, "--params", str(params), *args], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return proc.stdout
    return params, stage


def test_a_head_of_another_package_trains_evaluates_and_is_tabled(tmp_path):
    _, stage = plugin_run(tmp_path, _install_plugin, "plugin_linear", "fully", ["fully", "weak"])
    out = stage("stages/train.py")
    assert "head: plugin_linear (fully)" in out and "plugin script: test, epoch % 2 == 0" in out
    stage("stages/evaluate.py")
    metrics = json.loads((tmp_path / "reports" / "evaluate" / "metrics.json").read_text())
    assert 0 <= metrics["accuracy"] <= 1 and metrics["num_parameters"] > 0
    for setting in ("fully", "weak"):
        stage("stages/report.py", "cell", "--head", "plugin_linear", "--setting", setting)
    stage("stages/report.py", "table")
    rows = json.loads((tmp_path / "reports" / "results.json").read_text())
    fully, weak = rows
    assert fully["selection"] == "plugin script: test, epoch % 2 == 0"
    assert fully["paper_accuracy"] == 42.0 and fully["paper_source"] == "Plugin paper, Table 1"
    assert fully["accuracy"] is not None and weak["accuracy"] is None  # weak: not its paper's


def test_registration_refuses_a_setting_without_recipe_or_schedule():
    from pipeline.heads import Head, register_head

    class NoSchedule(Head):
        settings = ("fully",)
        TRAIN_DEFAULTS = {"fully": {}}

    with pytest.raises(ValueError, match=r"'no_schedule': SELECTION has no entry for .*fully"):
        register_head("no_schedule")(NoSchedule)
    assert "no_schedule" not in list_heads()


def _library_sources():
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        if "heads" not in path.relative_to(REPO / "pipeline").parts[:1]:
            yield path


def test_no_library_module_outside_the_heads_names_a_head():
    names = [n for n in list_heads() if get_head_class(n).__module__.startswith("pipeline.heads.")]
    pattern = re.compile(r"""["'](%s)["']""" % "|".join(map(re.escape, names)))
    found = [f"{p.relative_to(REPO)}:{i}: {line.strip()}"
             for p in _library_sources()
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, "\n".join(found)


def test_params_list_every_head_and_only_registered_ones():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    bundled = [n for n in list_heads() if get_head_class(n).__module__.startswith("pipeline.heads.")]
    assert sorted(params["heads"]) == sorted(bundled)
    assert set(params["report"]["heads"]) <= set(bundled)  # [] by default: no results table


def test_every_bundled_head_declares_what_the_report_and_selection_read():
    for name in list_heads():
        cls = get_head_class(name)
        if not cls.__module__.startswith("pipeline.heads."):
            continue
        assert set(cls.SELECTION) == set(cls.settings) == set(cls.TRAIN_DEFAULTS), name
        for setting, rep in cls.REPORTED.items():
            assert setting in cls.settings and rep.source, (name, setting)


def test_architecture_doc_names_only_layout_files():
    """Every data file name the architecture doc lists is one the layout module defines."""
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    known = set()
    for value in vars(layout).values():
        if isinstance(value, str):
            known.add(value.replace("{split}", "{train,val,test}"))
            known |= {value.replace("{protocol}", p) for p in ("val", "test")}
            known.add(value)
    named = set(re.findall(r"`(?:<[a-z.]+>/)?([A-Za-z_{},]+\.(?:h5|csv|json|md|pt|pth|txt))`", text))
    named -= {"ARCHITECTURE.md", "README.md", "params.yaml"}
    patterns = {"<m>.h5", "<model>.h5", "<encoder>.pth"}
    unknown = sorted(n for n in named if n not in known and n not in patterns
                     and not n.startswith(("metrics", "confusion", "index", "row")))
    assert not unknown, f"docs/ARCHITECTURE.md names files the layout module does not: {unknown}"


def test_readme_lists_every_bundled_head():
    """README's list of heads is checked against the registry (one place for the list)."""
    readme = (REPO / "README.md").read_text()
    bundled = [n for n in list_heads() if get_head_class(n).__module__.startswith("pipeline.heads.")]
    missing = [n for n in bundled if f"`{n}`" not in readme]
    assert not missing, f"README.md does not list the registered heads {missing}"
