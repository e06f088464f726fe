"""``extract`` and ``published`` sections of params.yaml (stages ``extract@<model>``,
``extract_finetuned@<role>``, ``import@<name>``).

``extract`` is written in groups, so that a stage lists a group rather than its keys:
``extract.common`` (every extraction), ``extract.visual`` / ``extract.audio`` (one modality's
extractions), ``extract.models`` (one entry a feature file, with its ``kind``, visual or audio).
The groups are read into the one flat :class:`ExtractConfig`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from pipeline.config import ConfigError, from_dict, register_check, register_section
from pipeline.data.ids import safe_filename
from pipeline.encoders.base import check_encoder
from pipeline.encoders.spec import ModelSpec
from pipeline.layout import BACKGROUND_SUFFIX


def _default_models() -> dict[str, ModelSpec]:
    return {
        "vgg19": ModelSpec("vgg19"),
        "resnet50": ModelSpec("resnet50"),
        "vggish": ModelSpec("vggish"),
        "cnn14": ModelSpec("cnn14"),
    }


@register_section("extract")
@dataclass(frozen=True)
class ExtractConfig:
    """How features are extracted; ``models`` names what (one ``<paths.features>/<name>.h5`` each)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when available (and says so)
    frames_per_segment: int = 16  # frames sampled per 1-second segment, averaged (AVE: 16)
    sampling: Literal["timestamp", "ave_reference"] = "timestamp"  # frame rule, see pipeline.media
    image_size: Optional[int] = None  # frames squashed to this square size; null: the weights' (224)
    dtype: Literal["float16", "float32"] = "float16"  # stored feature dtype
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"  # autocast; auto: bf16 on cuda, none on cpu
    channels_last: bool = True  # NHWC memory format for the visual backbones
    batch_videos: int = 4  # videos per model batch (x 10 segments x frames_per_segment frames)
    workers: int = 2  # decode worker processes (per rank)
    decode_timeout_s: float = 120.0  # a video taking longer to decode is marked invalid
    queue_batches: int = 4  # decoded batches buffered ahead of the model when decoding overlaps compute
    shard_videos: int = 64  # videos per atomically committed shard (resume granularity)
    download: bool = True  # fetch missing pretrained files from their public location
    models: dict[str, ModelSpec] = field(default_factory=_default_models)

    @classmethod
    def from_params(cls, data: Any, key: str) -> "ExtractConfig":
        """The grouped section (``common``, ``visual``, ``audio``, ``models``, and the
        ``runtime.extract`` knobs merged in) -> one flat config; errors name the grouped key."""
        data = dict(data or {})
        flat: dict[str, Any] = {}
        where: dict[str, str] = {}  # flat key -> its group
        for group, keys in GROUPS.items():
            values = data.pop(group, None) or {}
            if not isinstance(values, dict):
                raise ConfigError(f"{key}.{group}: expected a mapping, got {values!r}")
            unknown = sorted(set(values) - set(keys))
            if unknown:
                raise ConfigError(f"unknown key {key}.{group}.{unknown[0]}; allowed keys of "
                                  f"{key}.{group}: {', '.join(keys) or '(none)'}")
            flat.update(values)
            where.update({k: group for k in keys})
        models = data.pop("models", None)
        kinds = {}
        if models is not None:
            if not isinstance(models, dict):
                raise ConfigError(f"{key}.models: expected a mapping of model names, got {models!r}")
            flat["models"] = {}
            for name, entry in models.items():
                entry = dict(entry or {}) if isinstance(entry, dict) else entry
                if isinstance(entry, dict):
                    kinds[name] = entry.pop("kind", None)
                    if kinds[name] not in MODALITIES:
                        raise ConfigError(f"{key}.models.{name}.kind: {kinds[name]!r}; allowed: "
                                          f"{', '.join(MODALITIES)} (the stage extract@{name} "
                                          f"reads {key}.common and {key}.<kind>)")
                flat["models"][name] = entry
        unknown = sorted(set(data) - set(RUNTIME_ONLY))
        if unknown:
            raise ConfigError(f"unknown key {key}.{unknown[0]}; allowed keys of {key}: "
                              f"{', '.join([*GROUPS, 'models'])}")
        flat.update(data)  # the runtime knobs
        try:
            cfg = from_dict(cls, flat, key)
        except ConfigError as e:
            msg = str(e)
            for name, group in where.items():
                msg = msg.replace(f"{key}.{name}:", f"{key}.{group}.{name}:")
            raise ConfigError(msg) from None
        for name, kind in kinds.items():
            check_encoder(cfg.models[name].encoder, f"{key}.models.{name}.kind", kind)
        return cfg

    def validate(self, key: str = "extract") -> None:
        positive = {"frames_per_segment": self.frames_per_segment, "batch_videos": self.batch_videos,
                    "shard_videos": self.shard_videos, "queue_batches": self.queue_batches}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{key}.{name}: must be >= 1, got {value}")
        if self.workers < 0:
            raise ConfigError(f"{key}.workers: must be >= 0, got {self.workers}")
        if self.image_size is not None and self.image_size < 32:
            raise ConfigError(f"{key}.image_size: must be >= 32 or null, got {self.image_size}")
        if self.decode_timeout_s <= 0:
            raise ConfigError(f"{key}.decode_timeout_s: must be > 0, got {self.decode_timeout_s}")
        for name, spec in self.models.items():
            check_model(name, spec, f"{key}.models.{name}")


# The groups of the ``extract`` section: what every extraction reads, and what one modality's
# extractions read (dvc.yaml: a stage lists extract.common and extract.<kind>).
GROUPS: dict[str, tuple[str, ...]] = {
    "common": ("device", "dtype", "amp", "batch_videos", "decode_timeout_s", "shard_videos"),
    "visual": ("frames_per_segment", "sampling", "image_size", "channels_last"),
    "audio": (),
}
RUNTIME_ONLY = ("workers", "queue_batches", "download")  # written under runtime.extract
MODALITIES = ("visual", "audio")


def check_model(name: str, spec: ModelSpec, key: str) -> None:
    """An ``extract.models`` entry: its name is a plain file name (``<name>.h5``), its encoder is
    registered, and pre/post-processing options fit the encoder."""
    if not name or safe_filename(name) != name:
        raise ConfigError(f"{key}: {name!r} is not a plain name (letters, digits, '_', '-', '.'); "
                          "it names the feature file <paths.features>/<name>.h5")
    modality = check_encoder(spec.encoder, f"{key}.encoder")
    if spec.preprocess != "weights" and modality != "visual":
        raise ConfigError(f"{key}.preprocess: {spec.preprocess!r} applies to visual encoders only; "
                          f"{spec.encoder!r} is an audio encoder")
    if spec.postprocess != "none" and spec.encoder != "vggish":
        raise ConfigError(f"{key}.postprocess: {spec.postprocess!r} applies to vggish only, not "
                          f"{spec.encoder!r}")


@dataclass(frozen=True)
class CommunityFile:
    """One feature file in the community ``avadataset`` layout to import (``published.files``)."""

    file: str  # file name inside data.root, e.g. visual_feature.h5
    encoder: str = ""  # extractor, recorded as provenance ("" = the AVE preset for AVE's file names)
    weights: str = ""  # its weights, recorded as provenance ("" = the preset / unknown)

    def validate(self, key: str = "") -> None:
        if not self.file.endswith(".h5") or "/" in self.file or self.file.startswith("."):
            raise ConfigError(f"{key}.file: a .h5 file name inside data.root, got {self.file!r}")


@register_section("published")
@dataclass(frozen=True)
class PublishedConfig:
    """Published / community feature files imported into the store (dvc.yaml stages
    import@<name>, one per entry of ``files``)."""

    # folder of visual_feature.h5, audio_feature.h5, ... (beside Annotations.txt): null = data.root,
    # which the import stages of dvc.yaml read; a value here must equal data.root
    root: Optional[str] = None
    # stored dtype: float32 (the published files are float64; float32 keeps 7 digits, 4.2 GB for
    # AVE's visual file) | float16 (opt-in: half the size, 3 digits)
    dtype: Literal["float16", "float32"] = "float32"
    # store name -> file in root; each also gets <name>_noisy.h5 (weak setting's background-only
    # videos) from <file>_noisy.h5 beside it, with zero rows when that file is absent
    files: dict[str, CommunityFile] = field(default_factory=dict)

    def validate(self, key: str = "published") -> None:
        for name in self.files:
            if not name or not all(c.isalnum() or c in "_-" for c in name):
                raise ConfigError(f"{key}.files.{name}: store names are letters, digits, _ and -")
            if name.endswith(BACKGROUND_SUFFIX):
                raise ConfigError(f"{key}.files.{name}: background-only files are imported with "
                                  f"their main file (stage import_background_only@{name[:-len(BACKGROUND_SUFFIX)]}"
                                  f" reads <file>{BACKGROUND_SUFFIX}.h5); remove this entry")


@register_check("published", "data")
def _check_published_root(params: dict[str, Any]) -> None:
    """The import stages of dvc.yaml track the published files in ``data.root``; ``published.root`` may
    only repeat it."""
    root = params["published"].root
    if root is not None and Path(root) != Path(params["data"].root):
        raise ConfigError(f"published.root: {root!r} differs from data.root "
                          f"{params['data'].root!r}; the published files are read from data.root "
                          "(leave published.root null)")


@register_check("train", "extract")
def _check_feature_kinds(params: dict[str, Any]) -> None:
    """``train.visual`` / ``train.audio``, when they are ``extract.models`` entries, are of
    that modality (a name not listed there may be an imported community feature file)."""
    models = params["extract"].models
    for role in ("visual", "audio"):
        name = getattr(params["train"], role)
        if name in models:
            check_encoder(models[name].encoder, f"train.{role} ({name!r}: extract.models.{name}"
                                                ".encoder)", role)
