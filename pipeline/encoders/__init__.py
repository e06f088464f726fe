"""Backbones and the one weights resolver.

``build_encoder(spec)`` turns an ``extract.models.<name>`` entry (:class:`ModelSpec`) into an
:class:`Encoder`; the registry maps ``spec.encoder`` (vgg19, resnet50, vggish, cnn14,
``timm/<name>``) to a factory. Importing this package fills the registry: every public module
in this folder is imported (each registers its encoders with ``@register_encoder``), then the
entry points of the group ``ave_pipeline.encoders`` of other installed packages are loaded.
"""
from pipeline.runtime import discover_plugins

from .audio import AudioEncoder
from .base import (Encoder, build_encoder, check_encoder, encoder_modality, encoder_names,
                   register_encoder)
from .spec import ModelSpec
from .visual import ImagePreprocess, VisualEncoder
from .weights import (ResolvedWeights, WeightsLoadError, WeightsNotFoundError, WeightsSpec,
                      load_checkpoint, resolve)

ENTRY_POINT_GROUP = "ave_pipeline.encoders"  # encoders of other installed packages register here

discover_plugins(__name__, __path__, ENTRY_POINT_GROUP)

__all__ = ["AudioEncoder", "ENTRY_POINT_GROUP", "Encoder", "ImagePreprocess", "ModelSpec",
           "ResolvedWeights", "VisualEncoder", "WeightsLoadError", "WeightsNotFoundError",
           "WeightsSpec", "build_encoder", "check_encoder", "encoder_modality", "encoder_names",
           "load_checkpoint", "register_encoder", "resolve"]
