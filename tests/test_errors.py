"""Every configuration or input error: one line, early, naming the key or file; exit status 2.

Each row of ``BAD_PARAMS`` changes one thing in the repository's params.yaml and runs a stage's
``main`` in-process (before any data exists: the error must come from loading the params);
``BAD_INPUTS`` are input files. A few rows run as real subprocesses (exit code, no traceback).
"""
from __future__ import annotations

import copy
import importlib.util
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.cli import one_line
from pipeline.encoders.spec import ModelSpec

SPEC_FIELDS = set(ModelSpec.__dataclass_fields__) | {"kind"}  # kind: read by the extract section

REPO = Path(__file__).resolve().parents[1]
STAGES = ("prepare", "train", "evaluate", "finetune", "synth", "resolve")
# A stage checks the sections it reads (pipeline.config.load_params(sections=)); stage resolve
# checks every section, and the checks across sections, before any stage runs.
READER = {"data": "prepare", "synth": "synth", "train": "train", "heads": "train",
          "evaluate": "evaluate", "finetune": "finetune", "paths": "train"}

HEADS = r"registered: [a-z0-9_, ]*avel, [a-z0-9_, ]*psp"  # the registry's list (tests add heads)

# (dotted key path, new value, regex of the message after "error: <params file>: ")
BAD_PARAMS = [
    ("train.head", "cmbss", rf"train\.head: unknown head 'cmbss' \(did you mean cmbs\?\); {HEADS}"),
    ("train.setting", "cml", r"train\.setting: head 'psp' has no 'cml' setting; it supports: fully, weak"),
    ("train.setting", "semi", r"train\.setting: 'semi' is not allowed; allowed: 'fully', 'weak', 'cml'"),
    ("train.visual", "../x", r"train\.visual: '\.\./x' is not a plain name"),
    ("train.visual", "vggish", r"train\.visual \('vggish': extract\.models\.vggish\.encoder\): 'vggish' is an audio encoder; a visual one is needed"),
    ("train.audio", "resnet50", r"train\.audio \('resnet50': .*\): 'resnet50' is a visual encoder; an audio one is needed"),
    ("train.epochs", 0, r"train\.epochs: must be >= 1, got 0"),
    ("train.lr", -1.0, r"train\.lr: must be >= 0, got -1\.0"),
    ("train.lr_milestones", [3, 2], r"train\.lr_milestones: must be strictly increasing, got \[3, 2\]"),
    ("train.lr_step", 3, r"train\.lr_step / train\.lr_milestones: the recipe sets both"),
    ("train.device", "gpu", r"train\.device: 'gpu' is not allowed; allowed: 'auto', 'cpu', 'cuda'"),
    ("train.seed", "zero", r"train\.seed: expected an integer, got 'zero'"),
    ("train.lrr", 0.1, r"unknown key train\.lrr; allowed keys of train: head, setting"),
    ("heads.psp.tauu", 1, r"heads\.psp\.tauu: head 'psp' has no hyperparameter 'tauu'; valid: .*tau_fully"),
    ("heads.cmbs.heads", 4.5, r"heads\.cmbs\.heads: expected a number like the default 4, got 4\.5"),
    ("heads.vscg.psp_tau", "high", r"heads\.vscg\.psp_tau: expected a number like the default 0\.099, got 'high'"),
    ("heads.psp", [1], r"heads\.psp: expected a mapping, got \[1\]"),
    ("heads.foo", {"a": 1}, r"unknown key heads\.foo; allowed keys of heads: .*avel"),
    ("report.heads", ["psp", "foo"], rf"report\.heads\[1\]: unknown head 'foo'; {HEADS}"),
    ("report.settings", ["weak", "semi"], r"report\.settings\[1\]: 'semi' is not allowed"),
    ("report.epochs", 0, r"report\.epochs: must be >= 1, got 0"),
    ("report.seeds", [0, 0], r"report\.seeds: lists a seed twice: \[0, 0\]"),
    ("report.seeds", [1, -2], r"report\.seeds\[1\]: must be an integer >= 0 or null, got -2"),
    ("published.root", "elsewhere", r"published\.root: 'elsewhere' differs from data\.root 'does/not/exist'"),
    ("evaluate.batch_size", 0, r"evaluate\.batch_size: must be >= 1, got 0"),
    ("evaluate.split", "train", r"evaluate\.split: 'train' is not allowed; allowed: 'test', 'val'"),
    ("runtime.data.workers", 0, r"runtime\.data\.workers: must be >= 1, got 0"),
    ("data.workers", 2, r"data\.workers: a runtime knob \(it cannot change an output\); set it as runtime\.data\.workers"),
    ("data.min_duration", -1, r"data\.min_duration: must be >= 0 seconds, got -1\.0"),
    ("data.probe_timeout_s", 0, r"data\.probe_timeout_s: must be > 0, got 0\.0"),
    ("data.root", "", r"data\.root: empty; the AVE-format folder"),
    ("data.rooot", "x", r"unknown key data\.rooot; allowed keys of data: root, min_duration"),
    ("paths.models", " ", r"paths\.models: empty; a folder path is needed"),
    ("synth.width", 161, r"synth\.width/height: even and >= 16 \(H\.264 4:2:0\), got 161x120"),
    ("synth.num_classes", 29, r"synth\.num_classes: 1\.\.28 \(AVE categories\), got 29"),
    ("runtime.synth.workers", 0, r"runtime\.synth\.workers: must be >= 1, got 0"),
    ("synth.noise", 2, r"synth\.noise: must be in 0\.\.1, got 2\.0"),
    ("extract.visual.frames_per_segment", 0, r"extract\.visual\.frames_per_segment: must be >= 1, got 0"),
    ("extract.visual.image_size", 16, r"extract\.visual\.image_size: must be >= 32 or null, got 16"),
    ("extract.common.dtype", "float64", r"extract\.common\.dtype: 'float64' is not allowed; allowed: 'float16', 'float32'"),
    ("extract.models.vgg19.encoder", "vgg91", r"extract\.models\.vgg19\.encoder: unknown encoder 'vgg91'; valid: cnn14, resnet50, timm/, vgg19, vggish"),
    ("extract.models.vgg19.encoder", "timm/not_a_model", r"extract\.models\.vgg19\.encoder: timm has no model 'not_a_model'"),
    ("extract.models.vgg19.weights", "pretrianed", r"extract\.models\.vgg19\.weights: 'pretrianed' is neither pretrained nor random nor a checkpoint path"),
    ("extract.models.vggish.preprocess", "caffe", r"extract\.models\.vggish\.preprocess: 'caffe' applies to visual encoders only"),
    ("extract.models.vgg19.postprocess", "pca", r"extract\.models\.vgg19\.postprocess: 'pca' applies to vggish only"),
    ("extract.models.../evil", {"kind": "visual", "encoder": "vgg19"}, r"extract\.models\.\.\./evil: '\.\./evil' is not a plain name"),
    ("extract.models.vgg19.kind", "audio", r"extract\.models\.vgg19\.kind: 'vgg19' is a visual encoder; an audio one is needed"),
    ("extract.models.vgg19.kind", None, r"extract\.models\.vgg19\.kind: None; allowed: visual, audio"),
    ("extract.visual.sampling_rule", 1, r"unknown key extract\.visual\.sampling_rule; allowed keys of extract\.visual: frames_per_segment"),
    ("extract.models.vgg19.seed", 1.5, r"extract\.models\.vgg19\.seed: expected an integer, got 1\.5"),
    ("finetune.train_splits", ["trian"], r"finetune\.train_splits\[0\]: unknown split 'trian'; allowed: train, val, test"),
    ("finetune.train_splits", [], r"finetune\.train_splits: empty"),
    ("finetune.eval_split", "tst", r"finetune\.eval_split: unknown split 'tst'"),
    ("finetune.eval_split", "train", r"finetune\.eval_split: 'train' is also in train_splits"),
    ("finetune.image_size", 128, r"finetune\.image_size: 128 differs from extract\.visual\.image_size 64"),
    ("finetune.sampling", "ave_reference", r"finetune\.sampling: 'ave_reference' differs from extract\.visual\.sampling 'timestamp'"),
    ("finetune.visual", "cnn14", r"finetune\.visual: 'cnn14' is an audio encoder; a visual one is needed"),
    ("finetune.audio", "vggsh", r"finetune\.audio: unknown encoder 'vggsh'"),
    ("finetune.visual_weights", "randm", r"finetune\.visual_weights: 'randm' is neither pretrained nor random"),
    ("finetune.nproc", 3, r"finetune\.batch_size: 16 is not divisible by nproc=3"),
    ("finetune.momentum", 1.5, r"finetune\.momentum: must be in \[0, 1\), got 1\.5"),
    ("finetune.lr_milestones", [0], r"finetune\.lr_milestones: strictly increasing epochs >= 1, got \[0\]"),
    ("finetune.micro_batch", 100, r"finetune\.micro_batch: 100 exceeds the per-rank batch 16"),
    ("finetune.temperature", 0, r"finetune\.temperature: must be > 0, got 0\.0"),
    ("trian", {}, r"unknown section 'trian'; allowed: paths, synth, data"),
]


def _set(raw: dict, dotted: str, value) -> dict:
    """A copy of ``raw`` with ``dotted`` set (a model name under extract.models may hold dots)."""
    raw = copy.deepcopy(raw)
    if dotted.startswith("extract.models."):
        rest = dotted[len("extract.models."):]
        name, _, field = rest.rpartition(".")
        models = raw["extract"]["models"]
        if field in SPEC_FIELDS:
            models.setdefault(name, {})[field] = value
        else:
            models[rest] = value
        return raw
    *parents, last = dotted.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return raw


def _stage(name: str):
    spec = importlib.util.spec_from_file_location(f"stage_{name}", REPO / "stages" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def stages():
    return {name: _stage(name) for name in STAGES}


@pytest.fixture(scope="module")
def base_params():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"]["root"] = "does/not/exist"  # nothing is there: errors must come before data
    return raw


def _run_main(main, argv, capsys) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("i", range(len(BAD_PARAMS)),
                         ids=[f"{k}={v!r}"[:40] for k, v, _ in BAD_PARAMS])
def test_bad_param_is_one_line_exit_2(i, stages, base_params, tmp_path, capsys):
    key, value, pattern = BAD_PARAMS[i]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(_set(base_params, key, value)))
    section = key.split(".")[1] if key.startswith("runtime.") else key.split(".")[0]
    across = key in ("train.visual", "train.audio", "finetune.image_size", "finetune.sampling")
    stage = "resolve" if across or i % 3 == 0 else READER.get(section, "resolve")
    code, err = _run_main(stages[stage].main, ["--params", str(path)], capsys)
    assert code == 2, (stage, err)
    assert len(err) == 1, err
    assert re.fullmatch(rf"error: {re.escape(str(path))}: {pattern}.*", err[0]), err[0]
    assert not (tmp_path / "does").exists() and not (REPO / "does").exists()


def test_bad_param_values_are_all_distinct():
    assert len(BAD_PARAMS) >= 40
    assert len({(k, repr(v)) for k, v, _ in BAD_PARAMS}) == len(BAD_PARAMS)


# ---------------------------------------------------------------------------------------------
# Input files
# ---------------------------------------------------------------------------------------------
class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def _garbage(tmp_path):
    p = tmp_path / "garbage.pth"
    p.write_bytes(b"not a checkpoint\n" * 128)  # fixed bytes: the same failure on every run
    return p


def _pickle_with_code(tmp_path):
    p = tmp_path / "evil.pth"
    with open(p, "wb") as f:
        pickle.dump({"weight": _RunsCode()}, f)
    return p


def _torch_pickle_with_code(tmp_path):
    import torch
    p = tmp_path / "evil_zip.pt"
    torch.save({"w": _RunsCode()}, p)
    return p


def _bad_safetensors(tmp_path):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    return p


@pytest.mark.parametrize("make, reason", [
    (_garbage, r"not a readable checkpoint: not a checkpoint of tensors \(pickle opcode \d+\); refused by the safe loader"),
    (_pickle_with_code, r"not a readable checkpoint: not a checkpoint of tensors \(pickle opcode \d+\); refused by the safe loader"),
    (_torch_pickle_with_code, r"not a readable checkpoint: it refers to Python code or objects \(posix\.system\), not only tensors; refused"),
    (_bad_safetensors, r"not a readable checkpoint: SafetensorError: .*"),
])
def test_weights_file_that_fails_to_load_names_file_and_reason(make, reason, tmp_path,
                                                               monkeypatch):
    from pipeline.config import InputError
    from pipeline.encoders.spec import ModelSpec
    from pipeline.encoders.base import build_encoder

    monkeypatch.chdir(tmp_path)
    path = make(tmp_path)
    with pytest.raises(InputError) as e:
        build_encoder(ModelSpec("vggish", weights=str(path)), allow_download=False)
    line = one_line(e.value)
    assert re.fullmatch(rf"{re.escape(str(path))}: {reason}", line), line
    assert "weights_only" not in line and "\n" not in str(e.value)
    assert not (tmp_path / "pwned.txt").exists()  # nothing in the file ran


def test_download_error_names_the_key_that_applies(tmp_path, monkeypatch):
    from pipeline.encoders.spec import ModelSpec
    from pipeline.encoders.weights import WeightsNotFoundError
    from pipeline.encoders.base import build_encoder
    from pipeline.encoders.base import lookup
    from pipeline.finetune.run import DOWNLOAD_KEY

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsNotFoundError, match=r"downloads are disabled \(runtime\.extract\.download: false\)"):
        build_encoder(ModelSpec("resnet50", weights="pretrained"), allow_download=False)
    with pytest.raises(WeightsNotFoundError, match=r"downloads are disabled \(runtime\.finetune\.download: false\)"):
        lookup("resnet50")(ModelSpec("resnet50", weights="pretrained"), False,
                           download_key=DOWNLOAD_KEY)


def test_input_file_errors_are_one_line(stages, base_params, tmp_path, capsys):
    main = stages["prepare"].main
    missing = tmp_path / "nope.yaml"
    assert _run_main(main, ["--params", str(missing)], capsys) == (
        2, [f"error: {missing}: params file not found"])
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("train: {head: psp\n  setting: [\n")
    code, err = _run_main(main, ["--params", str(bad_yaml)], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {bad_yaml}: not valid YAML (line")
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    assert _run_main(main, ["--params", str(listing)], capsys) == (
        2, [f"error: {listing}: expected a mapping of sections, got list"])
    # a root without Annotations.txt: the file is named
    params = tmp_path / "params.yaml"
    raw = copy.deepcopy(base_params)
    raw["data"]["root"] = str(tmp_path / "empty")
    raw["paths"]["prepared"] = str(tmp_path / "prepared")
    params.write_text(yaml.safe_dump(raw))
    code, err = _run_main(main, ["--params", str(params)], capsys)
    assert code == 2 and err == [f"error: {tmp_path / 'empty' / 'Annotations.txt'}: no AVE annotation "
                                 "file (expected 'Annotations.txt' with Category&VideoID&Quality&"
                                 "Start&End lines)"]


def test_stage_arguments_are_checked_before_any_work(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    extract, report = _stage("extract"), _stage("report")
    code, err = _run_main(extract.main, ["vgg91", "--params", str(params)], capsys)
    models = ", ".join(yaml.safe_load(params.read_text())["extract"]["models"])
    assert code == 2 and err == [f"error: {params}: extract.models has no model 'vgg91'; it has: "
                                 f"{models}"]
    code, err = _run_main(report.main, ["--params", str(params), "cell", "--head", "../../x",
                                        "--setting", "fully"], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: --head: unknown head '../../x'")
    assert not (tmp_path / "reports").exists()


def test_finetune_on_the_published_route_is_one_line(tmp_path):
    """finetune needs videos: with data.source=features it stops in one line (exit 2) before
    torchrun or any work, instead of a rank's traceback."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"]["source"] = "features"
    raw["finetune"]["nproc"] = 2
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, str(REPO / "stages" / "finetune.py"), "--params", str(path)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: data.source: 'features' has no videos to fine-tune on; the published route runs "
        "`dvc exp run evaluate` (docs/published-features.md)"]


def test_stage_help_describes_every_option():
    """Each stage's --help: the first paragraph of its docstring, whole, and --params described."""
    import ast

    from pipeline.cli import stage_parser

    for script in sorted((REPO / "stages").glob("*.py")):
        source = script.read_text()
        assert "stage_parser(__doc__)" in source, script.name
        text = stage_parser(ast.get_docstring(ast.parse(source))).format_help()
        flat = " ".join(text.split())
        assert "--params FILE the params file the stage reads its sections from" in flat, text
        description = text.split("\n\n")[1]
        assert description.rstrip().endswith((".", ")")), (script.name, description)


@pytest.mark.parametrize("stage, env, debug", [("train", {}, False), ("resolve", {}, False),
                                                ("evaluate", {"AVE_DEBUG": "1"}, True),
                                                ("train", {}, "--debug")])
def test_subprocess_exit_code_and_traceback_only_on_debug(stage, env, debug, base_params, tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(_set(base_params, "train.head", "cmbss")))
    cmd = [sys.executable, str(REPO / "stages" / f"{stage}.py"), "--params", str(path)]
    cmd += ["--debug"] if debug == "--debug" else []
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={**os.environ, **env,
                               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])})
    if debug:
        assert proc.returncode == 1 and "Traceback" in proc.stderr  # python's own exit status
        assert "ConfigError" in proc.stderr
    else:
        assert proc.returncode == 2, proc.stderr
        err = proc.stderr.strip().splitlines()
        assert len(err) == 1 and re.fullmatch(
            rf"error: {re.escape(str(path))}: train\.head: unknown head 'cmbss' \(did you mean cmbs\?\); {HEADS}.*", err[0]), err
        assert proc.stdout == ""


# ---------------------------------------------------------------------------------------------
# Every loader that takes a checkpoint: malicious pickles and a truncated file are one line
# naming the file, exit 2, and nothing in them runs
# ---------------------------------------------------------------------------------------------
MARKER = "payload_ran.txt"  # what each payload would create in the working folder


class _Exec:
    def __reduce__(self):
        return (exec, (f"open({MARKER!r}, 'w').write('ran')",))


class _Payload:
    """A class the file imports: unpickling it would call __setstate__."""

    def __setstate__(self, state):
        Path(MARKER).write_text("ran")


def _evil_system(tmp_path):  # os.system via __reduce__, in torch's zip format
    import torch
    p = tmp_path / "system.pt"
    torch.save({"model": {"w": _RunsCodeMarker()}}, p)
    return p


class _RunsCodeMarker:
    def __reduce__(self):
        return (os.system, (f"echo ran > {MARKER}",))


def _evil_exec(tmp_path):  # builtins.exec via __reduce__, a plain pickle
    p = tmp_path / "exec.pth"
    p.write_bytes(pickle.dumps({"model": _Exec()}, protocol=2))
    return p


def _evil_class(tmp_path):  # a class import (GLOBAL + BUILD), in torch's zip format
    import torch
    p = tmp_path / "class.pt"
    obj = _Payload()
    obj.__dict__["x"] = 1
    torch.save({"format": 1, "model": obj}, p)
    return p


def _pickled_module(tmp_path):  # torch.save(model): a whole nn.Module
    import torch
    p = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), p)
    return p


def _truncated(tmp_path):  # a real checkpoint cut in half (a copy interrupted)
    import torch
    p = tmp_path / "truncated.pt"
    torch.save({"format": 1, "model": {"w": torch.zeros(64, 64)}}, p)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return p


CODE = r"it refers to Python code or objects \({}\), not only tensors; refused"
BAD_CHECKPOINTS = {  # kind: (maker, the reason printed after "not a readable <what>: ")
    "os.system": (_evil_system, CODE.format(r"posix\.system")),
    "exec": (_evil_exec, CODE.format(r"[\w.]*exec")),
    "class": (_evil_class, CODE.format(r"test_errors\._Payload")),
    "nn.Module": (_pickled_module, CODE.format(r"torch\.nn\.modules\.linear\.Linear")),
    "truncated": (_truncated, r"truncated or damaged \(a torch zip file without its end; \w+\)"),
}


def _loader_cli(loader: str, bad: Path, tmp_path: Path, base_params: dict):
    """``(main, argv, expected file)`` that hands ``bad`` to ``loader``."""
    from pipeline.cli import stage_main

    if loader == "localize":
        from pipeline.localize import main
        video = tmp_path / "clip.mp4"
        video.write_bytes(b"\0" * 64)  # exists: the checkpoint is read before any decoding
        return main, [str(video), "--model", str(bad), "--out", str(tmp_path / "out")], bad
    if loader == "evaluate":
        models = tmp_path / "models"
        models.mkdir(exist_ok=True)
        (models / "best.pt").write_bytes(bad.read_bytes())
        raw = copy.deepcopy(base_params)
        raw["paths"]["models"] = str(models)
        raw["train"]["device"] = "cpu"
        params = tmp_path / "params.yaml"
        params.write_text(yaml.safe_dump(raw))
        return _stage("evaluate").main, ["--params", str(params)], models / "best.pt"
    if loader == "import_checkpoint":
        from pipeline.import_checkpoint import main
        return main, ["--head", "psp", "--setting", "fully", str(bad), str(tmp_path / "best.pt")], bad
    if loader == "train resume":
        from pipeline.training import checkpoint as ckpt_io

        # the train loop reads its resume point with ckpt_io.load; the stage wraps it in stage_main
        return stage_main(lambda argv: ckpt_io.load(bad)), [], bad
    if loader == "encoder weights":
        from pipeline.encoders.spec import ModelSpec
        from pipeline.encoders.base import build_encoder
        return (stage_main(lambda argv: build_encoder(ModelSpec("vggish", weights=str(bad)),
                                                      allow_download=False)), [], bad)
    raise AssertionError(loader)


@pytest.mark.parametrize("kind", list(BAD_CHECKPOINTS))
@pytest.mark.parametrize("loader", ["localize", "evaluate", "import_checkpoint", "train resume",
                                    "encoder weights"])
def test_bad_checkpoint_is_one_line_naming_it_and_never_runs(loader, kind, base_params, tmp_path,
                                                             monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    make, reason = BAD_CHECKPOINTS[kind]
    main, argv, named = _loader_cli(loader, make(tmp_path), tmp_path, base_params)
    capsys.readouterr()
    code, err = _run_main(main, argv, capsys)
    assert code == 2 and len(err) == 1, err
    what = r"(training checkpoint|state dict|checkpoint)"
    assert re.fullmatch(rf"error: {re.escape(str(named))}: not a readable {what}: {reason}.*",
                        err[0]), err
    assert "weights_only" not in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / MARKER).exists()  # nothing in the file ran


def test_checkpoint_with_non_finite_weights_is_never_written_nor_read(tmp_path, capsys):
    import torch

    from pipeline.training import checkpoint as ckpt_io

    ckpt = {"format": ckpt_io.FORMAT, "model": {"w": torch.tensor([1.0, float("nan")])}}
    from pipeline.config import InputError

    with pytest.raises(InputError, match=r"best\.pt: not written: 1 non-finite weights \(NaN or inf\) in w"):
        ckpt_io.save(ckpt, tmp_path / "best.pt")
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary file
    torch.save(ckpt, tmp_path / "nan.pt")  # a file made elsewhere
    from pipeline.cli import stage_main
    code, err = _run_main(stage_main(lambda argv: ckpt_io.load(tmp_path / "nan.pt")), [], capsys)
    assert (code, err) == (2, [f"error: {tmp_path / 'nan.pt'}: 1 non-finite weights (NaN or inf) in w"])


# ---------------------------------------------------------------------------------------------
# HDF5 files: truncated, or without the expected dataset
# ---------------------------------------------------------------------------------------------
def _store(path: Path, rows: int = 4, dim: int = 6) -> Path:
    import numpy as np

    from pipeline.features.store import write_features
    return write_features(path, np.ones((rows, 10, dim), np.float32), None,
                          {"model": "m", "created_by": "test"})


def _truncated_h5(tmp_path):
    p = _store(tmp_path / "vggish.h5")
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return p, r"not a readable HDF5 file \(truncated file: eof = \d+, .*\)"


def _wrong_dataset_h5(tmp_path):
    import h5py
    import numpy as np
    p = tmp_path / "vggish.h5"
    with h5py.File(p, "w") as f:
        f["features"] = np.ones((4, 10, 6), np.float32)
    return p, r"no 'avadataset' dataset \(found: features\)"


def _not_h5(tmp_path):
    p = tmp_path / "vggish.h5"
    p.write_bytes(b"\x89HDF\r\n" + b"\0" * 100)
    return p, r"not a readable HDF5 file \(.*\)"


@pytest.mark.parametrize("make", [_truncated_h5, _wrong_dataset_h5, _not_h5])
@pytest.mark.parametrize("reader", ["load_features", "import_community", "export-community",
                                    "read_h5"])
def test_bad_hdf5_file_is_one_line_naming_it(reader, make, tmp_path, capsys):
    import numpy as np

    from pipeline.cli import stage_main
    from pipeline.features.community import export_community
    from pipeline.features.store import import_community, load_features, write_features
    from pipeline.files import read_h5

    bad, reason = make(tmp_path)
    if reader == "export-community":  # the visual file is good: the audio one is named
        write_features(tmp_path / "vis.h5", np.ones((4, 10, 2, 2, 3), np.float32), None, {"model": "m"})
    call = {"load_features": lambda: load_features(bad),
            "import_community": lambda: import_community(bad, tmp_path / "out.h5", "audio"),
            "export-community": lambda: export_community(tmp_path / "vis.h5", bad, tmp_path,
                                                         tmp_path / "export"),
            "read_h5": lambda: read_h5(bad, "avadataset")}[reader]
    code, err = _run_main(stage_main(lambda argv: call()), [], capsys)
    assert code == 2 and len(err) == 1, err
    assert re.fullmatch(rf"error: {re.escape(str(bad))}: {reason}", err[0]), err
    assert not (tmp_path / "out.h5").exists() and not (tmp_path / "export").exists()
