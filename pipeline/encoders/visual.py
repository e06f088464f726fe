"""Visual encoders: the last conv map of an ImageNet backbone per frame, averaged per segment.

* ``vgg19``: torchvision VGG-19, output of the final max-pool (``features.36``), 512 x 7 x 7 at
  224 x 224 (the map the AVE features were made of, Tian et al. 2018).
* ``resnet50``: torchvision ResNet-50, output of ``layer4``, 2048 x 7 x 7 at 224 x 224.
* ``timm/<name>``: any timm model, last map of ``features_only=True`` (``out_indices=(-1,)``).

Frames are resized to ``image_size`` by squashing (no crop), as the AVE features were, and
normalised with the weights' mean/std (``preprocess: weights``) or caffe-style
(``preprocess: caffe``: BGR, ImageNet BGR mean subtracted, 0..255 range, as Keras'
``preprocess_input`` for VGG-19 that made the published AVE features).

timm is imported inside the ``timm/`` family's functions only: its import takes seconds and the
torchvision encoders (and every params check) never need it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from pipeline.encoders.base import Encoder, register_encoder
from pipeline.encoders.spec import ModelSpec
from pipeline.runtime import without_data_parallel
from pipeline.encoders.weights import (
    DOWNLOAD_KEY, HASH_PREFIX, ResolvedWeights, WeightsSpec, load_checkpoint, load_strict, materialize, resolve_weights, seeded,
)

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # Keras imagenet_utils 'caffe' mode, 0..255 BGR
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision/timm ImageNet statistics, pixels in [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_SIZE = (224, 224)
# torchvision backbones: arch -> (published weights tag, node whose output is the map, channels)
TORCHVISION = {
    "vgg19": ("IMAGENET1K_V1", "features.36", 512),  # final max-pool of the conv stack
    "resnet50": ("IMAGENET1K_V1", "layer4", 2048),  # resnet50-0676ba61.pth (the classic file)
}


@dataclass(frozen=True)
class ImagePreprocess:
    """uint8 RGB frames -> normalised float input; values from the weights' description."""

    size: tuple[int, int]  # (H, W) frames are squashed to
    mean: tuple[float, float, float]  # subtracted, in 0..255 pixel units, in input channel order
    std: tuple[float, float, float]  # divided by, in 0..255 pixel units
    bgr: bool = False  # flip RGB -> BGR before normalising

    @classmethod
    def from_weights(cls, spec: WeightsSpec, mode: str, image_size: Optional[int]) -> "ImagePreprocess":
        """From the weights' description; a description without size or mean/std is an error
        (no silent default)."""
        if spec.input_size is None or (mode != "caffe" and (spec.mean is None or spec.std is None)):
            raise ValueError(f"weights {spec.name!r} describe no input size / mean / std")
        size = (image_size, image_size) if image_size else tuple(spec.input_size)
        if mode == "caffe":
            return cls(size, CAFFE_MEAN_BGR, (1.0, 1.0, 1.0), bgr=True)
        mean = tuple(255.0 * m for m in spec.mean)
        std = tuple(255.0 * s for s in spec.std)
        return cls(size, mean, std, bgr=False)


class VisualEncoder(Encoder):
    """Per-frame conv map of a backbone; ``encode_segments`` averages over a segment's frames."""

    modality = "visual"

    def __init__(self, name: str, spec: ModelSpec, weights: ResolvedWeights, net: nn.Module,
                 channels: int, prep: ImagePreprocess, export: Callable[[nn.Module], dict]):
        super().__init__(name, spec, weights)
        self.net = net
        self.channels = channels
        self.prep = prep
        self.channels_last = True
        self._export = export
        self.register_buffer("mean", torch.tensor(prep.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("inv_std", 1.0 / torch.tensor(prep.std).view(1, 3, 1, 1), persistent=False)
        with torch.no_grad():
            h, w = net_output_hw(net, prep.size)
        self.map_hw = (h, w)

    def prepare(self, frames: torch.Tensor) -> torch.Tensor:
        """``(N, H, W, 3)`` uint8 RGB (or float 0..255) -> ``(N, 3, H', W')`` normalised float32."""
        x = frames.permute(0, 3, 1, 2).float()
        if tuple(x.shape[-2:]) != self.prep.size:
            x = F.interpolate(x, size=self.prep.size, mode="bilinear", align_corners=False, antialias=True)
        if self.prep.bgr:
            x = x.flip(1)
        x = (x - self.mean) * self.inv_std
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed ``(N, 3, H, W)`` -> map ``(N, C, h, w)``."""
        return self.net(x)

    def encode_segments(self, frames: torch.Tensor) -> torch.Tensor:
        """``(B, T, F, H, W, 3)`` uint8 -> ``(B, T, h, w, C)`` float32 (mean over F frames)."""
        b, t, f = frames.shape[:3]
        maps = self(self.prepare(frames.reshape(b * t * f, *frames.shape[3:])))
        maps = maps.float().reshape(b, t, f, *maps.shape[1:]).mean(dim=2)
        return maps.permute(0, 1, 3, 4, 2)

    def feature_shape(self, size: Optional[tuple[int, int]] = None) -> tuple[int, ...]:
        """``(h, w, C)`` stored per segment, at the encoder's input size or at ``size``."""
        hw = self.map_hw if size is None else net_output_hw(self.net, tuple(size))
        return (*hw, self.channels)

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        return self._export(self.net)

    def metadata(self) -> dict:
        meta = super().metadata()
        meta.update(image_size=self.prep.size[0], preprocess=self.spec.preprocess,
                    mean=list(self.prep.mean), std=list(self.prep.std), bgr=self.prep.bgr)
        return meta


def net_output_hw(net: nn.Module, size: tuple[int, int]) -> tuple[int, int]:
    """Map size for an input size (one tiny forward on the meta device, in eval mode: a batch of
    one at a 1x1 map is fine there, and no batch-norm statistics move)."""
    try:
        out = copy.deepcopy(net).to("meta").eval()(torch.empty(1, 3, *size, device="meta"))
    except Exception:  # some ops have no meta kernel: fall back to a real forward
        training = net.training
        out = net.eval()(torch.zeros(1, 3, *size))
        net.train(training)
    return int(out.shape[-2]), int(out.shape[-1])


class _MapOf(nn.Module):
    """A torchvision feature extractor returning its single map."""

    def __init__(self, extractor: nn.Module):
        super().__init__()
        self.body = extractor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)["map"]


# ------------------------------------------------------------------------------------------
# torchvision
# ------------------------------------------------------------------------------------------
def torchvision_weights(arch: str, tag: str) -> WeightsSpec:
    """Weights description from torchvision's own ``Weights`` enum (file, url, mean/std, size)."""
    w = torchvision.models.get_model_weights(arch)[tag]
    t = w.transforms()
    file = w.url.rsplit("/", 1)[-1]
    m = HASH_PREFIX.search(file)
    return WeightsSpec(name=f"torchvision/{arch}.{tag}", file=file, url=w.url, cache="torch_hub",
                       hash_prefix=m.group(1) if m else None,
                       input_size=(t.crop_size[0], t.crop_size[0]), mean=tuple(t.mean), std=tuple(t.std))


def torchvision_body(arch: str) -> tuple[nn.Module, set[str]]:
    """(backbone up to the map node, initialised the way torchvision initialises its convs and
    norms; the state-dict keys past that node, i.e. the classifier, dropped when loading).

    The full model is built on the meta device so the classifier (120 M parameters for VGG-19)
    is never allocated or initialised."""
    with torch.device("meta"):
        full = torchvision.models.get_model(arch, weights=None)
    body = create_feature_extractor(full, {TORCHVISION[arch][1]: "map"}).to_empty(device="cpu")
    for m in body.modules():  # torchvision VGG/ResNet scheme (see their __init__)
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
    return body, set(full.state_dict()) - set(body.state_dict())


def remap_torchvision(state: dict, drop: set[str]) -> dict:
    """torchvision checkpoint (full classifier model, optionally ``module.``-prefixed from
    DataParallel) -> feature-extractor keys: the listed head keys are dropped, nothing else."""
    state = without_data_parallel(state)
    return {"body." + k: v for k, v in state.items() if k not in drop}


def _build_torchvision(arch: str, spec: ModelSpec, allow_download: bool, image_size: Optional[int],
                       download_key: str) -> VisualEncoder:
    tag, node, channels = TORCHVISION[arch]
    wspec = torchvision_weights(arch, tag)
    drop: set[str] = set()

    def create() -> nn.Module:
        body, head = torchvision_body(arch)
        drop.update(head)
        return _MapOf(body)

    net, resolved = materialize(create, spec.weights, spec.seed, wspec,
                                remap=lambda sd: remap_torchvision(sd, drop), allow_download=allow_download,
                                download_key=download_key)
    prep = ImagePreprocess.from_weights(wspec, spec.preprocess, image_size)
    export = lambda n: {k[len("body."):]: v.detach().cpu() for k, v in n.state_dict().items()}
    return VisualEncoder(spec.encoder, spec, resolved, net, channels, prep, export)


# ------------------------------------------------------------------------------------------
# timm
# ------------------------------------------------------------------------------------------
def timm_weights(model_name: str) -> Optional[WeightsSpec]:
    """Weights description from timm's pretrained config (HF hub file, mean/std, input size)."""
    import timm  # the timm family only (see the module doc)

    cfg = timm.models.get_pretrained_cfg(model_name)
    if cfg is None:
        return None
    size = tuple(cfg.input_size[1:])
    if cfg.hf_hub_id:
        file = getattr(cfg, "hf_hub_filename", None) or "model.safetensors"
        return WeightsSpec(name=f"timm/{cfg.hf_hub_id}", file=file, cache="hf", hf_repo=cfg.hf_hub_id,
                           url=f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/{file}",
                           input_size=size, mean=tuple(cfg.mean), std=tuple(cfg.std))
    if cfg.url:
        file = cfg.url.rsplit("/", 1)[-1]
        m = HASH_PREFIX.search(file)
        return WeightsSpec(name=f"timm/{model_name}", file=file, url=cfg.url, cache="torch_hub",
                           hash_prefix=m.group(1) if m else None,
                           input_size=size, mean=tuple(cfg.mean), std=tuple(cfg.std))
    return None


def _imagenet_stats(model_name: str) -> WeightsSpec:
    """A timm model without a pretrained config (random or own weights): ImageNet mean/std and
    224 px, a decision that is logged here and recorded in the feature file's mean/std."""
    print(f"encoder timm/{model_name}: timm has no pretrained config; frames normalised with "
          f"ImageNet mean {IMAGENET_MEAN} / std {IMAGENET_STD} at {IMAGENET_SIZE[0]} px", flush=True)
    return WeightsSpec(f"timm/{model_name} (no pretrained config)", "", "", "torch_hub",
                       input_size=IMAGENET_SIZE, mean=IMAGENET_MEAN, std=IMAGENET_STD)


class _TimmMap(nn.Module):
    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)[-1]


def _build_timm(spec: ModelSpec, allow_download: bool, image_size: Optional[int],
                download_key: str) -> VisualEncoder:
    import timm  # the timm family only (see the module doc)

    model_name = spec.encoder.split("/", 1)[1]
    wspec = timm_weights(model_name)
    resolved = resolve_weights(spec.weights, wspec, spec.seed, allow_download, download_key)
    kwargs = dict(features_only=True, out_indices=(-1,))
    with seeded(spec.seed):
        body = timm.create_model(model_name, pretrained=False, **kwargs)
    if resolved.path is not None:
        state = load_checkpoint(resolved.path)
        if set(state) == set(body.state_dict()):  # this encoder's own export (e.g. fine-tuned)
            load_strict(body, state, str(resolved.path))
        else:  # a published timm checkpoint of the full model: timm's own strict loader + filter
            with seeded(spec.seed):
                body = timm.create_model(model_name, pretrained=True,
                                         pretrained_cfg_overlay=dict(file=str(resolved.path)), **kwargs)
    channels = body.feature_info.channels()[-1]
    prep = ImagePreprocess.from_weights(wspec or _imagenet_stats(model_name), spec.preprocess, image_size)
    export = lambda n: {k[len("body."):]: v.detach().cpu() for k, v in n.state_dict().items()}
    return VisualEncoder(spec.encoder, spec, resolved, _TimmMap(body), channels, prep, export)


# ------------------------------------------------------------------------------------------
# Registry entries
# ------------------------------------------------------------------------------------------
@register_encoder("vgg19", "visual")
def vgg19(spec: ModelSpec, allow_download: bool = True, image_size: Optional[int] = None,
          download_key: str = DOWNLOAD_KEY) -> VisualEncoder:
    return _build_torchvision("vgg19", spec, allow_download, image_size, download_key)


@register_encoder("resnet50", "visual")
def resnet50(spec: ModelSpec, allow_download: bool = True, image_size: Optional[int] = None,
          download_key: str = DOWNLOAD_KEY) -> VisualEncoder:
    return _build_torchvision("resnet50", spec, allow_download, image_size, download_key)


@register_encoder("timm/", "visual")
def timm_family(spec: ModelSpec, allow_download: bool = True, image_size: Optional[int] = None,
                download_key: str = DOWNLOAD_KEY) -> VisualEncoder:
    return _build_timm(spec, allow_download, image_size, download_key)
