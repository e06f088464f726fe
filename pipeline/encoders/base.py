"""Encoder interface shared by the visual and audio backbones, and the encoder registry."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from pipeline.config import ConfigError
from pipeline.encoders.spec import ModelSpec
from pipeline.encoders.weights import DOWNLOAD_KEY, ResolvedWeights, state_dict_sha256


class Encoder(nn.Module):
    """A frozen-by-default feature extractor.

    * ``forward(x)``: model input -> per-item features (visual: ``(B, C, h, w)`` map of a
      preprocessed frame batch; audio: ``(B, D)`` embedding of a batch of 1-second waveforms).
    * ``prepare(raw)``: raw decoded data -> model input (on the same device, no Python loop).
    * ``encode_segments(raw)``: ``(B, T, ...)`` decoded clips -> ``(B, T, ...)`` stored features.
    * ``export_state_dict()``: the weights in the native checkpoint format the resolver reads
      (so a fine-tuned encoder saved with it is loadable with ``weights: <path>``).
    """

    modality: str = ""

    def __init__(self, name: str, spec: ModelSpec, weights: ResolvedWeights):
        super().__init__()
        self.name = name
        self.spec = spec
        self.weights = weights

    def prepare(self, raw: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_segments(self, raw: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def feature_shape(self) -> tuple[int, ...]:
        """Per-segment stored shape: ``(h, w, C)`` visual, ``(D,)`` audio."""
        raise NotImplementedError

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def weights_sha256(self) -> str:
        """sha256 of the checkpoint file, or for random weights of the initialised state."""
        if not self.weights.sha256:
            if not hasattr(self, "_state_sha"):
                self._state_sha = state_dict_sha256(self.state_dict())
            return self._state_sha
        return self.weights.sha256

    def metadata(self) -> dict[str, Any]:
        """Provenance written into feature files."""
        return {
            "encoder": self.spec.encoder,
            "weights": self.weights.describe(),
            "weights_sha256": self.weights_sha256(),
            "weights_seed": -1 if self.weights.seed is None else self.weights.seed,
            "weights_file": self.weights.path.name if self.weights.path else "",  # name only: portable; sha256 identifies it
        }


Factory = Callable[..., Encoder]  # factory(spec, allow_download=, image_size=, download_key=) -> Encoder
_ENCODERS: dict[str, Factory] = {}
_MODALITY: dict[str, str] = {}  # registered name -> "visual" | "audio"
PREFIX = "/"  # names registered ending with "/" are families: "timm/" serves "timm/<model>"
ENTRY_POINT_GROUP = "ave_pipeline.encoders"  # encoders of other installed packages register here
_discovered = False


def discover() -> None:
    """Fill the registry once: import every public module of ``pipeline/encoders`` (each
    registers its encoders) and the entry points of :data:`ENTRY_POINT_GROUP`. Every lookup
    calls it, so a new encoder module is found without editing any other file."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    import pipeline.encoders as package
    from pipeline.runtime import discover_plugins

    discover_plugins(package.__name__, package.__path__, ENTRY_POINT_GROUP)


def register_encoder(name: str, modality: str) -> Callable[[Factory], Factory]:
    """Register ``factory(spec, allow_download=True, image_size=None, download_key=...) ->
    Encoder`` under ``name`` (audio factories ignore ``image_size``; ``download_key`` is the
    params key named when a download is needed but disabled); ``modality`` is ``visual`` or
    ``audio``."""
    if modality not in ("visual", "audio"):
        raise ValueError(f"encoder {name!r}: modality must be 'visual' or 'audio', got {modality!r}")

    def deco(fn: Factory) -> Factory:
        if name in _ENCODERS:
            raise ValueError(f"encoder {name!r} registered twice")
        _ENCODERS[name] = fn
        _MODALITY[name] = modality
        return fn
    return deco


def encoder_names() -> list[str]:
    """Registered encoder names (the registry discovers them on first use)."""
    discover()
    return sorted(_ENCODERS)


def _registered(name: str) -> str:
    """The registry entry serving ``name`` (itself, or its family such as ``timm/``)."""
    discover()
    if name in _ENCODERS:
        return name
    family = name.split(PREFIX, 1)[0] + PREFIX if PREFIX in name else None
    if family in _ENCODERS and name != family:
        return family
    raise KeyError(f"unknown encoder {name!r}; valid: {', '.join(sorted(_ENCODERS))} "
                   "(a family like 'timm/' takes a model name after the slash)")


def lookup(name: str) -> Factory:
    return _ENCODERS[_registered(name)]


def encoder_modality(name: str) -> str:
    """``visual`` or ``audio`` for a registered encoder name (KeyError listing valid names)."""
    return _MODALITY[_registered(name)]


def check_encoder(name: str, key: str, modality: Optional[str] = None) -> str:
    """Params check: ``name`` is a registered encoder (a ``timm/<model>`` that timm knows) of
    ``modality`` when given; returns its modality. Errors name ``key``."""
    try:
        found = encoder_modality(name)
    except KeyError as e:
        raise ConfigError(f"{key}: {e.args[0]}") from None
    if name.startswith("timm/"):
        import timm  # heavy; imported only when a timm encoder is configured
        if not timm.is_model(name.split("/", 1)[1]):
            raise ConfigError(f"{key}: timm has no model {name.split('/', 1)[1]!r} "
                              "(see timm.list_models())")
    if modality and found != modality:
        article = {"audio": "an", "visual": "a"}
        raise ConfigError(f"{key}: {name!r} is {article[found]} {found} encoder; "
                          f"{article[modality]} {modality} one is needed")
    return found


def build_encoder(spec: Union[ModelSpec, dict, str], allow_download: bool = True,
                  image_size: Optional[int] = None, download_key: str = DOWNLOAD_KEY) -> Encoder:
    """Encoder from a model spec (``extract.models.<name>`` entry, a dict of it, or an encoder
    name meaning ``{encoder: name}`` with pretrained weights), in eval mode.

    ``image_size``: visual frames are squashed to it (None: the weights' input size)."""
    if isinstance(spec, str):
        spec = ModelSpec(encoder=spec)
    elif isinstance(spec, dict):
        spec = ModelSpec(**spec)
    elif not dataclasses.is_dataclass(spec):
        raise TypeError(f"expected a ModelSpec, dict or name, got {type(spec).__name__}")
    enc = lookup(spec.encoder)(spec, allow_download=allow_download, image_size=image_size,
                               download_key=download_key)
    return enc.eval()
