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

SPEC_FIELDS = set(ModelSpec.__dataclass_fields__)

REPO = Path(__file__).resolve().parents[1]
STAGES = ("prepare", "train", "evaluate", "finetune", "synth")
HEADS = r"registered: [a-z0-9_, ]*avel, [a-z0-9_, ]*psp"  # the registry's list (tests add heads)

# (dotted key path, new value, regex of the message after "error: <params file>: ")
BAD_PARAMS = [
    ("train.head", "cmbss", rf"train\.head: unknown head 'cmbss'; {HEADS}"),
    ("train.setting", "cml", r"train\.setting: head 'psp' has no 'cml' setting; it supports: fully, weak"),
    ("train.setting", "semi", r"train\.setting: 'semi' is not allowed; allowed: 'fully', 'weak', 'cml'"),
    ("train.visual", "../x", r"train\.visual: '\.\./x' is not a plain name"),
    ("train.visual", "vggish", r"train\.visual \('vggish': extract\.models\.vggish\.encoder\): 'vggish' is an audio encoder; a visual one is needed"),
    ("train.audio", "resnet50", r"train\.audio \('resnet50': .*\): 'resnet50' is an visual encoder; a audio one is needed"),
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
    ("heads.foo", {"a": 1}, r"unknown key heads\.foo; allowed keys of heads: avel"),
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
    ("extract.frames_per_segment", 0, r"extract\.frames_per_segment: must be >= 1, got 0"),
    ("extract.image_size", 16, r"extract\.image_size: must be >= 32 or null, got 16"),
    ("extract.dtype", "float64", r"extract\.dtype: 'float64' is not allowed; allowed: 'float16', 'float32'"),
    ("extract.models.vgg19.encoder", "vgg91", r"extract\.models\.vgg19\.encoder: unknown encoder 'vgg91'; valid: cnn14, resnet50, timm/, vgg19, vggish"),
    ("extract.models.vgg19.encoder", "timm/not_a_model", r"extract\.models\.vgg19\.encoder: timm has no model 'not_a_model'"),
    ("extract.models.vgg19.weights", "pretrianed", r"extract\.models\.vgg19\.weights: 'pretrianed' is neither pretrained nor random nor a checkpoint path"),
    ("extract.models.vggish.preprocess", "caffe", r"extract\.models\.vggish\.preprocess: 'caffe' applies to visual encoders only"),
    ("extract.models.vgg19.postprocess", "pca", r"extract\.models\.vgg19\.postprocess: 'pca' applies to vggish only"),
    ("extract.models.../evil", {"encoder": "vgg19"}, r"extract\.models\.\.\./evil: '\.\./evil' is not a plain name"),
    ("extract.models.vgg19.seed", 1.5, r"extract\.models\.vgg19\.seed: expected an integer, got 1\.5"),
    ("finetune.train_splits", ["trian"], r"finetune\.train_splits\[0\]: unknown split 'trian'; allowed: train, val, test"),
    ("finetune.train_splits", [], r"finetune\.train_splits: empty"),
    ("finetune.eval_split", "tst", r"finetune\.eval_split: unknown split 'tst'"),
    ("finetune.eval_split", "train", r"finetune\.eval_split: 'train' is also in train_splits"),
    ("finetune.image_size", 128, r"finetune\.image_size: 128 differs from extract\.image_size 64"),
    ("finetune.sampling", "ave_reference", r"finetune\.sampling: 'ave_reference' differs from extract\.sampling 'timestamp'"),
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
    stage = STAGES[i % len(STAGES)]
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
    from pipeline.encoders import ModelSpec, WeightsLoadError, build_encoder

    monkeypatch.chdir(tmp_path)
    path = make(tmp_path)
    with pytest.raises(WeightsLoadError) as e:
        build_encoder(ModelSpec("vggish", weights=str(path)), allow_download=False)
    line = one_line(e.value)
    assert re.fullmatch(rf"{re.escape(str(path))}: {reason}", line), line
    assert "weights_only" not in line and "\n" not in str(e.value)
    assert not (tmp_path / "pwned.txt").exists()  # nothing in the file ran


def test_download_error_names_the_key_that_applies(tmp_path, monkeypatch):
    from pipeline.encoders import ModelSpec, WeightsNotFoundError, build_encoder
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


@pytest.mark.parametrize("stage, env, debug", [("train", {}, False), ("prepare", {}, False),
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
            rf"error: {re.escape(str(path))}: train\.head: unknown head 'cmbss'; {HEADS}.*", err[0]), err
        assert proc.stdout == ""
