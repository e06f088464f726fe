"""Model spec: one entry of ``extract.models`` in params.yaml (no torch import here)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipeline.config import ConfigError

WEIGHTS_KEYWORDS = ("pretrained", "random")
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


def check_weights(value: str, key: str) -> None:
    """``pretrained``, ``random``, or something that reads as a checkpoint path (it contains a
    folder or ends in a checkpoint suffix): a typo such as ``pretrianed`` is an error here,
    not a 'file not found' after the data is read. Whether the file exists is checked when the
    encoder is built (a stage's input may not exist yet when params are loaded)."""
    if value in WEIGHTS_KEYWORDS:
        return
    if not value.strip() or not ("/" in value or value.endswith(CHECKPOINT_SUFFIXES)):
        raise ConfigError(f"{key}: {value!r} is neither {' nor '.join(WEIGHTS_KEYWORDS)} nor a "
                          f"checkpoint path (a folder/file, or a name ending in "
                          f"{', '.join(CHECKPOINT_SUFFIXES)})")


def weights_inside(value: str, key: str, root: str | Path) -> None:
    """A weights path named in params lies inside the project ``root`` (the folder of
    params.yaml, where DVC tracks it), symlinks resolved; checked by the stages before any
    encoder is built (:func:`pipeline.files.contained`)."""
    if value in WEIGHTS_KEYWORDS:
        return
    from pipeline.files import contained

    path = Path(value).expanduser()
    contained(path if path.is_absolute() else Path(root) / path, root, f"weights file ({key})")


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
        check_weights(self.weights, f"{key}.weights")
