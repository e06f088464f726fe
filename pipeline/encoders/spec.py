"""Model spec: one entry of ``extract.models`` in params.yaml (no torch import here)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.config import ConfigError


@dataclass(frozen=True)
class ModelSpec:
    """Which encoder, with which weights. ``build_encoder(spec)`` turns it into a module."""

    encoder: str  # registry name: vgg19 | resnet50 | vggish | cnn14 | timm/<timm model name>
    weights: str = "pretrained"  # pretrained (library cache / download) | random | <path to checkpoint>
    seed: int = 0  # init seed when weights: random (recorded in the feature file)
    preprocess: Literal["weights", "caffe"] = "weights"  # visual: mean/std of the weights | caffe BGR mean
    postprocess: Literal["none", "pca", "pca_quantize"] = "none"  # vggish: raw | PCA-whitened | +8-bit

    def validate(self, key: str = "") -> None:
        if not self.encoder:
            raise ConfigError(f"{key}.encoder: empty; e.g. vgg19, resnet50, vggish, cnn14, timm/<name>")
        if not self.weights:
            raise ConfigError(f"{key}.weights: empty; allowed: pretrained | random | <path>")
