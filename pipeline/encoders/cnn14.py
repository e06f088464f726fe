"""PANNs Cnn14 (Kong et al., TASLP 2020): the 2048-d embedding of each 1-second window.

The network is ``panns_inference.models.Cnn14`` (32 kHz, 1024-point window, 320 hop, 64 mel
bands 50..14000 Hz, 527 AudioSet classes), in eval mode, with its own frontend
(torchlibrosa STFT + log-mel). The embedding is ``relu(fc1(max_t + mean_t))``, the
``embedding`` output of ``Cnn14.forward``; the frontend runs in float32 under autocast.

``import panns_inference`` runs its package ``__init__``, which downloads a label CSV at
import time; the ``models`` module is therefore loaded under a private package alias that
points at the installed package directory without executing ``__init__``.

Weights: ``Cnn14_mAP=0.431.pth`` in ``~/panns_data`` (where panns_inference looks), a dict
with the state dict under ``model``.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Optional

import torch
import torch.nn.functional as F

from pipeline.encoders.audio import AudioEncoder
from pipeline.encoders.base import register_encoder
from pipeline.encoders.spec import ModelSpec
from pipeline.runtime import without_data_parallel
from pipeline.encoders.weights import DOWNLOAD_KEY, ResolvedWeights, WeightsSpec, materialize

SAMPLE_RATE = 32000
EMBEDDING = 2048
CNN14_ARGS = dict(sample_rate=SAMPLE_RATE, window_size=1024, hop_size=320, mel_bins=64,
                  fmin=50, fmax=14000, classes_num=527)  # panns_inference.AudioTagging defaults
CNN14_WEIGHTS = WeightsSpec(name="panns/Cnn14_mAP=0.431", file="Cnn14_mAP=0.431.pth",
                            url="https://zenodo.org/record/3987831/files/Cnn14_mAP%3D0.431.pth?download=1",
                            cache="panns", sample_rate=SAMPLE_RATE)
_ALIAS = "_panns_models_noinit"


def panns_models() -> types.ModuleType:
    """``panns_inference.models`` without running ``panns_inference/__init__.py``."""
    if "panns_inference.models" in sys.modules:
        return sys.modules["panns_inference.models"]
    if _ALIAS not in sys.modules:
        spec = importlib.util.find_spec("panns_inference")  # locates, does not execute
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError("panns_inference is not installed (pip install panns-inference)")
        pkg = types.ModuleType(_ALIAS)
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules[_ALIAS] = pkg
    return importlib.import_module(f"{_ALIAS}.models")


def remap_cnn14(state: dict) -> dict:
    """PANNs checkpoint ``{'model': state_dict, ...}`` (or a bare state dict, optionally
    ``module.``-prefixed from DataParallel) -> ``Cnn14`` keys."""
    if "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    return without_data_parallel(state)


class Cnn14Encoder(AudioEncoder):
    sample_rate = SAMPLE_RATE
    dim = EMBEDDING

    def __init__(self, spec: ModelSpec, weights: ResolvedWeights, net: torch.nn.Module):
        super().__init__(spec.encoder, spec, weights)
        self.net = net

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        m = self.net
        with torch.autocast(wave.device.type, enabled=False):
            x = m.logmel_extractor(m.spectrogram_extractor(wave.float()))  # (B, 1, T, 64)
            x = m.bn0(x.transpose(1, 3)).transpose(1, 3)
        for i, block in enumerate((m.conv_block1, m.conv_block2, m.conv_block3,
                                   m.conv_block4, m.conv_block5, m.conv_block6)):
            x = block(x, pool_size=(1, 1) if i == 5 else (2, 2), pool_type="avg")
        x = x.mean(dim=3)  # over mel
        x = x.max(dim=2).values + x.mean(dim=2)  # over time
        return F.relu(m.fc1(x))

    def export_state_dict(self) -> dict:
        return {"model": {k: v.detach().cpu() for k, v in self.net.state_dict().items()}}


@register_encoder("cnn14", "audio")
def cnn14(spec: ModelSpec, allow_download: bool = True, image_size: Optional[int] = None,
          download_key: str = DOWNLOAD_KEY) -> Cnn14Encoder:
    models = panns_models()
    net, resolved = materialize(lambda: models.Cnn14(**CNN14_ARGS), spec.weights, spec.seed,
                                CNN14_WEIGHTS, remap=remap_cnn14, allow_download=allow_download,
                                download_key=download_key)
    return Cnn14Encoder(spec, resolved, net)
