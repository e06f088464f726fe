"""Feature store: roundtrip, community import, atomic writes, determinism; the extract params."""
from __future__ import annotations

import hashlib

import h5py
import numpy as np
import pytest

from pipeline.config import ConfigError, validate
from pipeline.features.store import (REQUIRED_ATTRS, StoreWriter, import_community, load_features,
                                     write_features)

META = {"model": "vgg19", "encoder": "vgg19", "weights": "random(seed=0)", "weights_sha256": "ab" * 32,
        "frames_per_segment": 4, "sampling": "timestamp", "image_size": 112, "sample_rate": 0,
        "code_version": "src-test", "created_by": "test", "model_spec": {"encoder": "vgg19"}}


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_roundtrip_visual_with_valid_mask_and_meta(tmp_path, dtype):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(5, 10, 2, 2, 8)).astype(np.float32)
    valid = np.array([1, 0, 1, 1, 0], bool)
    path = write_features(tmp_path / "v.h5", data, valid, META, dtype=dtype)
    fs = load_features(path)
    assert fs.data.dtype == np.dtype(dtype) and fs.data.shape == (5, 10, 2, 2, 8) and fs.kind == "visual"
    np.testing.assert_array_equal(fs.valid, valid)
    np.testing.assert_allclose(fs.data[valid], data[valid], rtol=1e-3, atol=1e-3)
    assert not fs.data[~valid].any()  # invalid rows hold zeros
    assert set(REQUIRED_ATTRS) <= set(fs.meta)
    assert fs.meta["dtype"] == dtype and fs.meta["model_spec_json"] == {"encoder": "vgg19"}
    with h5py.File(path) as f:  # community layout
        assert set(f.keys()) == {"avadataset", "valid"} and f["avadataset"].chunks[0] == 1


def test_writer_is_atomic_and_deterministic(tmp_path):
    data = np.arange(3 * 10 * 4, dtype=np.float32).reshape(3, 10, 4)
    with pytest.raises(RuntimeError):
        with StoreWriter(tmp_path / "a.h5", 3, (4,), "float32", META) as w:
            w.write(np.arange(2), data[:2], np.ones(2, bool))
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left behind
    a = write_features(tmp_path / "a.h5", data, None, META)
    b = write_features(tmp_path / "b.h5", data, None, META)
    assert _md5(a) == _md5(b)


def test_rows_written_in_any_order(tmp_path):
    data = np.random.default_rng(1).normal(size=(4, 10, 3)).astype(np.float32)
    with StoreWriter(tmp_path / "a.h5", 4, (3,), "float32", META) as w:
        w.write(np.array([3, 0]), data[[3, 0]], np.ones(2, bool))
        w.write(np.array([2]), data[[2]], np.zeros(1, bool))
    fs = load_features(tmp_path / "a.h5")
    np.testing.assert_array_equal(fs.valid, [True, False, False, True])
    np.testing.assert_array_equal(fs.data[[0, 3]], data[[0, 3]])


@pytest.mark.parametrize("kind,shape", [("visual", (6, 10, 7, 7, 512)), ("audio", (6, 10, 128))])
def test_import_community_files(tmp_path, kind, shape):
    src = tmp_path / f"{kind}_feature.h5"
    data = np.random.default_rng(2).random(shape, dtype=np.float32)
    with h5py.File(src, "w") as f:  # the published layout: one dataset, no mask, no attrs
        f.create_dataset("avadataset", data=data)
    out = import_community(src, tmp_path / "imported.h5", kind)
    fs = load_features(out)
    assert fs.valid.all() and fs.data.dtype == np.float32
    np.testing.assert_array_equal(fs.data, data)
    assert fs.meta["model"] == ("vgg19" if kind == "visual" else "vggish")
    assert set(REQUIRED_ATTRS) <= set(fs.meta)
    # the published files load directly too (no valid mask: all rows valid)
    assert load_features(src).valid.all()


def test_import_rejects_wrong_kind(tmp_path):
    src = tmp_path / "audio_feature.h5"
    with h5py.File(src, "w") as f:
        f.create_dataset("avadataset", data=np.zeros((2, 10, 128), np.float32))
    with pytest.raises(ValueError, match="visual features must be"):
        import_community(src, tmp_path / "x.h5", "visual")


def test_extract_params_section_is_strict():
    cfg = validate({"extract": {"visual": {"frames_per_segment": 8}, "models": {
        "vgg19": {"kind": "visual", "encoder": "vgg19", "weights": "random", "seed": 3},
        "resnet50_ft": {"kind": "visual", "encoder": "resnet50",
                        "weights": "data/finetune/resnet50.pt"}}}})["extract"]
    assert cfg.frames_per_segment == 8 and cfg.models["vgg19"].seed == 3
    assert cfg.models["resnet50_ft"].weights.endswith("resnet50.pt")
    with pytest.raises(ConfigError, match="extract.models.vgg19.preprocess"):
        validate({"extract": {"models": {"vgg19": {"kind": "visual", "encoder": "vgg19",
                                                   "preprocess": "tf"}}}})
    with pytest.raises(ConfigError, match="extract.common.batch_videos: must be >= 1"):
        validate({"extract": {"common": {"batch_videos": 0}}})
    with pytest.raises(ConfigError, match="unknown key extract.frames"):
        validate({"extract": {"frames": 8}})
    with pytest.raises(ConfigError, match="unknown key extract.common.frames_per_segment; allowed"):
        validate({"extract": {"common": {"frames_per_segment": 8}}})  # a visual key
    with pytest.raises(ConfigError, match="extract.models.vgg19.kind: 'vgg19' is a visual encoder"):
        validate({"extract": {"models": {"vgg19": {"kind": "audio", "encoder": "vgg19"}}}})
