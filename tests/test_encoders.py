"""Encoders and the weights resolver: shapes, golden outputs, real checkpoint formats, errors.

Never touches the network: caches point into tmp_path and the downloader is monkeypatched.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.encoders.base import build_encoder
from pipeline.encoders.spec import ModelSpec
from pipeline.encoders.weights import WeightsLoadError, WeightsNotFoundError
from pipeline.encoders import weights as W

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """torch hub, PANNs (~/panns_data) and HF caches inside tmp_path; downloads fail (offline)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    calls = []

    def offline(url, dst, hash_prefix=None, progress=True):
        calls.append((url, dst, hash_prefix))
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(W, "download_url_to_file", offline)
    return {"hub": tmp_path / "torch" / "hub" / "checkpoints", "panns": tmp_path / "home" / "panns_data",
            "hf": tmp_path / "hf", "calls": calls}


def _frames(b=1, t=10, f=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, f, size, size, 3), dtype=torch.uint8, generator=g)


def _wave(b, sr, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(b, 10, sr, generator=g)


@pytest.fixture(scope="module")
def random_encoders():
    """The four encoders with random weights (visual at 64 px), built once for this module."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = build_encoder(ModelSpec(name, weights="random"), image_size=64)
        return cache[name]
    return get


# ------------------------------------------------------------------------------------------
# Shapes
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,shape224", [("vgg19", (7, 7, 512)), ("resnet50", (7, 7, 2048))])
def test_visual_shapes(random_encoders, name, shape224):
    enc = random_encoders(name)
    with torch.inference_mode():
        out = enc.encode_segments(_frames(b=2, f=2, size=48))  # resized 48 -> 64 inside
    assert out.shape == (2, 10, 2, 2, shape224[-1]) and out.dtype == torch.float32
    assert enc.feature_shape() == (2, 2, shape224[-1])
    assert enc.feature_shape((224, 224)) == shape224  # the AVE map at the weights' input size
    from pipeline.encoders.visual import TORCHVISION, torchvision_weights
    assert torchvision_weights(name, TORCHVISION[name][0]).input_size == (224, 224)


@pytest.mark.parametrize("name,sr,dim", [("vggish", 16000, 128), ("cnn14", 32000, 2048)])
def test_audio_shapes(random_encoders, name, sr, dim):
    enc = random_encoders(name)
    assert enc.sample_rate == sr
    with torch.inference_mode():
        out = enc.encode_segments(_wave(2, sr))
    assert out.shape == (2, 10, dim) and torch.isfinite(out).all()
    assert (out >= 0).all()  # both embeddings are taken after a ReLU


def test_timm_backbone_any_name():
    enc = build_encoder(ModelSpec("timm/resnet18", weights="random"), image_size=64)
    with torch.inference_mode():
        out = enc.encode_segments(_frames(f=1))
    assert out.shape == (1, 10, 2, 2, 512)


def test_unknown_encoder_lists_valid_names():
    with pytest.raises(KeyError, match="vgg19.*|valid"):
        build_encoder(ModelSpec("vgg91", weights="random"))


# ------------------------------------------------------------------------------------------
# Golden outputs
# ------------------------------------------------------------------------------------------
def test_vgg19_map_equals_backbone_output(random_encoders):
    import torchvision

    enc = random_encoders("vgg19")
    with torch.device("meta"):
        ref = torchvision.models.vgg19()  # torchvision's own module, weights from the encoder
    missing = ref.load_state_dict(enc.export_state_dict(), strict=False, assign=True)
    assert not missing.unexpected_keys and all(k.startswith("classifier") for k in missing.missing_keys)
    ref.eval()
    frame = _frames(b=1, t=1, f=1, size=64)[0, 0, 0]  # (64, 64, 3) uint8, no resize needed
    x = frame.permute(2, 0, 1).float()[None] / 255.0
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.inference_mode():
        want = ref.features(x)[0].permute(1, 2, 0)  # (2, 2, 512)
        clip = frame[None, None, None].expand(1, 10, 3, 64, 64, 3)  # same frame x3: mean = itself
        got = enc.encode_segments(clip)[0, 4]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_caffe_preprocessing_is_bgr_mean_subtraction():
    enc = build_encoder(ModelSpec("vgg19", weights="random", preprocess="caffe"), image_size=64)
    frame = _frames(b=1, t=1, f=1, size=64)[0, 0]  # (1, 64, 64, 3)
    x = enc.prepare(frame)
    rgb = frame[0].permute(2, 0, 1).float()
    want = rgb.flip(0) - torch.tensor([103.939, 116.779, 123.68]).view(3, 1, 1)
    torch.testing.assert_close(x[0], want)


def _vggish_logmel_reference(wave: np.ndarray) -> np.ndarray:
    """AudioSet mel_features.log_mel_spectrogram, written out from its definition."""
    win, hop, nfft = 400, 160, 512
    n = 1 + (len(wave) - win) // hop
    frames = np.stack([wave[i * hop:i * hop + win] for i in range(n)])
    window = 0.5 - 0.5 * np.cos(2 * np.pi / win * np.arange(win))
    spec = np.abs(np.fft.rfft(frames * window, nfft))
    mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)
    bins = mel(np.linspace(0, 8000, nfft // 2 + 1))
    edges = np.linspace(mel(125.0), mel(7500.0), 66)
    m = np.empty((nfft // 2 + 1, 64))
    for i in range(64):
        lo, c, hi = edges[i:i + 3]
        m[:, i] = np.maximum(0.0, np.minimum((bins - lo) / (c - lo), (hi - bins) / (hi - c)))
    m[0, :] = 0.0
    return np.log(spec @ m + 0.01)[:96]


def test_vggish_logmel_matches_audioset_frontend():
    from pipeline.encoders.vggish import LogMel

    wave = np.random.default_rng(0).uniform(-0.5, 0.5, 16000)
    got = LogMel()(torch.from_numpy(wave).float()[None])[0].numpy()
    want = _vggish_logmel_reference(wave)
    assert got.shape == (96, 64)
    np.testing.assert_allclose(got, want, atol=2e-4)


def test_cnn14_embedding_equals_panns_forward(random_encoders):
    enc = random_encoders("cnn14")
    wave = _wave(1, 32000)[0, :3]  # (3, 32000)
    with torch.inference_mode():
        want = enc.net(wave)["embedding"]  # panns_inference's own forward (eval: no dropout)
        got = enc(wave)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_panns_import_does_not_download_labels(tmp_path):
    code = ("import pipeline.encoders.cnn14 as c; c.panns_models(); "
            "import sys; assert 'panns_inference' not in sys.modules")
    env = {**os.environ, "HOME": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=120)
    assert not (tmp_path / "panns_data").exists()


# ------------------------------------------------------------------------------------------
# Resolver: real formats, strict loading, missing files, random init
# ------------------------------------------------------------------------------------------
def test_torchvision_checkpoint_from_hub_cache(caches):
    import torchvision

    full = torchvision.models.resnet50()  # full classifier model, as published
    caches["hub"].mkdir(parents=True)
    path = caches["hub"] / "resnet50-0676ba61.pth"
    torch.save(full.state_dict(), path)
    enc = build_encoder(ModelSpec("resnet50", weights="pretrained"), image_size=64, allow_download=False)
    assert enc.weights.source == "pretrained" and enc.weights.path == path
    assert enc.weights.sha256 == W.file_sha256(path)
    got = enc.export_state_dict()
    torch.testing.assert_close(got["layer4.2.conv3.weight"], full.state_dict()["layer4.2.conv3.weight"])
    assert "fc.weight" not in got  # the classifier past layer4 is not part of the encoder
    # the export loads back through the resolver (how fine-tuned weights are used)
    torch.save(got, caches["hub"].parent / "tuned.pth")
    tuned = build_encoder(ModelSpec("resnet50", weights=str(caches["hub"].parent / "tuned.pth")), image_size=64)
    torch.testing.assert_close(tuned.export_state_dict()["conv1.weight"], got["conv1.weight"])


def test_strict_loading_rejects_foreign_keys(caches, tmp_path):
    import torchvision

    sd = torchvision.models.resnet50().state_dict()
    sd["layer9.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(WeightsLoadError, match="bad.pth"):
        build_encoder(ModelSpec("resnet50", weights=str(tmp_path / "bad.pth")))


def test_timm_checkpoint_from_hf_cache(caches):
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("resnet18", pretrained=False)
    repo = caches["hf"] / "models--timm--resnet18.a1_in1k"
    snap = repo / "snapshots" / "0123456789abcdef"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")
    save_file(model.state_dict(), str(snap / "model.safetensors"))
    enc = build_encoder(ModelSpec("timm/resnet18", weights="pretrained"), image_size=64, allow_download=False)
    assert enc.weights.path.name == "model.safetensors"
    torch.testing.assert_close(enc.net.body.state_dict()["layer4.1.conv2.weight"],
                               model.state_dict()["layer4.1.conv2.weight"])


def test_vggish_torch_hub_files_and_pca(caches):
    from pipeline.encoders.vggish import VGGishNet

    net = VGGishNet()
    caches["hub"].mkdir(parents=True)
    state = {f"module.{k}": v for k, v in net.state_dict().items()}  # DataParallel-saved variant
    torch.save(state, caches["hub"] / "vggish-10086976.pth")
    rng = np.random.default_rng(0)
    eigen, means = rng.normal(size=(128, 128)).astype(np.float32), rng.normal(size=128).astype(np.float32)
    torch.save({"pca_eigen_vectors": eigen, "pca_means": means},  # numpy arrays, as converted
               caches["hub"] / "vggish_pca_params-970ea276.pth")
    raw = build_encoder(ModelSpec("vggish", weights="pretrained"), allow_download=False)
    q = build_encoder(ModelSpec("vggish", weights="pretrained", postprocess="pca_quantize"), allow_download=False)
    assert raw.weights.path.name == "vggish-10086976.pth"
    wave = _wave(1, 16000)
    with torch.inference_mode():
        e, out = raw.encode_segments(wave)[0], q.encode_segments(wave)[0]
    want = np.round((np.clip((e.numpy() - means) @ eigen.T, -2, 2) + 2) * (255.0 / 4))
    np.testing.assert_allclose(out.numpy(), want, atol=1.0)  # float rounding at .5 boundaries
    assert out.min() >= 0 and out.max() <= 255 and torch.equal(out, out.round())


def test_panns_checkpoint_with_model_key(caches):
    from pipeline.encoders.cnn14 import CNN14_ARGS, panns_models

    with W.seeded(3):
        net = panns_models().Cnn14(**CNN14_ARGS)
    caches["panns"].mkdir(parents=True)
    torch.save({"model": net.state_dict(), "iteration": 1000}, caches["panns"] / "Cnn14_mAP=0.431.pth")
    enc = build_encoder(ModelSpec("cnn14", weights="pretrained"), allow_download=False)
    assert enc.weights.path == caches["panns"] / "Cnn14_mAP=0.431.pth"
    torch.testing.assert_close(enc.net.fc1.weight, net.fc1.weight)
    assert set(enc.export_state_dict()) == {"model"}


@pytest.mark.parametrize("name,file,url_part", [
    ("vgg19", "vgg19-dcbb9e9d.pth", "download.pytorch.org/models/vgg19-dcbb9e9d.pth"),
    ("vggish", "vggish-10086976.pth", "harritaylor/torchvggish/releases"),
    ("cnn14", "Cnn14_mAP=0.431.pth", "zenodo.org/record/3987831"),
])
def test_missing_checkpoint_error_names_file_url_and_place(caches, name, file, url_part):
    with pytest.raises(WeightsNotFoundError) as e:
        build_encoder(ModelSpec(name, weights="pretrained"), image_size=64)
    msg = str(e.value)
    assert file in msg and url_part in msg and "put it at" in msg
    assert caches["calls"] and caches["calls"][0][0].find(url_part) >= 0  # tried the public location
    if name != "cnn14":  # torch.hub convention: sha256 prefix checked on download
        assert caches["calls"][0][2] == file.rsplit("-", 1)[1].split(".")[0]


def test_download_goes_through_the_hub_downloader(caches, monkeypatch):
    from pipeline.encoders.vggish import VGGishNet

    def fake_download(url, dst, hash_prefix=None, progress=True):
        assert url.endswith("vggish-10086976.pth") and hash_prefix == "10086976"
        torch.save(VGGishNet().state_dict(), dst)

    monkeypatch.setattr(W, "download_url_to_file", fake_download)
    enc = build_encoder(ModelSpec("vggish", weights="pretrained"))
    assert enc.weights.path == caches["hub"] / "vggish-10086976.pth"


def test_missing_path_is_named():
    with pytest.raises(WeightsNotFoundError, match="nowhere/tuned.pt"):
        build_encoder(ModelSpec("cnn14", weights="nowhere/tuned.pt"))


def test_random_init_is_seeded_deterministic_and_recorded():
    before = torch.random.get_rng_state()
    a, b, c = (build_encoder(ModelSpec("resnet50", weights="random", seed=s), image_size=64) for s in (0, 0, 1))
    assert torch.equal(torch.random.get_rng_state(), before)  # caller's RNG untouched
    meta = a.metadata()
    assert meta["weights_sha256"] == b.metadata()["weights_sha256"] != c.metadata()["weights_sha256"]
    assert meta["weights"] == "random(seed=0)" and meta["weights_seed"] == 0
    frames = _frames(f=1)
    with torch.inference_mode():
        assert torch.equal(a.encode_segments(frames), b.encode_segments(frames))


def test_visual_encoder_builds_at_a_size_giving_1x1_maps():
    """ResNet-50 at 32 px ends on a 1x1 map: probing the map size must not hit batch norm's
    training-mode check (it used to fail at build time)."""
    enc = build_encoder(ModelSpec("resnet50", weights="random"), image_size=32)
    assert enc.map_hw == (1, 1)
