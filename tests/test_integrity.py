"""Corrupted data never becomes a model: bit flips in a feature file, a NaN in a batch, a split
whose rows are all broken (CPU, tiny synthetic features)."""
from __future__ import annotations

import re

import h5py
import numpy as np
import pytest
import torch

from pipeline.cli import stage_main
from pipeline.config import InputError
from pipeline.training import checkpoint as ckpt_io
from pipeline.training.data import load_dataset
from pipeline.training.loop import run_spec, train
from test_training import write_set  # also registers the "toy" head

pytestmark = pytest.mark.usefixtures("torch_single_thread")

FLOAT16_NAN, FLOAT16_INF = b"\x00\x7e", b"\x00\x7c"  # little-endian bit patterns


def flip_to_nonfinite(path, cells: list[tuple[int, int, int]], pattern: bytes) -> None:
    """Overwrite float16 values ``(row, segment, channel)`` of a contiguous ``avadataset`` on
    disk, as bit flips would: the file stays a valid HDF5 file."""
    with h5py.File(path, "r") as f:
        ds = f["avadataset"]
        assert ds.dtype == np.float16 and ds.chunks is None
        offset, (_, t, d) = ds.id.get_offset(), ds.shape
    with open(path, "r+b") as f:
        for r, s, c in cells:
            f.seek(offset + 2 * ((r * t + s) * d + c))
            f.write(pattern)


def _run_cli(fn, capsys) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as e:
        stage_main(lambda argv: fn())([])
    return e.value.code, capsys.readouterr().err.strip().splitlines()


def test_bit_flipped_feature_rows_are_invalid_and_the_model_is_finite(tmp_path, capsys):
    prepared, feats = write_set(tmp_path)
    with h5py.File(prepared / "train_order.h5", "r") as f:
        train_rows = sorted(f["order"][()].tolist())
    bad = train_rows[:3]
    flip_to_nonfinite(feats / "aud.h5", [(bad[0], 0, 0), (bad[0], 9, 5), (bad[1], 4, 2)], FLOAT16_NAN)
    flip_to_nonfinite(feats / "aud.h5", [(bad[2], 3, 1)], FLOAT16_INF)
    with h5py.File(feats / "aud.h5", "r") as f:
        assert (~np.isfinite(f["avadataset"][()])).sum() == 4  # what a plain reader would train on
    capsys.readouterr()
    data = load_dataset(prepared, feats, "vis", "aud")
    out = capsys.readouterr().out.splitlines()
    line = next(x for x in out if x.startswith("features: "))
    assert line == (f"features: {feats / 'aud.h5'}: 3 rows hold 4 non-finite values (NaN or inf; "
                    f"rows {bad[0]}, {bad[1]}, {bad[2]}): treated as invalid, left out like "
                    "undecodable videos"), line
    assert set(bad) <= set(data.splits["train"].excluded.tolist())
    assert torch.isfinite(data.splits["train"].audio.float()).all()
    train(run_spec("toy", "fully", device="cpu"), data, tmp_path / "models")
    state = ckpt_io.load(tmp_path / "models" / "best.pt")["model"]
    assert all(torch.isfinite(v).all() for v in state.values())


def test_nan_in_a_batch_stops_training_with_epoch_batch_and_cause(tmp_path, monkeypatch, capsys):
    prepared, feats = write_set(tmp_path)
    data = load_dataset(prepared, feats, "vis", "aud", verbose=False)
    calls = []

    def poisoned(*args, **kwargs):  # the second batch of the first epoch carries a NaN
        batch = make_batch(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            batch["visual"][0, 3, 0, 0, 1] = float("nan")
        return batch

    from pipeline.settings.fully import Fully
    make_batch = Fully().batch  # the fully setting's batches, one of them poisoned
    monkeypatch.setattr(Fully, "batch", lambda self, *a, **k: poisoned(*a, **k))
    out, resume = tmp_path / "models", tmp_path / "resume"
    code, err = _run_cli(lambda: train(run_spec("toy", "fully", device="cpu"), data, out,
                                       resume_dir=resume), capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0] == ("error: train: epoch 1, batch 2: the loss is nan; likely cause: the batch's "
                      "visual input holds NaN or inf; stopped, no checkpoint of this epoch written")
    assert len(calls) == 2  # stopped at once
    assert not list(out.glob("*.pt")) and not list(resume.glob("*.pt"))  # nothing written


def test_divergence_without_bad_inputs_names_the_learning_rate(tmp_path):
    prepared, feats = write_set(tmp_path)
    data = load_dataset(prepared, feats, "vis", "aud", verbose=False)
    spec = run_spec("toy", "fully", device="cpu",
                   recipe_overrides={"optimizer": "sgd", "lr": 1e37, "clip_grad": 0.0})
    with pytest.raises(InputError) as e:
        train(spec, data, tmp_path / "models")
    assert re.fullmatch(r"train: epoch \d+, batch \d+: (the loss is (nan|inf)|a gradient is not "
                        r"finite \(loss finite\)); likely cause: training diverged: lower train\.lr "
                        r"\(1e\+37\), set train\.clip_grad, or check the feature scale "
                        r"\(train\.feature_norm: standardize\); stopped, no checkpoint of this "
                        r"epoch written", str(e.value)), str(e.value)
    for p in (tmp_path / "models").glob("*.pt"):  # earlier epochs' checkpoints, if any, are finite
        assert all(torch.isfinite(v).all() for v in ckpt_io.load(p)["model"].values())


def test_all_broken_val_split_is_a_user_error(tmp_path, capsys):
    root = tmp_path / "set"
    prepared, feats = write_set(root)
    with h5py.File(prepared / "val_order.h5", "r") as f:
        val = f["order"][()].tolist()
    prepared, feats = write_set(root, invalid=val)  # every val video failed to decode
    data = load_dataset(prepared, feats, "vis", "aud", verbose=False)
    code, err = _run_cli(lambda: train(run_spec("toy", "fully", device="cpu"), data,
                                       tmp_path / "models"), capsys)
    assert (code, err) == (2, [f"error: val split: no usable rows; {len(val)} rows excluded: "
                               f"{len(val)} for invalid features (valid = 0 in the visual or audio "
                               "feature file)"])
    assert not (tmp_path / "models").exists()
