"""Export to the AVE papers' data folder: file and dataset names, dtypes, shapes, values equal
to our store, derived label files, invalid rows stated, atomic streamed writes, the CLI."""
from __future__ import annotations

import re
import shutil

import h5py
import numpy as np
import pytest
import yaml

from pipeline.features import community
from pipeline.features.__main__ import main
from pipeline.features.community import export_community, read_invalid_tsv
from pipeline.features.store import write_features

META = {"model": "m", "encoder": "m", "weights": "random(seed=0)", "weights_sha256": "", "frames_per_segment": 1,
        "sampling": "timestamp", "image_size": 64, "sample_rate": 16000, "code_version": "t", "created_by": "test"}
PAPER_FILES = {"visual_feature.h5", "audio_feature.h5", "labels.h5", "train_order.h5", "val_order.h5",
               "test_order.h5", "right_labels.h5", "prob_label.h5", "labels_closs.h5", "visual_feature_vec.h5"}


def _read(path, name="avadataset"):
    with h5py.File(path, "r") as f:
        assert list(f.keys()) == [name], f"{path.name}: {list(f.keys())}"
        return f[name][()]


def _num_rows(prepared):
    with h5py.File(prepared / "labels.h5", "r") as f:
        return f["avadataset"].shape[0]


def _stores(folder, n, visual_shape=(2, 2, 8), audio_dim=6, invalid=(), seed=0):
    """A visual and an audio store file (float16, as extraction writes them) of ``n`` rows."""
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, 10, *visual_shape)).astype(np.float16)
    a = rng.normal(size=(n, 10, audio_dim)).astype(np.float16)
    vvalid, avalid = np.ones(n, bool), np.ones(n, bool)
    for row, kind in invalid:
        (vvalid if kind == "visual" else avalid)[row] = False
    write_features(folder / "vis.h5", v, vvalid, {**META, "model": "vis"}, dtype="float16")
    write_features(folder / "aud.h5", a, avalid, {**META, "model": "aud"}, dtype="float16")
    v[~vvalid] = 0
    a[~avalid] = 0
    return folder / "vis.h5", folder / "aud.h5", v, a


@pytest.fixture
def prepared(prepared_dir, tmp_path):
    """A writable copy of the prepare stage's output of the tiny set."""
    return shutil.copytree(prepared_dir, tmp_path / "prepared")


def test_layout_names_dtypes_and_values_equal_the_store(prepared, tmp_path):
    n = _num_rows(prepared)
    vis, aud, v, a = _stores(tmp_path, n)
    res = export_community(vis, aud, prepared, tmp_path / "out")
    out = tmp_path / "out"
    assert PAPER_FILES <= {p.name for p in out.iterdir()} and PAPER_FILES <= set(res.files)
    assert "run their models in float64" not in (out / "README.txt").read_text()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    visual, audio = _read(out / "visual_feature.h5"), _read(out / "audio_feature.h5")
    assert visual.dtype == audio.dtype == np.float64  # CMBS / CACE-Net run the model in double
    assert visual.shape == (n, 10, 2, 2, 8) and audio.shape == (n, 10, 6)
    np.testing.assert_array_equal(visual, v.astype(np.float64))
    np.testing.assert_array_equal(audio, a.astype(np.float64))
    np.testing.assert_allclose(_read(out / "visual_feature_vec.h5"), v.astype(np.float64).mean(axis=(2, 3)))
    with h5py.File(out / "visual_feature.h5") as f:  # provenance travels with the features
        assert f.attrs["model"] == "vis" and f.attrs["dtype"] == "float64" and f.attrs["exported_from"] == "vis.h5"
    labels = _read(prepared / "labels.h5")
    got = _read(out / "labels.h5")
    assert got.dtype == np.float32 and got.shape == (n, 10, labels.shape[-1])
    np.testing.assert_array_equal(got, labels)
    np.testing.assert_array_equal(_read(out / "right_labels.h5"), labels)
    prob = _read(out / "prob_label.h5")
    assert prob.shape == (n, labels.shape[-1]) and prob.dtype == np.float32
    np.testing.assert_allclose(prob, labels.mean(axis=1))
    np.testing.assert_allclose(prob.sum(axis=1), 1.0, rtol=1e-6)
    closs = _read(out / "labels_closs.h5")
    assert closs.shape == (n, 10)
    np.testing.assert_array_equal(closs, 1.0 - labels[:, :, -1])
    for split in ("train", "val", "test"):
        order = _read(out / f"{split}_order.h5", "order")
        assert order.dtype == np.int64
        np.testing.assert_array_equal(order, _read(prepared / f"{split}_order.h5", "order"))


def test_float32_on_request_and_other_dtypes_refused(prepared, tmp_path):
    vis, aud, v, _ = _stores(tmp_path, _num_rows(prepared))
    export_community(vis, aud, prepared, tmp_path / "out", dtype="float32")
    visual = _read(tmp_path / "out" / "visual_feature.h5")
    assert visual.dtype == np.float32
    np.testing.assert_array_equal(visual, v.astype(np.float32))
    assert "CMBS and CACE-Net run their models in float64" in (tmp_path / "out" / "README.txt").read_text()
    with pytest.raises(ValueError, match="dtype: 'float16'"):
        export_community(vis, aud, prepared, tmp_path / "out16", dtype="float16")


def test_invalid_rows_are_stated_with_video_and_reason(prepared, tmp_path):
    from pipeline.data.manifest import load_manifest

    rows = load_manifest(prepared)
    test_row = next(r["index"] for r in rows if r["split"] == "test")
    train_row = next(r["index"] for r in rows if r["split"] == "train")
    vis, aud, v, a = _stores(tmp_path, len(rows), invalid=[(test_row, "visual"), (test_row, "audio"),
                                                           (train_row, "audio")])
    res = export_community(vis, aud, prepared, tmp_path / "out")
    listed = read_invalid_tsv(tmp_path / "out" / "invalid_rows.tsv")
    assert listed == res.invalid and [r.row for r in listed] == sorted([test_row, train_row])
    by_row = {r.row: r for r in listed}
    assert by_row[test_row].zeros == "visual+audio" and by_row[train_row].zeros == "audio"
    assert by_row[test_row].video_id == rows[test_row]["video_id"] and by_row[test_row].split == "test"
    assert by_row[test_row].reason  # the manifest status, or that valid was 0
    readme = (tmp_path / "out" / "README.txt").read_text()
    assert "Invalid rows: 2 rows have no features" in readme and "--drop-invalid" in readme
    assert not _read(tmp_path / "out" / "visual_feature.h5")[test_row].any()
    assert test_row in _read(tmp_path / "out" / "test_order.h5", "order")  # kept, as published
    export_community(vis, aud, prepared, tmp_path / "dropped", drop_invalid=True)
    test_order = _read(tmp_path / "dropped" / "test_order.h5", "order")
    train_order = _read(tmp_path / "dropped" / "train_order.h5", "order")
    expect = _read(prepared / "test_order.h5", "order")
    np.testing.assert_array_equal(test_order, expect[expect != test_row])
    assert train_row not in train_order
    assert len(train_order) == len(_read(prepared / "train_order.h5", "order")) - 1
    assert "left out of the order files" in (tmp_path / "dropped" / "README.txt").read_text()


def test_no_invalid_rows_gives_a_header_only_list(prepared, tmp_path):
    vis, aud, _, _ = _stores(tmp_path, _num_rows(prepared))
    res = export_community(vis, aud, prepared, tmp_path / "out")
    assert res.invalid == []
    assert (tmp_path / "out" / "invalid_rows.tsv").read_text() == "row\tvideo_id\tsplit\tzeros\treason\n"
    assert "Invalid rows: none" in (tmp_path / "out" / "README.txt").read_text()


def test_weak_and_matching_files_copied_when_prepared_has_them(prepared, tmp_path):
    vis, aud, _, _ = _stores(tmp_path, _num_rows(prepared))
    for name in ["mil_labels.h5", "labels_noisy.h5"] + [f"{s}_order_match.h5" for s in ("train", "val", "test")]:
        (prepared / name).unlink(missing_ok=True)
    res = export_community(vis, aud, prepared, tmp_path / "bare")
    assert {"mil_labels.h5", "train_order_match.h5", "visual_feature_noisy.h5"} <= set(res.missing)
    readme = (tmp_path / "bare" / "README.txt").read_text()
    assert "mil_labels.h5" in readme and "178 background-only videos" in readme
    mil = _read(prepared / "labels.h5")[:, :, :-1].max(axis=1)
    with h5py.File(prepared / "mil_labels.h5", "w") as f:
        f["avadataset"] = np.concatenate([mil, np.zeros((len(mil), 1), np.float32)], axis=1)
    for split in ("train", "val", "test"):
        with h5py.File(prepared / f"{split}_order_match.h5", "w") as f:
            f["order"] = _read(prepared / f"{split}_order.h5", "order")[::-1].copy()
    res = export_community(vis, aud, prepared, tmp_path / "out")
    assert "mil_labels.h5" in res.files and "mil_labels.h5" not in res.missing
    assert (tmp_path / "out" / "mil_labels.h5").read_bytes() == (prepared / "mil_labels.h5").read_bytes()
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(_read(tmp_path / "out" / f"{split}_order_match.h5", "order"),
                                      _read(prepared / f"{split}_order_match.h5", "order"))


def test_empty_background_only_files_fit_the_weak_loaders(prepared, tmp_path):
    vis, aud, _, _ = _stores(tmp_path, _num_rows(prepared))
    export_community(vis, aud, prepared, tmp_path / "out", empty_background_only=True, dtype="float32")
    out = tmp_path / "out"
    nv, na, nl = (_read(out / name) for name in community.BACKGROUND_ONLY)
    num_labels = _read(prepared / "labels.h5").shape[-1]
    assert nv.shape == (0, 10, 2, 2, 8) and na.shape == (0, 10, 6) and nl.shape == (0, num_labels)
    assert nv.dtype == na.dtype == np.float32
    assert "zero rows" in (out / "README.txt").read_text()


def test_shape_notes_in_readme(prepared, tmp_path):
    vis, aud, _, _ = _stores(tmp_path, _num_rows(prepared), visual_shape=(2, 2, 16), audio_dim=32)
    export_community(vis, aud, prepared, tmp_path / "out")
    readme = (tmp_path / "out" / "README.txt").read_text()
    assert "(2, 2, 16) vs (7, 7, 512)" in readme and "(32,) vs (128,)" in readme
    assert "hard-code AVE's 29" in readme  # the tiny set has fewer classes than AVE


def test_copies_in_row_blocks(prepared, tmp_path, monkeypatch):
    n = _num_rows(prepared)
    vis, aud, v, a = _stores(tmp_path, n)
    reads = []
    original = community.h5py.Dataset.__getitem__

    def spy(self, key):
        if self.name == "/avadataset" and isinstance(key, slice):
            reads.append(key)
        return original(self, key)

    monkeypatch.setattr(community, "BLOCK_BYTES", 3 * 10 * 2 * 2 * 8 * 8)  # three visual rows
    monkeypatch.setattr(community.h5py.Dataset, "__getitem__", spy)
    export_community(vis, aud, prepared, tmp_path / "out")
    assert len([k for k in reads if k.stop - k.start == 3]) >= n // 3  # never the whole array at once
    np.testing.assert_array_equal(_read(tmp_path / "out" / "visual_feature.h5"), v.astype(np.float64))
    np.testing.assert_array_equal(_read(tmp_path / "out" / "audio_feature.h5"), a.astype(np.float64))


def test_failed_copy_leaves_no_partial_file(prepared, tmp_path, monkeypatch):
    vis, aud, _, _ = _stores(tmp_path, _num_rows(prepared))
    out = tmp_path / "out"
    out.mkdir()
    (out / "visual_feature.h5").write_bytes(b"old")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(community, "write_meta", broken)  # fails after the rows are written
    with pytest.raises(OSError, match="disk full"):
        export_community(vis, aud, prepared, out)
    assert [p.name for p in out.iterdir()] == ["visual_feature.h5"]
    assert (out / "visual_feature.h5").read_bytes() == b"old"


def test_mismatched_inputs_are_errors_naming_the_file(prepared, tmp_path):
    n = _num_rows(prepared)
    vis, aud, _, _ = _stores(tmp_path, n)
    with pytest.raises(ValueError, match=r"aud\.h5: visual features must be \(N, 10, h, w, C\)"):
        export_community(aud, aud, prepared, tmp_path / "out")
    short = tmp_path / "short"
    short.mkdir()
    _, aud_short, _, _ = _stores(short, n - 1)
    with pytest.raises(ValueError, match=rf"aud\.h5: {n - 1} rows, but .*vis\.h5 has {n}"):
        export_community(vis, aud_short, prepared, tmp_path / "out")
    other = tmp_path / "other"
    other.mkdir()
    vis2, aud2, _, _ = _stores(other, n + 2)
    with pytest.raises(ValueError, match=r"labels\.h5: labels .* do not match"):
        export_community(vis2, aud2, prepared, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        export_community(tmp_path / "nope.h5", aud, prepared, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_reads_folders_from_params_or_flags(prepared, tmp_path, monkeypatch, capsys):
    features = tmp_path / "features"
    features.mkdir()
    _, _, v, _ = _stores(features, _num_rows(prepared))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"paths": {"features": str(features), "prepared": str(prepared)}}))
    main(["export-community", "--visual", "vis", "--audio", "aud", "--params", str(params),
          "--dtype", "float32", str(tmp_path / "out")])
    assert "wrote" in capsys.readouterr().out
    np.testing.assert_array_equal(_read(tmp_path / "out" / "visual_feature.h5"), v.astype(np.float32))
    main(["export-community", "--visual", "vis", "--audio", "aud", "--features", str(features),
          "--prepared", str(prepared), "--params", str(tmp_path / "absent.yaml"), str(tmp_path / "out2")])
    assert _read(tmp_path / "out2" / "visual_feature.h5").dtype == np.float64
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["export-community", "--visual", "../vis", "--audio", "aud", "--params", str(params),
              str(tmp_path / "out3")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1, err
    assert re.fullmatch(r"error: --visual: '\.\./vis' is not a feature name.*", err[0]), err
    with pytest.raises(SystemExit) as e:
        main(["export-community", "--visual", "resnet50", "--audio", "aud", "--params", str(params),
              str(tmp_path / "out3")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1, err
    assert re.fullmatch(r"error: .*resnet50\.h5: no such feature file", err[0]), err


def test_background_only_files_exported_when_the_pipeline_has_them(prepared, tmp_path):
    """<visual>_noisy.h5 / <audio>_noisy.h5 beside the store files and labels_noisy.h5 in the
    prepared folder become the weak scripts' *_noisy.h5 files, values equal."""
    vis, aud, _, _ = _stores(tmp_path, _num_rows(prepared))
    nv, na, v, a = _stores(tmp_path / "bg", 3, seed=1)
    shutil.move(nv, tmp_path / "vis_noisy.h5")
    shutil.move(na, tmp_path / "aud_noisy.h5")
    bg = np.zeros((3, 4), np.float32)
    bg[:, -1] = 1
    with h5py.File(prepared / "labels_noisy.h5", "w") as f:
        f["avadataset"] = bg
    res = export_community(vis, aud, prepared, tmp_path / "out")
    out = tmp_path / "out"
    assert not set(res.missing) & {"visual_feature_noisy.h5", "audio_feature_noisy.h5", "labels_noisy.h5"}
    np.testing.assert_array_equal(_read(out / "visual_feature_noisy.h5"), v.astype(np.float64))
    np.testing.assert_array_equal(_read(out / "audio_feature_noisy.h5"), a.astype(np.float64))
    np.testing.assert_array_equal(_read(out / "labels_noisy.h5"), bg)
    assert "cannot be produced" not in (out / "README.txt").read_text()
