"""Hostile and careless input: every file stays inside its root, any text encoding, every value
checked before work starts, mismatches and OS errors as one line with exit status 2.

Each case runs the entry point a user runs (a stage's ``main``, the converter, ``localize``)
and checks the one line it prints; the read-only and full-disk cases run the stage in a
private mount namespace (``unshare -rm``) over a small tmpfs.
"""
from __future__ import annotations

import importlib.util
import os
import random
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from pipeline.data import ave
from pipeline.data.synth import AVE_CATEGORIES

REPO = Path(__file__).resolve().parents[1]
SECRET = "root:x:0:0:SECRET-OUTSIDE-THE-ROOT:/root:/bin/bash"
LINES = [f"{AVE_CATEGORIES[i % 3]}&vid{i:02d}xxxxxx&good&{i % 4}&{5 + i % 5}" for i in range(12)]


def _stage(name: str):
    spec = importlib.util.spec_from_file_location(f"hostile_stage_{name}", REPO / "stages" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_main(main, argv, capsys) -> tuple[int, list[str]]:
    """Exit status and stderr lines of an entry point (stage_main turns errors into both)."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code, capsys.readouterr().err.strip().splitlines()


def one_error(main, argv, capsys, pattern: str) -> str:
    """The entry point exits 2 with exactly one line, ``error: <pattern>``; returns it."""
    code, err = run_main(main, argv, capsys)
    assert code == 2 and len(err) == 1, (code, err)
    assert re.fullmatch(f"error: {pattern}", err[0]), err[0]
    assert "internal" not in err[0] and "Traceback" not in err[0]
    print(err[0])  # shown by pytest -rP: the line each case prints
    return err[0]


def make_root(folder: Path, lines=LINES, header: bool = True) -> Path:
    """An AVE-format root (annotation and split files, no videos)."""
    folder.mkdir(parents=True, exist_ok=True)
    text = ("Category&VideoID&Quality&StartTime&EndTime\n" if header else "") + "\n".join(lines) + "\n"
    (folder / "Annotations.txt").write_text(text)
    for name, part in (("trainSet.txt", lines[:8]), ("valSet.txt", lines[8:10]),
                       ("testSet.txt", lines[10:])):
        (folder / name).write_text("\n".join(part) + "\n")
    return folder


def write_params(tmp_path: Path, root: Path, **sections) -> Path:
    """The repository's params.yaml with ``data.root`` = ``root``, no video read, and every
    output folder under ``tmp_path/out``; ``sections`` are merged over it."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"].update(root=str(root), source="features")
    raw["paths"] = {k: str(tmp_path / "out" / k) for k in raw["paths"]}
    for name, values in sections.items():
        raw[name] = {**(raw.get(name) or {}), **values}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def prepare_stage():
    return _stage("prepare")


@pytest.fixture
def outside(tmp_path) -> Path:
    """A file outside every root, holding a line that must never reach an output."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "passwd").write_text(SECRET + "\n")
    return folder / "passwd"


def _all_output_text(folder: Path) -> str:
    return "".join(p.read_bytes().decode("latin-1") for p in folder.rglob("*") if p.is_file())


# --------------------------------------------------------------------------------------------
# 1. Containment
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["Annotations.txt", "trainSet.txt", "cml/testSet.txt"])
def test_a_text_file_outside_the_root_is_not_read(name, prepare_stage, outside, tmp_path, capsys):
    root = make_root(tmp_path / "root")
    (root / "cml").mkdir()
    for split in ("trainSet.txt", "valSet.txt", "testSet.txt"):
        shutil.copy(root / split, root / "cml" / split)
    (root / name).unlink()
    os.symlink(outside, root / name)
    params = write_params(tmp_path, root)
    line = one_error(prepare_stage.main, ["--params", str(params)], capsys,
                     rf"{re.escape(str(root / name))}: the AVE text file resolves to "
                     rf"{re.escape(str(outside))}, outside {re.escape(str(root))}; not read")
    assert SECRET not in line
    assert not (tmp_path / "out").exists() or SECRET not in _all_output_text(tmp_path / "out")


def test_prepare_opens_nothing_outside_the_root(ave_root, tmp_path):
    """An audit hook records every file the process opens: with a video and the published label
    file leading outside, prepare runs, and no open() reaches outside the root; report.md says
    what was left out and holds nothing of the outside files."""
    root = tmp_path / "root"
    shutil.copytree(ave_root, root, symlinks=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    video = sorted((root / "AVE").glob("*.mp4"))[0]
    shutil.move(video, outside / video.name)
    os.symlink(outside / video.name, video)
    (outside / "passwd").write_text(SECRET + "\n")
    background = root / "backgroundSet.txt"
    kept = background.read_bytes() if background.exists() else b""
    background.unlink(missing_ok=True)
    os.symlink(outside / "passwd", background)  # read after the annotations
    out = tmp_path / "prepared"
    script = f"""
import sys
opened = []
sys.addaudithook(lambda ev, args: opened.append(str(args[0])) if ev == "open" and isinstance(args[0], (str, bytes)) else None)
from pipeline.data.prepare import prepare
from pipeline.config import InputError
try:
    prepare({str(root)!r}, {str(out)!r}, workers=1, timeout_s=30.0)
except InputError as e:
    print("REFUSED", e)
import os
print("OPENED", [p for p in opened if os.path.realpath(p).startswith({str(outside)!r})])
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=300)
    assert "OPENED []" in proc.stdout, proc.stdout + proc.stderr
    assert f"REFUSED {root / 'backgroundSet.txt'}: the AVE text file resolves to" in proc.stdout
    # with the real background list, prepare runs; the outside video is never opened
    background.unlink()
    background.write_bytes(kept)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=300)
    assert "OPENED []" in proc.stdout and "REFUSED" not in proc.stdout, proc.stdout + proc.stderr
    report = (out / "report.md").read_text()
    assert f"`{video.stem}` ()" in report and "outside" in report and SECRET not in report
    assert SECRET not in _all_output_text(out)


def test_a_published_file_outside_the_root_is_not_imported(prepared_dir, outside, tmp_path, capsys):
    root = tmp_path / "root"
    root.mkdir()
    with h5py.File(outside.parent / "visual_feature.h5", "w") as f:
        f.create_dataset("avadataset", data=np.zeros((13, 10, 2, 2, 8), np.float32))
    os.symlink(outside.parent / "visual_feature.h5", root / "visual_feature.h5")
    params = write_params(tmp_path, root, published={"files": {"pub": {"file": "visual_feature.h5"}}})
    raw = yaml.safe_load(params.read_text())
    raw["paths"]["prepared"] = str(prepared_dir)
    params.write_text(yaml.safe_dump(raw))
    one_error(_stage("import_features").main, ["pub", "--params", str(params)], capsys,
              rf"{re.escape(str(root / 'visual_feature.h5'))}: the published feature file resolves "
              rf"to {re.escape(str(outside.parent / 'visual_feature.h5'))}, outside "
              rf"{re.escape(str(root))}; not read")
    assert not (tmp_path / "out" / "features" / "pub.h5").exists()


def test_params_named_weights_outside_the_project_are_not_read(outside, tmp_path, capsys):
    project = tmp_path / "project"
    project.mkdir()
    torch.save({"w": torch.zeros(1)}, outside.parent / "vgg.pth")
    os.symlink(outside.parent / "vgg.pth", project / "vgg.pth")
    params = write_params(project, project / "raw",
                          extract={"models": {"vgg19": {"encoder": "vgg19", "kind": "visual", "weights": "vgg.pth"}}})
    one_error(_stage("extract").main, ["vgg19", "--params", str(params)], capsys,
              rf"{re.escape(str(project / 'vgg.pth'))}: the weights file "
              rf"\(extract\.models\.vgg19\.weights\) resolves to "
              rf"{re.escape(str(outside.parent / 'vgg.pth'))}, outside {re.escape(str(project))}; not read")


# --------------------------------------------------------------------------------------------
# 2. Text in any encoding, bounded
# --------------------------------------------------------------------------------------------
def _load(root: Path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ann = ave.load_annotations(root)
    return ann, [str(w.message) for w in caught]


def test_a_line_that_does_not_decode_is_a_warning_and_the_others_survive(tmp_path):
    root = make_root(tmp_path / "root")
    data = (root / "Annotations.txt").read_bytes().split(b"\n")
    data[3] = data[3].replace(b"&good&", b"&go\xffod&")  # the 3rd data line (file line 4)
    (root / "Annotations.txt").write_bytes(b"\n".join(data))
    ann, msgs = _load(root)
    assert f"{root / 'Annotations.txt'}:4: not UTF-8 text (byte 0xff at column 20); line left out" in msgs
    assert ann.num_lines == 12 and len(ann.samples) == 11  # its row stays (all background)
    assert 2 not in {s.index for s in ann.samples} and ann.labels()[2, :, -1].all()
    assert ann.splits["train"] == [0, 1, 3, 4, 5, 6, 7]  # its split line matches nothing
    assert any("trainSet.txt:3: its annotation line" in m or "trainSet.txt:3: line not found" in m
               for m in msgs), msgs


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-8-sig"])
def test_text_with_a_bom_reads_as_utf8(encoding, tmp_path):
    plain = _load(make_root(tmp_path / "plain"))[0]
    root = make_root(tmp_path / "bom")
    for p in root.glob("*.txt"):
        text = p.read_text()
        data = text.encode(encoding)
        if encoding == "utf-16-be":
            data = b"\xfe\xff" + data
        p.write_bytes(data)
    ann, msgs = _load(root)
    assert msgs == [] and ann.samples == plain.samples and ann.splits == plain.splits


def test_random_bytes_are_not_text(prepare_stage, tmp_path, capsys):
    root = make_root(tmp_path / "root")
    (root / "Annotations.txt").write_bytes(random.Random(0).randbytes(2**20))
    params = write_params(tmp_path, root)
    one_error(prepare_stage.main, ["--params", str(params)], capsys,
              rf"{re.escape(str(root / 'Annotations.txt'))}: not a text file \(\d+ of \d+ lines "
              r"are not UTF-8 text\); not read")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("labels.h5"))


@pytest.mark.parametrize("kind", ["garbage lines", "one category a line"])
def test_a_megabyte_of_text_garbage_is_refused_before_anything_is_written(kind, prepare_stage,
                                                                          tmp_path, capsys):
    rng = random.Random(1)
    letters = "abcdefghijklmnopqrstuvwxyz &0123456789"
    if kind == "garbage lines":
        lines = ["".join(rng.choice(letters) for _ in range(60)) for _ in range(2**20 // 61)]
        pattern = r"\d+ of \d+ lines are not Category&VideoID&Quality&StartTime&EndTime lines; " \
                  r"not an AVE annotation file"
    else:
        lines = [f"cat{i}&vid{i}&good&0&5" for i in range(2**20 // 25)]
        pattern = r"\d+ lines x \d+ categories would make a \d+ MB labels\.h5 \(AVE: 4143 x 28, " \
                  r"4\.8 MB; limit 64 MB\); not an AVE annotation file"
    root = make_root(tmp_path / "root", lines)
    params = write_params(tmp_path, root)
    one_error(prepare_stage.main, ["--params", str(params)], capsys,
              rf"{re.escape(str(root / 'Annotations.txt'))}: {pattern}")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.h5"))


@pytest.mark.parametrize("what", ["size", "line"])
def test_a_file_far_beyond_ave_is_refused(what, prepare_stage, tmp_path, capsys):
    root = make_root(tmp_path / "root")
    path = root / "Annotations.txt"
    if what == "size":
        with open(path, "ab") as f:
            f.truncate(9 * 2**20)  # 9 MB (AVE's: 144 KB)
        pattern = r"9,437,184 bytes, more than the 8,388,608 a text file of this kind can have; not read"
    else:
        path.write_text(path.read_text() + "Bark&" + "x" * 5000 + "&good&0&5\n")
        pattern = r"a line of 5,014 bytes, more than 4,096; not a text file of this kind; not read"
    params = write_params(tmp_path, root)
    where = re.escape(str(path)) + (":14" if what == "line" else "")
    one_error(prepare_stage.main, ["--params", str(params)], capsys, rf"{where}: {pattern}")


def test_params_with_a_latin1_byte(prepare_stage, tmp_path, capsys):
    params = write_params(tmp_path, tmp_path / "root")
    params.write_bytes(b"# caf\xe9 au lait\n" + params.read_bytes())
    one_error(prepare_stage.main, ["--params", str(params)], capsys,
              rf"{re.escape(str(params))}:1: not UTF-8 text \(byte 0xe9 at column 6\); a params "
              r"file must be UTF-8 text")


# --------------------------------------------------------------------------------------------
# 3. Every value checked at load
# --------------------------------------------------------------------------------------------
BAD_VALUES = [
    ("train:\n  lr: .nan\n", r"train\.lr: must be a finite number, got nan"),
    ("train:\n  lr: .inf\n", r"train\.lr: must be a finite number, got inf"),
    ("train:\n  seed: -1\n", r"train\.seed: must be >= 0, got -1"),
    ("train:\n  seed: 4294967296\n", r"train\.seed: must be <= 4294967295, got 4294967296"),
    ("train:\n  weight_decay: -0.1\n", r"train\.weight_decay: must be >= 0, got -0\.1"),
    ("train:\n  clip_grad: .nan\n", r"train\.clip_grad: must be a finite number, got nan"),
    ("finetune:\n  temperature: 0\n", r"finetune\.temperature: must be > 0, got 0\.0"),
    ("synth:\n  width: 100000000000\n", r"synth\.width: must be at most 2147483647 in size, got 100000000000"),
    ("train: [1, 2]\n", r"train: expected a mapping, got \[1, 2\]"),
    ("train: 5\n", r"train: expected a mapping, got 5"),
    ("heads:\n  psp:\n    tau_fully: .nan\n", r"heads\.psp\.tau_fully: must be a finite number, got nan"),
    ("heads:\n  psp:\n    dropout: 1.5\n", r"heads\.psp\.dropout: must be < 1, got 1\.5"),
    ("heads:\n  psp:\n    dropout: 1\n", r"heads\.psp\.dropout: must be < 1, got 1"),
    ("heads:\n  cmbs:\n    alpha: abc\n", r"heads\.cmbs\.alpha: expected a number, got 'abc'"),
    ("train:\n  lr: 0.1\n  epochs: 3\n  lr: 0.2\n",
     r"train\.lr: duplicate key \(lines \d+ and \d+; YAML would keep the last silently\)"),
]


@pytest.mark.parametrize("text,pattern", BAD_VALUES, ids=[p.split(":")[0] for _, p in BAD_VALUES])
def test_a_bad_value_is_one_line_naming_the_key(text, pattern, tmp_path, capsys):
    """Stage ``resolve`` checks every section before any other stage runs."""
    params = write_params(tmp_path, tmp_path / "root")
    raw = yaml.safe_load(params.read_text())
    for section in yaml.safe_load(text.replace("lr: 0.2\n", "")):
        raw.pop(section, None)
    params.write_text(yaml.safe_dump(raw, sort_keys=False) + text)
    one_error(_stage("resolve").main, ["--params", str(params)], capsys,
              rf"{re.escape(str(params))}: {pattern}")


@pytest.fixture
def converter_inputs(tmp_path):
    """A root with AVE's 28 categories and the authors' state dicts of small CMBS and CACE
    models and of PSP (the converter's inputs)."""
    sys.path.insert(0, str(REPO / "tests"))
    import authors_reference as R
    import cmbs_authors
    small = dict(cv=24, ca=8, fc=16, hidden=12, d=16, enc_ff=32, dec_ff=24, classes=28)
    lines = [f"{c}&vid{i:02d}&good&0&5" for i, c in enumerate(AVE_CATEGORIES)]
    root = make_root(tmp_path / "ave", lines)
    torch.save(cmbs_authors.random_state_dict(cmbs_authors.cmbs_layout("fully", **small), seed=5,
                                              dtype=torch.float32), tmp_path / "cmbs.pth")
    torch.save(cmbs_authors.random_state_dict(cmbs_authors.cace_layout(**small, a_fc=6), seed=5,
                                              dtype=torch.float32), tmp_path / "cace.pth")
    torch.save(R.random_state_dict(R.layout("psp", "fully")), tmp_path / "psp.pth")
    return root, tmp_path


CONVERTER = [
    (["--head", "cmbs", "--setting", "fully", "--set", "alpha=abc"], "cmbs",
     r"--set alpha: expected a number, got 'abc'"),
    (["--head", "psp", "--setting", "fully", "--set", "tau_fully=.nan"], "psp",
     r"--set tau_fully: must be a finite number, got nan"),
    (["--head", "psp", "--setting", "fully", "--set", "dropout=-1"], "psp",
     r"--set dropout: must be >= 0, got -1"),
    (["--head", "psp", "--setting", "fully", "--set", "embed_hidden=0"], "psp",
     r"--set embed_hidden: must be >= 1, got 0"),
    (["--head", "cace", "--setting", "weak"], "cace",
     r"--setting: head 'cace' has no 'weak' setting; it supports: fully"),
    (["--head", "cmbs", "--setting", "fully", "--set", "d_model=32"], "cmbs",
     r"{src}: cmbs \(fully\): 'd_model' is fixed by the authors' checkpoint \(\d+\); --set d_model=32 "
     r"contradicts it"),
    (["--head", "cmbs", "--setting", "fully", "--set", "heads=3"], "cmbs",
     r"{src}: cmbs \(fully\) cannot be built with \{{'heads': 3\}}: embed_dim must be divisible by num_heads"),
    (["--head", "psp", "--setting", "fully", "--set", "embed_hidden=100"], "psp",
     r"{src}: psp \(fully\): 'embed_hidden' is fixed by the authors' checkpoint \(256\); --set "
     r"embed_hidden=100 contradicts it"),
]


@pytest.mark.parametrize("args,src,pattern", CONVERTER, ids=[" ".join(a[1:]) for a, _, _ in CONVERTER])
def test_converter_values_are_checked_as_params(args, src, pattern, converter_inputs, capsys):
    from pipeline.import_checkpoint import main

    root, folder = converter_inputs
    src_path = folder / f"{src}.pth"
    one_error(main, ["--ave-root", str(root), *args, str(src_path), str(folder / "best.pt")], capsys,
              pattern.format(src=re.escape(str(src_path))))
    assert not (folder / "best.pt").exists()


# --------------------------------------------------------------------------------------------
# 4. Mismatches before work
# --------------------------------------------------------------------------------------------
def test_evaluate_refuses_features_of_another_width(prepared_dir, tmp_path, capsys):
    """A checkpoint trained on 128-d audio, evaluated with a 100-d vggish.h5."""
    from pipeline.heads import build_head, count_parameters
    from pipeline.features.store import write_features
    from pipeline.training import checkpoint as ckpt_io

    n = len(h5py.File(prepared_dir / "labels.h5", "r")["avadataset"])
    classes = h5py.File(prepared_dir / "labels.h5", "r")["avadataset"].shape[-1] - 1
    head = build_head("audio_only", setting="fully", visual_dim=8, audio_dim=128, num_classes=classes)
    ckpt = {"format": ckpt_io.FORMAT, "head": "audio_only", "setting": "fully",
            "hparams": dict(head.hparams), "dims": {"visual_dim": 8, "audio_dim": 128,
                                                    "num_classes": classes},
            "recipe": {}, "params": {"train": {"visual": "vgg19", "audio": "vggish"}}, "epoch": 0,
            "step": 0, "val_accuracy": 0.5, "train_seconds": 0.0,
            "num_parameters": count_parameters(head), "categories": [], "feature_norm": None,
            "model": head.state_dict()}
    models, features = tmp_path / "models", tmp_path / "features"
    ckpt_io.save(ckpt, models / "best.pt")
    features.mkdir()
    write_features(features / "vgg19.h5", np.zeros((n, 10, 2, 2, 8), np.float32),
                   np.ones(n, bool), {"kind": "visual"})
    write_features(features / "vggish.h5", np.zeros((n, 10, 100), np.float32), np.ones(n, bool),
                   {"kind": "audio"})
    params = write_params(tmp_path, tmp_path / "root")
    raw = yaml.safe_load(params.read_text())
    raw["paths"].update(prepared=str(prepared_dir), models=str(models), features=str(features))
    raw["train"].update(head="audio_only", visual="vgg19", audio="vggish")
    params.write_text(yaml.safe_dump(raw))
    one_error(_stage("evaluate").main, ["--params", str(params)], capsys,
              rf"{re.escape(str(features / 'vggish.h5'))}: audio features of width 100 \(shape "
              rf"\(10, 100\)\), but {re.escape(str(models / 'best.pt'))} was trained on audio "
              r"features of width 128")


@pytest.mark.parametrize("entry", [{"file": "visual_feature.h5"},
                                   {"file": "my_feature.h5", "encoder": "vgg19"}])
def test_a_published_file_of_the_wrong_kind_is_refused_at_import(entry, prepared_dir, tmp_path,
                                                                 capsys):
    """A pooled visual file (N, 10, 512) reads as audio by its shape; its name or encoder says
    visual: refused at import, not in train."""
    root = tmp_path / "root"
    root.mkdir()
    n = len(h5py.File(prepared_dir / "labels.h5", "r")["avadataset"])
    with h5py.File(root / entry["file"], "w") as f:
        f.create_dataset("avadataset", data=np.zeros((n, 10, 512), np.float32))
    params = write_params(tmp_path, root, published={"files": {"pub": entry}})
    raw = yaml.safe_load(params.read_text())
    raw["paths"]["prepared"] = str(prepared_dir)
    params.write_text(yaml.safe_dump(raw))
    why = (r"published\.files\.pub\.file: visual_feature\.h5, AVE's visual file name"
           if "encoder" not in entry else r"published\.files\.pub\.encoder: vgg19")
    one_error(_stage("import_features").main, ["pub", "--params", str(params)], capsys,
              rf"{re.escape(str(root / entry['file']))}: shape \({n}, 10, 512\) is audio features, "
              rf"but it is imported as visual features \({why}\); not imported")


def test_encoder_weights_holding_nan_are_refused_before_extraction(tmp_path, capsys):
    from pipeline.cli import stage_main
    from pipeline.encoders.base import build_encoder
    from pipeline.encoders.spec import ModelSpec

    enc = build_encoder(ModelSpec("vggish", weights="random"), allow_download=False)
    state = enc.export_state_dict()
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    main = stage_main(lambda argv: build_encoder(ModelSpec("vggish", weights=str(tmp_path / "nan.pth")),
                                                 allow_download=False))
    one_error(main, [], capsys, rf"{re.escape(str(tmp_path / 'nan.pth'))}: 1 non-finite weights "
                                rf"\(NaN or inf\) in {re.escape(key)}")


# --------------------------------------------------------------------------------------------
# 5. OS errors as user errors
# --------------------------------------------------------------------------------------------
def _unshare_works() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


needs_unshare = pytest.mark.skipif(not _unshare_works(), reason="no unprivileged mount namespace "
                                   "(unshare -rm) to mount a read-only or full tmpfs")


def in_namespace(mount: Path, setup: str, argv: list[str], cwd: Path) -> tuple[int, list[str]]:
    """Run ``python argv`` with a fresh tmpfs at ``mount`` (``setup``: shell run after mounting,
    e.g. making it read-only or filling it) in a private mount namespace."""
    mount.mkdir(parents=True, exist_ok=True)
    cmd = " ".join(f"'{a}'" for a in [sys.executable, *argv])
    script = f"mount -t tmpfs -o size=256k tmpfs '{mount}' && {setup} && exec {cmd}"
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=cwd, timeout=300)
    return proc.returncode, proc.stderr.strip().splitlines()


READ_ONLY = [
    ("prepare", [], "prepared", "{out}"),
    ("train", [], "models", "{out}/models"),
    ("extract", ["vgg19"], "features", "{out}/features"),
    ("evaluate", [], "reports", "{out}/reports/evaluate"),
]


@needs_unshare
@pytest.mark.parametrize("stage,args,folder,named", READ_ONLY, ids=[s for s, *_ in READ_ONLY])
def test_a_read_only_output_folder_is_one_line_before_work(stage, args, folder, named, tmp_path):
    out = tmp_path / "out"
    params = write_params(tmp_path, make_root(tmp_path / "root"))
    if stage == "prepare":
        raw = yaml.safe_load(params.read_text())
        raw["paths"]["prepared"] = str(out / "prepared")
        params.write_text(yaml.safe_dump(raw))
    code, err = in_namespace(out, f"mount -o remount,ro '{out}'",
                             [str(REPO / "stages" / f"{stage}.py"), *args, "--params", str(params)],
                             tmp_path)
    where = re.escape(named.format(out=out))
    print(err)
    assert code == 2 and len(err) == 1, (code, err)
    assert re.fullmatch(rf"error: {where}: output folder not writable \(Read-only file system\); "
                        r"nothing was written", err[0]), err[0]


@needs_unshare
def test_localize_into_a_read_only_folder(ave_root, tmp_path):
    out = tmp_path / "out"
    video = sorted((ave_root / "AVE").glob("*.mp4"))[0]
    code, err = in_namespace(out, f"mount -o remount,ro '{out}'",
                             ["-m", "pipeline.localize", "--model", str(tmp_path / "absent.pt"),
                              "--out", str(out / "loc"), str(video)], tmp_path)
    print(err)
    assert code == 2 and err == [f"error: {out / 'loc'}: output folder not writable (Read-only "
                                 "file system); nothing was written"], (code, err)


@needs_unshare
def test_a_full_disk_is_one_line_and_the_old_output_stays(tmp_path):
    """prepare on a disk with a few KB free: the write that fails names its file, exit 2; the
    previous output folder is intact (outputs are replaced only when complete)."""
    out = tmp_path / "out"
    root = make_root(tmp_path / "root")
    params = write_params(tmp_path, root)
    raw = yaml.safe_load(params.read_text())
    raw["paths"]["prepared"] = str(out / "prepared")
    params.write_text(yaml.safe_dump(raw))
    fill = (f"mkdir -p '{out}/prepared' && echo old > '{out}/prepared/manifest.csv' && "
            f"(dd if=/dev/zero of='{out}/fill' bs=1k count=1000 2>/dev/null; true) && "
            f"rm -f '{out}/fill' && dd if=/dev/zero of='{out}/fill' bs=1k count=236 2>/dev/null")
    script = (f"{fill} && {sys.executable} {REPO / 'stages' / 'prepare.py'} --params {params}; "
              f"echo rc=$?; cat '{out}/prepared/manifest.csv'")
    out.mkdir()
    proc = subprocess.run(["unshare", "-rm", "sh", "-c",
                           f"mount -t tmpfs -o size=256k tmpfs '{out}' && {script}"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                          cwd=tmp_path, timeout=300)
    err = proc.stderr.strip().splitlines()
    print(err)
    assert "rc=2" in proc.stdout and proc.stdout.strip().endswith("old"), proc.stdout + proc.stderr
    assert len(err) == 1 and re.fullmatch(rf"error: {re.escape(str(out))}/\S+: No space left on "
                                          r"device; free space and rerun: the run resumes where "
                                          r"it stopped", err[0]), err


@pytest.mark.parametrize("err,line", [
    (OSError(30, "Read-only file system", "/data/out/labels.h5"),
     "/data/out/labels.h5: Read-only file system; the file system is read-only; point the output elsewhere"),
    (OSError(28, "No space left on device", "/data/f.h5"),
     "/data/f.h5: No space left on device; free space and rerun: the run resumes where it stopped"),
    (OSError(122, "Disk quota exceeded", "/data/f.h5"),
     "/data/f.h5: Disk quota exceeded; free space within the quota and rerun"),
    (OSError("Unable to synchronously create file (unable to open file: name = '/data/x.h5', "
             "errno = 30, error message = 'Read-only file system', flags = 13, o_flags = 242)"),
     "/data/x.h5: Read-only file system; the file system is read-only; point the output elsewhere"),
])
def test_an_os_error_anywhere_is_one_line_naming_the_path(err, line, capsys):
    """As the OS (or h5py, which keeps only the text) raises them, from anywhere in a stage."""
    from pipeline.cli import stage_main

    def main(argv):
        raise err

    one_error(stage_main(main), [], capsys, re.escape(line))


@needs_unshare
def test_a_checkpoint_written_to_a_full_disk_names_its_file(tmp_path):
    """torch's zip writer keeps no errno ('file write failed'): the atomic write names the
    file."""
    out = tmp_path / "out"
    script = ("import torch, sys; from pipeline.cli import stage_main; "
              "from pipeline.runtime import atomic_torch_save; "
              f'stage_main(lambda a: atomic_torch_save({{"x": torch.zeros(200000)}}, "{out}/last.pt"))([])')
    code, err = in_namespace(out, f"echo old > '{out}/last.pt'", ["-c", script], tmp_path)
    print(err)
    assert code == 2 and err == [f"error: {out / 'last.pt'}: No space left on device; free space "
                                 "and rerun: the run resumes where it stopped"], (code, err)
