"""VGGish (Hershey et al., ICASSP 2017): a 128-d embedding per 0.96 s log-mel example.

AVE's published audio features are the raw embeddings after VGGish's final ReLU (no PCA, no
8-bit quantisation), one example per 1-second segment: the default here. ``postprocess: pca``
applies AudioSet's PCA + whitening; ``pca_quantize`` also clips to [-2, 2] and quantises to
0..255 as the AudioSet release did.

Frontend (AudioSet ``mel_features.py``): 16 kHz mono, 25 ms periodic-Hann window (400
samples), 10 ms hop (160), |rfft| with 512 points, HTK-mel triangles over 64 bands 125..7500
Hz built in the mel domain (bin 0 zeroed), ``log(mel + 0.01)``, 96 frames per example. The
triangles are computed in mel space, which ``torchaudio.functional.melscale_fbanks`` does not
do (it interpolates in Hz), so the 257 x 64 matrix is built here; the STFT runs batched in
torch on the model's device.

Weights: the torch-hub port (harritaylor/torchvggish) ``vggish-10086976.pth`` with keys
``features.{0,3,6,8,11,13}.*`` and ``embeddings.{0,2,4}.*``, and
``vggish_pca_params-970ea276.pth`` with ``pca_eigen_vectors`` (128, 128) and ``pca_means``.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.encoders.audio import AudioEncoder
from pipeline.encoders.base import register_encoder
from pipeline.encoders.spec import ModelSpec
from pipeline.runtime import without_data_parallel
from pipeline.encoders.weights import (DOWNLOAD_KEY, ResolvedWeights, WeightsSpec, load_checkpoint,
                                      materialize, resolve_weights)

SAMPLE_RATE = 16000  # vggish_params.SAMPLE_RATE
WINDOW = 400  # 0.025 s
HOP = 160  # 0.010 s
FFT = 512  # 2 ** ceil(log2(WINDOW))
MEL_BANDS = 64
MEL_MIN_HZ, MEL_MAX_HZ = 125.0, 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s
EMBEDDING = 128
QUANTIZE_MIN, QUANTIZE_MAX = -2.0, 2.0

_RELEASE = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/"
VGGISH_WEIGHTS = WeightsSpec(name="torchvggish/vggish", file="vggish-10086976.pth",
                             url=_RELEASE + "vggish-10086976.pth", cache="torch_hub",
                             hash_prefix="10086976", sample_rate=SAMPLE_RATE)
VGGISH_PCA = WeightsSpec(name="torchvggish/vggish_pca_params", file="vggish_pca_params-970ea276.pth",
                         url=_RELEASE + "vggish_pca_params-970ea276.pth", cache="torch_hub",
                         hash_prefix="970ea276")


def hertz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log(1.0 + hz / 700.0)


def vggish_mel_matrix(num_bins: int = FFT // 2 + 1, num_mel: int = MEL_BANDS, sample_rate: int = SAMPLE_RATE,
                      lo: float = MEL_MIN_HZ, hi: float = MEL_MAX_HZ) -> np.ndarray:
    """(num_bins, num_mel) triangles in the mel domain, DC bin zeroed (AudioSet mel_features)."""
    bins_mel = hertz_to_mel(np.linspace(0.0, sample_rate / 2.0, num_bins))
    edges = np.linspace(hertz_to_mel(np.float64(lo)), hertz_to_mel(np.float64(hi)), num_mel + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower) / (center - lower)
    falling = (upper - bins_mel[:, None]) / (upper - center)
    out = np.maximum(0.0, np.minimum(rising, falling))
    out[0, :] = 0.0
    return out


class LogMel(nn.Module):
    """``(B, S)`` 16 kHz waveform -> ``(B, 96, 64)`` log-mel of its first example."""

    def __init__(self):
        super().__init__()
        n = torch.arange(WINDOW, dtype=torch.float64)
        self.register_buffer("window", (0.5 - 0.5 * torch.cos(2 * torch.pi * n / WINDOW)).float(), persistent=False)
        self.register_buffer("mel", torch.from_numpy(vggish_mel_matrix()).float(), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        need = WINDOW + HOP * (EXAMPLE_FRAMES - 1)
        if wave.shape[-1] < need:
            wave = F.pad(wave, (0, need - wave.shape[-1]))
        frames = wave[..., :need].unfold(-1, WINDOW, HOP)  # (B, 96, 400)
        spec = torch.fft.rfft(frames * self.window, n=FFT).abs()  # (B, 96, 257)
        return torch.log(spec @ self.mel + LOG_OFFSET)


class VGGishNet(nn.Module):
    """The VGGish network with the torch-hub port's module names (its checkpoint loads as is)."""

    def __init__(self):
        super().__init__()
        layers, cin = [], 1
        for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 6 * 4, 4096), nn.ReLU(True),
            nn.Linear(4096, 4096), nn.ReLU(True),
            nn.Linear(4096, EMBEDDING), nn.ReLU(True))

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        """``(B, 1, 96, 64)`` -> ``(B, 128)``."""
        x = self.features(logmel)  # (B, 512, 6, 4)
        x = x.permute(0, 2, 3, 1).flatten(1)  # TF flattens NHWC: keep its order for the ported fc
        return self.embeddings(x)


def remap_vggish(state: dict) -> dict:
    """torch-hub VGGish checkpoint -> :class:`VGGishNet` keys: ``module.`` prefixes stripped,
    a torchvggish ``VGGish`` model's ``pproc.*`` PCA entries dropped (PCA is its own file)."""
    state = without_data_parallel(state)
    return {k: v for k, v in state.items() if not k.startswith("pproc.")}


class PCAPostprocess(nn.Module):
    """AudioSet PCA/whitening (+ optional clip and 8-bit quantisation)."""

    def __init__(self, eigen: torch.Tensor, means: torch.Tensor, quantize: bool):
        super().__init__()
        self.register_buffer("eigen", eigen.float().reshape(EMBEDDING, EMBEDDING))
        self.register_buffer("means", means.float().reshape(1, EMBEDDING))
        self.quantize = quantize

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        x = (emb.float() - self.means) @ self.eigen.T
        if self.quantize:
            x = torch.round((x.clamp(QUANTIZE_MIN, QUANTIZE_MAX) - QUANTIZE_MIN) * (255.0 / (QUANTIZE_MAX - QUANTIZE_MIN)))
        return x


def load_pca(path) -> tuple[torch.Tensor, torch.Tensor]:
    params = load_checkpoint(path)
    eigen = torch.as_tensor(np.asarray(params["pca_eigen_vectors"]), dtype=torch.float32)
    means = torch.as_tensor(np.asarray(params["pca_means"]), dtype=torch.float32)
    if eigen.shape != (EMBEDDING, EMBEDDING) or means.numel() != EMBEDDING:
        raise ValueError(f"{path}: bad PCA shapes {tuple(eigen.shape)}, {tuple(means.shape)}")
    return eigen, means


class VGGishEncoder(AudioEncoder):
    sample_rate = SAMPLE_RATE
    dim = EMBEDDING

    def __init__(self, spec: ModelSpec, weights: ResolvedWeights, net: VGGishNet,
                 post: Optional[PCAPostprocess], pca_weights: Optional[ResolvedWeights]):
        super().__init__(spec.encoder, spec, weights)
        self.frontend = LogMel()
        self.net = net
        self.post = post
        self.pca_weights = pca_weights

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        with torch.autocast(wave.device.type, enabled=False):
            logmel = self.frontend(wave.float())
        emb = self.net(logmel.unsqueeze(1))
        return self.post(emb) if self.post is not None else emb

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.net.state_dict().items()}

    def metadata(self) -> dict:
        meta = super().metadata()
        meta.update(postprocess=self.spec.postprocess,
                    pca_sha256=self.pca_weights.sha256 if self.pca_weights else "")
        return meta


@register_encoder("vggish", "audio")
def vggish(spec: ModelSpec, allow_download: bool = True, image_size: Optional[int] = None,
           download_key: str = DOWNLOAD_KEY) -> VGGishEncoder:
    net, resolved = materialize(VGGishNet, spec.weights, spec.seed, VGGISH_WEIGHTS,
                                remap=remap_vggish, allow_download=allow_download,
                                download_key=download_key)
    post, pca = None, None
    if spec.postprocess != "none":  # the published PCA parameters, whatever the net's weights
        pca = resolve_weights("pretrained", VGGISH_PCA, allow_download=allow_download,
                      download_key=download_key)
        post = PCAPostprocess(*load_pca(pca.path), quantize=spec.postprocess == "pca_quantize")
    return VGGishEncoder(spec, resolved, net, post, pca)
