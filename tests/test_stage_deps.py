"""Stage deps are what each stage loads. Every stage of the tiny profile (plus one results-table
cell) runs under an import recorder: a ``sitecustomize`` on PYTHONPATH that, when each of the
stage's processes exits (decode workers and torchrun ranks included), writes the project files
in ``sys.modules`` to ``$IMPORT_RECORD_DIR/<DVC_STAGE>.<pid>.txt``. The union per stage is
compared with that stage's code deps in ``dvc.lock``: every loaded project file is covered by a
dep, and every code dep (a file, or each module of a folder) is loaded. A package ``__init__``
that holds only a docstring can change no output and is left out of both. The check fails when
an import is added without its dep; a change to a head re-runs only the stages that load heads,
and a change to the feature store or the metrics re-runs ``train``."""
from __future__ import annotations

import ast
import os
import re
import sys
from pathlib import Path

import pytest
import numpy as np
import yaml

from test_dvc_pipeline import tiny_copy

pytestmark = pytest.mark.slow

RECORDER = '''\
import atexit, os, sys


def _record():
    out, stage = os.environ.get("IMPORT_RECORD_DIR"), os.environ.get("DVC_STAGE")
    if not out or not stage:
        return
    root = os.path.realpath(os.getcwd())
    # the script run (python drops __main__.__file__ once it has run) and every module
    paths = [sys.argv[0] if sys.argv and sys.argv[0].endswith(".py") else None]
    paths += [getattr(module, "__file__", None) for module in list(sys.modules.values())]
    files = {os.path.relpath(os.path.realpath(f), root) for f in paths
             if f and os.path.realpath(f).startswith(root + os.sep)}
    name = f"{stage.replace('/', '_')}.{os.getpid()}.txt"
    with open(os.path.join(out, name), "w") as fh:
        fh.write("\\n".join(sorted(files)) + "\\n")


atexit.register(_record)
'''
CODE = ("pipeline/", "stages/")
# one cell of the results table, so that stages `cell` and `report` load what they load when used
CELL = ["report.heads=[majority]", "report.settings=[fully]", "report.epochs=1"]


def recorder_env(root: Path, record_dir: Path) -> list[str]:
    """``env`` arguments that run a command under the import recorder."""
    site = record_dir.parent / "recorder"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(RECORDER)
    return ["env", f"PYTHONPATH=.{os.pathsep}{site}", f"IMPORT_RECORD_DIR={record_dir}"]


def loaded_files(record_dir: Path) -> dict[str, set[str]]:
    """Stage -> the project code files its processes loaded."""
    out: dict[str, set[str]] = {}
    for f in record_dir.glob("*.txt"):
        stage = f.name.rsplit(".", 2)[0]
        out.setdefault(stage, set()).update(x for x in f.read_text().split() if x.startswith(CODE))
    return out


def is_inert(path: Path) -> bool:
    """A module that holds a docstring at most (it can change no output)."""
    body = ast.parse(path.read_text()).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def lock_code_deps(root: Path) -> dict[str, list[str]]:
    """Stage -> its code deps (files and folders under pipeline/ or stages/) in dvc.lock."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    return {name: [d["path"] for d in s.get("deps", []) if d["path"].startswith(CODE)]
            for name, s in lock.items()}


def yaml_line(root: Path, stage: str) -> int:
    """The line of dvc.yaml defining ``stage`` (``extract@vgg19`` -> ``extract:``)."""
    base = stage.split("@", 1)[0]
    for i, line in enumerate((root / "dvc.yaml").read_text().splitlines(), 1):
        if re.match(rf"^  {re.escape(base)}:", line):
            return i
    return 0


def dep_problems(root: Path, record_dir: Path) -> list[str]:
    """One line per stage whose code deps differ from what it loaded."""
    loaded, deps = loaded_files(record_dir), lock_code_deps(root)
    problems = []
    for stage, files in sorted(loaded.items()):
        files = {f for f in files if not is_inert(root / f)}
        stage_deps = deps.get(stage, [])
        covered = set()
        for d in stage_deps:
            p = root / d
            covered |= ({str(f.relative_to(root)) for f in p.rglob("*.py")} if p.is_dir() else {d})
        covered = {f for f in covered if not is_inert(root / f)}
        missing, unused = sorted(files - covered), sorted(covered - files)
        if missing or unused:
            where = f"dvc.yaml:{yaml_line(root, stage)}"
            problems.append(f"stage {stage} ({where}): loaded without a dep: {missing or 'none'}; "
                            f"a dep it does not load: {unused or 'none'}")
    return problems


def _dvc(sh, *args, **kw):
    return sh(sys.executable, "-m", "dvc", *args, **kw)


def _changed(sh) -> set[str]:
    return set(re.findall(r"^(\S+):\s*$", _dvc(sh, "status").stdout, re.M))


@pytest.fixture(scope="module")
def recorded_repo(tmp_path_factory):
    """The tiny profile (with one results-table cell) reproduced under the import recorder and
    committed."""
    root = tmp_path_factory.mktemp("depsrepo")
    record = tmp_path_factory.mktemp("imports")
    sh = tiny_copy(root)
    from dvc.utils.hydra import apply_overrides
    apply_overrides(root / "params.yaml", CELL)
    sh(*recorder_env(root, record), sys.executable, "-m", "dvc", "repro")
    sh("git", "add", "-A")
    sh("git", "commit", "-q", "-m", "reproduced")
    return root, record, sh


def test_every_stage_loads_exactly_its_code_deps(recorded_repo):
    root, record, _ = recorded_repo
    stages = set(loaded_files(record))
    assert {"resolve", "synth", "prepare", "extract@vgg19", "extract@vggish", "finetune",
            "extract_finetuned@visual", "train", "evaluate", "cell@majority-fully-None",
            "report"} <= stages, sorted(stages)
    problems = dep_problems(root, record)
    assert not problems, "\n".join(problems)


def test_lean_stages(recorded_repo):
    """train and evaluate load no decoder, encoder or extraction engine; no extraction or
    fine-tuning stage loads heads, training or evaluation."""
    root, record, _ = recorded_repo
    for stage, files in loaded_files(record).items():
        files = {f for f in files if not is_inert(root / f)}
        if stage in ("train", "evaluate"):
            bad = [f for f in files if f.startswith(("pipeline/media/", "pipeline/encoders/",
                                                      "pipeline/features/engine.py"))]
        elif stage.startswith(("extract", "finetune", "synth", "prepare")):
            bad = [f for f in files if f.startswith(("pipeline/heads/", "pipeline/training/",
                                                      "pipeline/evaluation/"))]
        else:
            continue
        assert not bad, (stage, sorted(bad))


@pytest.mark.parametrize("edit, must, must_not", [
    ("pipeline/heads/psp.py", {"train", "evaluate"},
     {"synth", "prepare", "extract@vgg19", "extract@vggish", "finetune", "extract_finetuned@visual"}),
    ("pipeline/features/store.py", {"train"}, {"synth", "prepare"}),
    ("pipeline/settings/metrics.py", {"train"}, {"synth", "prepare", "extract@vgg19", "finetune"}),
])
def test_a_code_change_reruns_the_stages_that_load_it(recorded_repo, edit, must, must_not):
    root, _, sh = recorded_repo
    path = root / edit
    text = path.read_text()
    try:
        path.write_text(text + "\n# a change\n")
        changed = _changed(sh)
        assert must <= changed and not changed & must_not, (edit, sorted(changed))
    finally:
        path.write_text(text)
    assert "up to date" in _dvc(sh, "status").stdout


def test_an_import_without_its_dep_fails_the_check(tmp_path):
    """A copy of the project whose synth stage imports one more module: the check names the
    stage, its dvc.yaml line and the module."""
    root, record = tmp_path / "repo", tmp_path / "imports"
    root.mkdir()
    record.mkdir()
    sh = tiny_copy(root)
    stage = root / "stages" / "synth.py"
    stage.write_text(stage.read_text().replace(
        "from pipeline.data.synth import generate\n",
        "from pipeline.data.synth import generate\nimport pipeline.evaluation.intervals  # noqa\n"))
    sh(*recorder_env(root, record), sys.executable, "-m", "dvc", "repro", "synth")
    problems = dep_problems(root, record)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"stage synth (dvc.yaml:{yaml_line(root, 'synth')})")
    assert problems[0].endswith("loaded without a dep: ['pipeline/evaluation/intervals.py']; "
                                "a dep it does not load: none")


ENERGY = '''"""A parameter-free audio encoder: the log energy of 8 equal slices of each 1-s segment."""
import torch

from pipeline.encoders.audio import AudioEncoder
from pipeline.encoders.base import register_encoder
from pipeline.encoders.weights import ResolvedWeights


class Energy(AudioEncoder):
    dim = 8

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return torch.log(wave.reshape(len(wave), self.dim, -1).pow(2).mean(-1) + 1e-6)

    def export_state_dict(self) -> dict:
        return {}


@register_encoder("energy", "audio")
def energy(spec, allow_download=True, image_size=None, download_key=""):
    return Energy("energy", spec, ResolvedWeights("random", None, "", seed=spec.seed))
'''


def test_a_new_encoder_is_one_module_and_one_params_entry(tmp_path):
    """An encoder module dropped into pipeline/encoders/ and one extract.models entry: `dvc repro
    extract@energy` writes its features (a known answer on each clip's waveform), with no other
    edit (dvc.yaml, an __init__, a list of encoders)."""
    root = tmp_path / "repo"
    root.mkdir()
    sh = tiny_copy(root)
    (root / "pipeline" / "encoders" / "energy.py").write_text(ENERGY)
    params = root / "params.yaml"
    text = params.read_text()
    cnn14 = re.search(r"^(\s+)cnn14: .*$", text, re.M)
    params.write_text(text[:cnn14.end()] + f"\n{cnn14.group(1)}energy: {{kind: audio, encoder: "
                      "energy, weights: random, seed: 0}" + text[cnn14.end():])
    assert "extract@energy" in _dvc(sh, "stage", "list").stdout
    out = _dvc(sh, "repro", "extract@energy").stdout
    assert set(re.findall(r"Running stage '([^']+)'", out)) == {"synth", "prepare", "extract@energy"}

    from pipeline.data.manifest import load_manifest
    from pipeline.features.store import load_features
    from pipeline.media.decode import decode_audio
    fs = load_features(root / "data" / "features" / "energy.h5")
    rows = load_manifest(root / "data" / "prepared")
    assert fs.data.shape == (len(rows), 10, 8) and fs.valid.all() and fs.meta["encoder"] == "energy"
    row = rows[0]
    wave = decode_audio(root / row["path"] if not Path(row["path"]).is_absolute() else row["path"],
                        16000).data
    want = np.log((wave.reshape(10, 8, -1) ** 2).mean(-1) + 1e-6)
    np.testing.assert_allclose(fs.data[row["index"]].astype(np.float32), want, rtol=2e-3, atol=2e-3)
