"""Backbones and the one weights resolver.

``build_encoder(spec)`` turns an ``extract.models.<name>`` entry (:class:`ModelSpec`) into an
:class:`Encoder`; the registry maps ``spec.encoder`` (vgg19, resnet50, vggish, cnn14,
``timm/<name>``) to a factory. Attributes are imported lazily so that ``pipeline.config`` can
read :class:`ModelSpec` without importing torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "ModelSpec": "pipeline.encoders.spec",
    "Encoder": "pipeline.encoders.base",
    "build_encoder": "pipeline.encoders.base",
    "encoder_names": "pipeline.encoders.base",
    "encoder_modality": "pipeline.encoders.base",
    "register_encoder": "pipeline.encoders.base",
    "VisualEncoder": "pipeline.encoders.visual",
    "ImagePreprocess": "pipeline.encoders.visual",
    "AudioEncoder": "pipeline.encoders.audio",
    "WeightsSpec": "pipeline.encoders.weights",
    "ResolvedWeights": "pipeline.encoders.weights",
    "WeightsNotFoundError": "pipeline.encoders.weights",
    "WeightsLoadError": "pipeline.encoders.weights",
    "resolve": "pipeline.encoders.weights",
    "load_checkpoint": "pipeline.encoders.weights",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pipeline.encoders' has no attribute {name!r}")
