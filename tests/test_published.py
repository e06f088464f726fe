"""The published-features route: community files written here in the published layout (float32 /
float64, no ``valid``) -> prepare without videos -> import stage -> train + evaluate every head."""
from __future__ import annotations

import shutil
from html.parser import HTMLParser

import h5py
import numpy as np
import pytest
import yaml

from pipeline.config import load_params
from pipeline.data.ave import export_labels
from pipeline.data.manifest import load_manifest
from pipeline.data.prepare import prepare
from pipeline.features.store import load_features

pytestmark = pytest.mark.usefixtures("torch_single_thread")

CATEGORIES = ("Church bell", "Male speech, man speaking", "Bark")
SPLITS = {"train": 12, "val": 6, "test": 6}
NOISY = 5


def _annotations(root):
    """24 lines in AVE's format (3 classes; events of known spans), the standard split files."""
    lines = []
    for i in range(sum(SPLITS.values())):
        start = (i * 3) % 7
        lines.append(f"{CATEGORIES[i % 3]}&vid{i:03d}&good&{start}&{min(10, start + 4)}")
    root.mkdir(parents=True, exist_ok=True)
    (root / "Annotations.txt").write_text("\n".join(lines) + "\n")
    at = 0
    for split, n in SPLITS.items():
        (root / f"{split}Set.txt").write_text("\n".join(lines[at:at + n]) + "\n")
        at += n


def _h5(path, data, dataset="avadataset"):
    with h5py.File(path, "w") as f:
        f.create_dataset(dataset, data=data)


def _published(root, features, labels):
    """visual (N,10,7,7,512) float32, audio (N,10,128) float64 (as audio_feature_noisy.h5), a
    class cue in event segments; the noisy background-only set and its labels."""
    rng = np.random.default_rng(0)
    n = len(labels)
    target = labels.argmax(-1)  # (N, 10), background = 3
    visual = rng.normal(0, 1, (n, 10, 7, 7, 512)).astype(np.float32)
    audio = rng.normal(0, 1, (n, 10, 128))
    for c in range(3):
        visual[..., c * 8:(c + 1) * 8] += 3 * (target == c)[..., None, None, None]
        audio[..., c * 8:(c + 1) * 8] += 3 * (target == c)[..., None]
    features.mkdir(parents=True, exist_ok=True)
    _h5(features / "visual_feature.h5", visual)
    _h5(features / "audio_feature.h5", audio)
    _h5(features / "visual_feature_noisy.h5", rng.normal(0, 1, (NOISY, 10, 7, 7, 512)).astype(np.float32))
    _h5(features / "audio_feature_noisy.h5", rng.normal(0, 1, (NOISY, 10, 128)))
    bg = np.zeros((NOISY, labels.shape[-1]), np.float32)
    bg[:, -1] = 1
    _h5(features / "labels_noisy.h5", bg)


@pytest.fixture(scope="module")
def route(tmp_path_factory):
    """A project folder: params.yaml, raw/ave annotations + published files, prepared, imported."""
    from stages import import_features

    base = tmp_path_factory.mktemp("published")
    root = base / "raw" / "ave"
    _annotations(root)
    params = {
        "paths": {k: str(base / v) for k, v in (("prepared", "data/prepared"), ("features", "data/features"),
                                                ("models", "models"), ("reports", "reports"),
                                                ("resume", "resume"))},
        "data": {"root": str(root), "source": "features"},
        "published": {"files": {  # read from data.root; stored float32 by default
            "published_vgg19": {"file": "visual_feature.h5"},
            "published_vggish": {"file": "audio_feature.h5"}}},
        "train": {"visual": "published_vgg19", "audio": "published_vggish", "device": "cpu",
                  "epochs": 1, "batch_size": 8},
        "runtime": {"train": {"resume": False}},
    }
    (base / "params.yaml").write_text(yaml.safe_dump(params))
    result = prepare(root, params["paths"]["prepared"], source="features")
    with h5py.File(base / "data/prepared/labels.h5") as f:
        labels = f["avadataset"][()]
    _published(root, root, labels)
    export_labels(root, root)  # the published labels.h5 / *_order.h5 beside them
    for name in params["published"]["files"]:
        import_features.main([name, "--params", str(base / "params.yaml")])
        import_features.main([name, "--background-only", "--params", str(base / "params.yaml")])
    return base, result


def test_prepare_without_videos_reads_annotations_only(route):
    base, result = route
    rows = load_manifest(base / "data/prepared")
    assert len(rows) == 24 and {r["status"] for r in rows} == {"unprobed"}
    assert [r["split"] for r in rows] == ["train"] * 12 + ["val"] * 6 + ["test"] * 6
    assert not (base / "raw/ave/AVE").exists()  # no video anywhere
    assert "unprobed" in (base / "data/prepared/report.md").read_text()


def test_import_keeps_values_rows_and_provenance(route):
    base, _ = route
    feats = base / "data/features"
    v, a = load_features(feats / "published_vgg19.h5"), load_features(feats / "published_vggish.h5")
    with h5py.File(base / "raw/ave/audio_feature.h5") as f:
        np.testing.assert_allclose(a.data, f["avadataset"][()].astype(np.float32))
    assert v.data.shape == (24, 10, 7, 7, 512) and a.data.shape == (24, 10, 128)
    assert v.valid.all() and a.valid.all() and v.data.dtype == np.float32
    assert v.meta["encoder"] == "keras/vgg19" and v.meta["frames_per_segment"] == 16
    assert v.meta["model_spec_json"]["weights"] == "published" and v.meta["published_file"] == "visual_feature.h5"
    assert a.meta["sample_rate"] == 16000 and "VGGish" in a.meta["weights"]
    noisy = load_features(feats / "published_vgg19_noisy.h5")
    assert noisy.data.shape == (NOISY, 10, 7, 7, 512)
    assert load_features(feats / "published_vggish_noisy.h5").data.shape == (NOISY, 10, 128)


def test_import_rejects_misaligned_files(route, tmp_path):
    import dataclasses

    from pipeline.features.published import import_published

    base, _ = route
    cfg = dataclasses.replace(load_params(base / "params.yaml")["published"], root=str(base / "raw/ave"))
    prepared = base / "data/prepared"
    from pipeline.features.config import CommunityFile

    bad = tmp_path / "features"
    bad.mkdir()
    _h5(bad / "visual_feature.h5", np.zeros((23, 10, 7, 7, 512), np.float32))  # one row short
    short = dataclasses.replace(cfg, root=str(bad))
    with pytest.raises(ValueError, match="23 rows but .*labels.h5 has 24"):
        import_published("published_vgg19", short, prepared, tmp_path / "out")
    _h5(bad / "visual_feature.h5", np.zeros((24, 10, 7, 7, 512), np.float32))
    with h5py.File(prepared / "labels.h5") as f:
        labels = f["avadataset"][()]
    _h5(bad / "labels.h5", labels[::-1])  # published labels in another row order
    with pytest.raises(ValueError, match="differs from"):
        import_published("published_vgg19", short, prepared, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="resnet50_feature.h5: missing"):
        other = dataclasses.replace(cfg, files={"r50": CommunityFile("resnet50_feature.h5", "resnet50")})
        import_published("r50", other, prepared, tmp_path / "out")


def test_other_community_file_by_name(route, tmp_path):
    from pipeline.features.config import CommunityFile
    from pipeline.features.published import import_published
    import dataclasses

    base, _ = route
    cfg = load_params(base / "params.yaml")["published"]
    src = tmp_path / "feats"
    src.mkdir()
    _h5(src / "resnet50_feature.h5", np.ones((24, 10, 7, 7, 2048), np.float32))
    cfg = dataclasses.replace(cfg, root=str(src), files={
        "resnet50_cace": CommunityFile("resnet50_feature.h5", "resnet50", "CACE-Net script, ImageNet")})
    fs = load_features(import_published("resnet50_cace", cfg, base / "data/prepared", tmp_path / "out"))
    assert fs.data.shape == (24, 10, 7, 7, 2048) and fs.meta["encoder"] == "resnet50"
    assert fs.meta["weights"] == "CACE-Net script, ImageNet" and fs.meta["model_spec_json"]["encoder"] == "resnet50"


def _cases():
    from pipeline.heads import get_head_class, list_heads
    return [(h, s) for h in list_heads() for s in ("fully", "weak") if s in get_head_class(h).settings]


@pytest.mark.parametrize("head,setting", _cases())
def test_every_head_trains_and_evaluates_on_published_files(route, head, setting):
    from pipeline.evaluation.evaluate import evaluate
    from pipeline.training.run import train_from_params

    base, _ = route
    params = load_params(base / "params.yaml", {"train": {"head": head, "setting": setting}})
    out = base / "models" / f"{head}-{setting}"
    result = train_from_params(params, out_dir=out, live_dir=None)
    assert result.epochs == 1
    res = evaluate(out / "best.pt", params["paths"].prepared, params["paths"].features,
                   "published_vgg19", "published_vggish", None, device="cpu")
    assert res["videos"] == SPLITS["test"] and res["segments"] == SPLITS["test"] * 10
    assert 0.0 <= res["accuracy"] <= 1.0


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_evaluate_writes_a_self_contained_page(route, tmp_path):
    from pipeline.evaluation.evaluate import evaluate
    from pipeline.training.run import train_from_params

    base, _ = route
    params = load_params(base / "params.yaml", {"train": {"head": "avel", "setting": "fully"}})
    train_from_params(params, out_dir=tmp_path / "m", live_dir=None)
    res = evaluate(tmp_path / "m" / "best.pt", params["paths"].prepared, params["paths"].features,
                   "published_vgg19", "published_vggish", tmp_path / "eval", device="cpu", timelines=1)
    page = _Tags()
    page.feed((tmp_path / "eval" / "index.html").read_text())
    tags = [t for t, _ in page.tags]
    assert tags[:2] == ["html", "head"] and "style" in tags
    assert not any(t in ("script", "link", "img", "iframe") for t in tags)  # nothing to fetch
    tables = [a for t, a in page.tags if t == "table"]
    assert {"class": "cm"} in tables  # the confusion matrix
    assert sum(1 for t, _ in page.tags if t == "tr") > len(res["labels"]) + 1  # results + matrix rows
    segs = [a for t, a in page.tags if t == "div" and a.get("class", "").startswith("seg")]
    assert len(segs) == 2 * SPLITS["test"] * 10  # truth and prediction rows of every test video


def test_route_follows_data_root_and_works_without_background_only_files(route, tmp_path):
    """Another data root, no *_noisy.h5: fully trains; the noisy store files have zero rows and
    weak says it trains without them; published.root may only repeat data.root."""
    from stages import import_features

    from pipeline.config import ConfigError
    from pipeline.training.run import train_from_params

    base, _ = route
    other = tmp_path / "elsewhere"
    shutil.copytree(base / "raw/ave", other)
    for f in ("visual_feature_noisy.h5", "audio_feature_noisy.h5", "labels_noisy.h5"):
        (other / f).unlink()
    params = yaml.safe_load((base / "params.yaml").read_text())
    params["data"]["root"] = str(other)
    params["paths"] = {k: str(tmp_path / k) for k in ("prepared", "features", "models", "reports", "resume")}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    prepare(other, params["paths"]["prepared"], source="features")
    for name in params["published"]["files"]:
        import_features.main([name, "--params", str(tmp_path / "params.yaml")])
        import_features.main([name, "--background-only", "--params", str(tmp_path / "params.yaml")])
    noisy = load_features(tmp_path / "features" / "published_vgg19_noisy.h5")
    assert noisy.data.shape == (0, 10, 7, 7, 512) and noisy.meta["background_only"] == "none"
    assert load_features(tmp_path / "features" / "published_vggish.h5").data.dtype == np.float32
    logs = []
    for setting in ("fully", "weak"):
        p = load_params(tmp_path / "params.yaml", {"train": {"head": "avel", "setting": setting}})
        import contextlib
        import io
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            train_from_params(p, out_dir=tmp_path / "m" / setting, live_dir=None)
        logs.append(buf.getvalue())
    assert "background-only samples: not used" in logs[1] and "train split alone" in logs[1]
    params["published"]["root"] = str(base / "raw/ave")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match="published.root: .* differs from data.root"):
        load_params(tmp_path / "params.yaml")
    params["published"] = {"files": {"x_noisy": {"file": "visual_feature_noisy.h5"}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match="published.files.x_noisy: background-only files are imported"):
        load_params(tmp_path / "params.yaml")
