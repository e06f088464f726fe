"""``finetune:`` section of params.yaml: CACE contrastive encoder fine-tuning (paper Sec. 3.4).

Values below are the full-scale defaults; params.yaml holds the demo profile. The paper gives
the method (ResNet-50 + Cnn14, clip-averaged features, InfoNCE Eq. 9) but none of the
fine-tuning hyperparameters; where a default comes from the authors' released script
(AVELCLIP/main.py, clip/model.py) the comment says "released".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.config import ConfigError, register_check, register_section
from pipeline.layout import SPLITS
from pipeline.encoders.base import check_encoder
from pipeline.encoders.spec import check_weights


@register_section("finetune")
@dataclass(frozen=True)
class FinetuneConfig:
    # --- encoders (built by pipeline.encoders; weights through its one resolver) ---
    visual: str = "resnet50"  # visual encoder name (paper: ResNet-50; released: vgg19_bn)
    audio: str = "cnn14"  # audio encoder name (paper: Cnn14; released: fixed VGGish features)
    visual_weights: str = "pretrained"  # pretrained | random | <path to a state_dict>
    audio_weights: str = "pretrained"  # pretrained | random | <path>
    download: bool = False  # a pretrained file missing from the caches: download (true) or error
    visual_trainable: list[str] = field(default_factory=lambda: ["all"])  # module paths that train; [all] | [] | [layer4]
    audio_trainable: list[str] = field(default_factory=lambda: ["all"])  # same; [] = the released setting (fixed)
    bn: Literal["frozen", "train"] = "frozen"  # frozen: every encoder BN in eval mode (exact DDP/micro-batch
    #   gradients; train and extraction compute the same function); train: trainable blocks' BN uses batch stats
    # --- clips (decoded by pipeline.media, as extraction decodes them) ---
    image_size: int = 224  # frames resized to image_size x image_size (paper/released: 224)
    frames_per_segment: int = 1  # frames decoded per 1-s segment (released: 1)
    sampling: Literal["timestamp", "ave_reference"] = "timestamp"  # frame sampling rule (pipeline.media)
    segments_per_clip: int = 10  # evenly spaced 1-s segments (frames + audio) pooled per clip; 10 = all
    train_splits: list[str] = field(default_factory=lambda: ["train"])  # released: train + val; we hold val out
    eval_split: str = "val"  # held-out split for the retrieval metric
    # --- contrastive objective (Eq. 9, symmetric) ---
    proj_dim: int = 128  # projection head output (released: Linear(bias=False) -> 128, L2-normalised)
    proj_norm: Literal["batch", "none"] = "batch"  # standardise clip features over the global batch (released: none)
    temperature: float = 0.2  # tau in Eq. 9 (released default 0.2; fixed, not learned)
    # --- optimisation ---
    batch_size: int = 256  # GLOBAL batch (videos, all ranks); negatives = the rest of it (released: 256)
    micro_batch: int = 0  # videos per encoder pass per rank; 0 = local batch; less = exact gradient caching
    epochs: int = 50  # released: 50
    optimizer: Literal["adamw", "sgd"] = "sgd"  # released: SGD, momentum 0.9
    lr_encoder: float = 1e-4  # learning rate of the trainable encoder layers
    lr_head: float = 1e-3  # learning rate of the projection heads (released: 1e-3 for everything)
    momentum: float = 0.9  # SGD momentum (ignored by adamw)
    weight_decay: float = 1e-4  # released: 1e-4
    lr_milestones: list[int] = field(default_factory=lambda: [15, 30])  # epochs where lr *= lr_gamma (released)
    lr_gamma: float = 0.1
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    amp: Literal["none", "bf16", "fp16"] = "none"  # autocast dtype (fp16 adds a GradScaler)
    # --- run ---
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when present (printed); cuda: NCCL, cpu: gloo
    nproc: int = 1  # processes per node (dvc.yaml launches torchrun with this many)
    workers: int = 2  # decode worker processes (pipeline.media.DecodePool)
    decode_timeout_s: float = 120.0  # per-video decode timeout
    clip_cache_mb: int = 1024  # decoded clips kept in memory (per rank) up to this size, so later
    #   epochs decode only the rest; 0 = decode every clip every epoch. Memory stays bounded.
    eval_batch: int = 0  # retrieval candidates per group of eval_split; 0 = the whole split
    seed: int = 0
    resume: bool = True  # continue from the last epoch checkpoint when its config matches

    def validate(self, key: str = "finetune") -> None:
        positive = ("image_size", "frames_per_segment", "segments_per_clip", "proj_dim",
                    "batch_size", "epochs", "nproc")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{key}.{name}: must be >= 1, got {getattr(self, name)}")
        if self.segments_per_clip > 10:
            raise ConfigError(f"{key}.segments_per_clip: AVE clips have 10 segments, "
                              f"got {self.segments_per_clip}")
        if self.temperature <= 0:
            raise ConfigError(f"{key}.temperature: must be > 0, got {self.temperature}")
        if self.batch_size % self.nproc:
            raise ConfigError(f"{key}.batch_size: {self.batch_size} is not divisible by nproc={self.nproc}")
        if self.micro_batch < 0 or self.eval_batch < 0 or self.workers < 0 or self.clip_cache_mb < 0:
            raise ConfigError(f"{key}: micro_batch, eval_batch, workers and clip_cache_mb must be >= 0")
        for name in ("visual_trainable", "audio_trainable"):
            prefixes = getattr(self, name)
            if "all" in prefixes and len(prefixes) > 1:
                raise ConfigError(f"{key}.{name}: 'all' cannot be combined with other prefixes: {prefixes}")
        self._validate_sources(key)
        self._validate_optimisation(key)

    def _validate_sources(self, key: str) -> None:
        """Encoders, weights and splits name things that exist."""
        for role in ("visual", "audio"):
            check_encoder(getattr(self, role), f"{key}.{role}", role)
            check_weights(getattr(self, f"{role}_weights"), f"{key}.{role}_weights")
        for i, split in enumerate(self.train_splits):
            if split not in SPLITS:
                raise ConfigError(f"{key}.train_splits[{i}]: unknown split {split!r}; allowed: "
                                  f"{', '.join(SPLITS)}")
        if not self.train_splits:
            raise ConfigError(f"{key}.train_splits: empty; e.g. [train]")
        if self.eval_split not in SPLITS:
            raise ConfigError(f"{key}.eval_split: unknown split {self.eval_split!r}; allowed: "
                              f"{', '.join(SPLITS)}")
        if self.eval_split in self.train_splits:
            raise ConfigError(f"{key}.eval_split: {self.eval_split!r} is also in train_splits; the "
                              "retrieval metric needs held-out videos")

    def _validate_optimisation(self, key: str) -> None:
        for name in ("lr_encoder", "lr_head", "lr_gamma", "decode_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{key}.{name}: must be > 0, got {getattr(self, name)!r}")
        for name in ("weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{key}.{name}: must be >= 0, got {getattr(self, name)!r}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"{key}.momentum: must be in [0, 1), got {self.momentum!r}")
        ms = self.lr_milestones
        if any(m < 1 for m in ms) or any(b <= a for a, b in zip(ms, ms[1:])):
            raise ConfigError(f"{key}.lr_milestones: strictly increasing epochs >= 1, got {ms!r}")
        if self.micro_batch > self.batch_size // self.nproc:
            raise ConfigError(f"{key}.micro_batch: {self.micro_batch} exceeds the per-rank batch "
                              f"{self.batch_size // self.nproc} (batch_size / nproc)")


@register_check("finetune", "extract")
def _check_matches_extraction(params: dict) -> None:
    """The tuned encoders are re-extracted with ``extract``'s frames: same size and sampling."""
    ft, ex = params["finetune"], params["extract"]
    if ex.image_size is not None and ft.image_size != ex.image_size:
        raise ConfigError(f"finetune.image_size: {ft.image_size} differs from extract.visual.image_size "
                          f"{ex.image_size}; the tuned encoder would be extracted at another size")
    if ft.sampling != ex.sampling:
        raise ConfigError(f"finetune.sampling: {ft.sampling!r} differs from extract.visual.sampling "
                          f"{ex.sampling!r}")
