"""Video-level audio-visual embeddings for contrastive fine-tuning (paper Sec. 3.4).

The encoders are applied exactly as the extraction engine applies them (one frame -> a spatial
map, one 1-s audio segment -> an embedding), so what is tuned here is what is re-extracted.
"All the extracted features obtained from one video" are average-pooled (space, frames and
segments for vision; segments for audio) and each modality goes through its own projection
head (the paper does not describe one; see ProjectionHead), then L2-normalised.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F


class AVEncoders(nn.Module):
    """Two encoders with the pipeline.encoders interface (``prepare(raw)`` then ``forward``):
    ``visual``: (N, H, W, 3) uint8 -> (N, C, h, w) maps; ``audio``: (N, L) 1-s waveforms ->
    (N, D) embeddings. ``forward(frames, audio)``: frames uint8 (B, S, F, H, W, 3), audio float
    (B, S, L) for S segments of F frames -> clip-averaged features (B, C), (B, D) float32.
    This is the part DDP wraps (it holds every trainable encoder parameter)."""

    def __init__(self, visual: nn.Module, audio: nn.Module):
        super().__init__()
        self.visual = visual
        self.audio = audio

    def forward(self, frames: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = frames.shape[0]
        maps = self.visual(self.visual.prepare(frames.flatten(0, 2)))  # (B*S*F, C, h, w)
        v = maps.float().mean(dim=(2, 3)).view(b, -1, maps.shape[1]).mean(dim=1)
        emb = self.audio(self.audio.prepare(audio.flatten(0, 1)))  # (B*S, D)
        a = emb.float().view(b, -1, emb.shape[-1]).mean(dim=1)
        return v, a


class ProjectionHead(nn.Module):
    """Clip feature -> unit-norm embedding. ``norm: none`` is the released head
    (``Linear(bias=False)``); ``norm: batch`` standardises each feature over the (global)
    batch first (BatchNorm1d without affine; for evaluation, the exact mean of the batch
    statistics of the last epoch: ``reset_stats`` at each epoch start, cumulative average):
    post-ReLU CNN features share a large common component (all clips look alike to cosine
    similarity, worst with random init), which a bias-free linear map is slow to remove."""

    def __init__(self, dim: int, proj_dim: int, norm: str = "none"):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, momentum=None) if norm == "batch" else nn.Identity()
        self.linear = nn.Linear(dim, proj_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(self.norm(x.float())), dim=-1)

    def reset_stats(self) -> None:
        """Forget the running statistics (an EMA over a few steps is far from the mean while
        the encoders move; the per-epoch cumulative average is exact for the epoch)."""
        if isinstance(self.norm, nn.BatchNorm1d):
            self.norm.reset_running_stats()


class AVContrastive(nn.Module):
    """Encoders + one projection head per modality. The heads run on the *gathered* global
    batch (see train.train_step), so batch statistics and gradients of the heads are those of
    the global batch whatever the number of ranks or micro-batches."""

    def __init__(self, visual: nn.Module, audio: nn.Module, visual_dim: int, audio_dim: int,
                 proj_dim: int, proj_norm: str = "none"):
        super().__init__()
        self.encoders = AVEncoders(visual, audio)
        self.head_visual = ProjectionHead(visual_dim, proj_dim, proj_norm)
        self.head_audio = ProjectionHead(audio_dim, proj_dim, proj_norm)

    @property
    def visual(self) -> nn.Module:
        return self.encoders.visual

    @property
    def audio(self) -> nn.Module:
        return self.encoders.audio

    def forward(self, frames: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v, a = self.encoders(frames, audio)
        return self.head_visual(v), self.head_audio(a)


def _under(name: str, prefix: str) -> bool:
    """``name`` lies under module path ``prefix``, anywhere in the dotted path
    (``layer4`` matches ``net.body.layer4.0.conv1.weight``)."""
    return f".{prefix}." in f".{name}."


def set_trainable(module: nn.Module, prefixes: Iterable[str], what: str) -> int:
    """Freeze ``module`` except parameters under the given module paths (``["all"]``:
    everything trains, ``[]``: nothing). Returns the number of trainable parameters; a path
    matching nothing raises, listing the candidate module names."""
    prefixes = list(prefixes)
    names = [n for n, _ in module.named_parameters()]
    for p in prefixes:
        if p != "all" and not any(_under(n, p) for n in names):
            blocks = sorted({n.rsplit(".", 2)[0] for n in names})
            raise ValueError(f"{what}: no parameters under {p!r}; modules include: {', '.join(blocks[-12:])}")
    count = 0
    for n, param in module.named_parameters():
        train = "all" in prefixes or any(_under(n, p) for p in prefixes)
        param.requires_grad_(train)
        count += param.numel() if train else 0
    return count


def set_bn_mode(model: nn.Module, bn: str) -> None:
    """After ``model.train()``: BatchNorm of frozen modules stays in eval mode (a frozen layer
    computes what the original weights compute); ``bn == "frozen"``: every BatchNorm in eval."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            trainable = any(p.requires_grad for p in m.parameters(recurse=False))
            if bn == "frozen" or not trainable:
                m.eval()


class bn_stats_frozen:
    """Context: BatchNorm running statistics are not updated (momentum 0) inside it. Used for
    the no-grad pass of gradient caching, whose forward is recomputed with gradients after."""

    def __init__(self, model: nn.Module):
        self.bns = [m for m in model.modules()
                    if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]

    def __enter__(self):
        self.saved = [(m.momentum, m.num_batches_tracked.clone()) for m in self.bns]
        for m in self.bns:
            m.momentum = 0.0
        return self

    def __exit__(self, *exc):
        for m, (momentum, tracked) in zip(self.bns, self.saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)
        return False


def freeze_unused(model: AVContrastive, frames_shape: tuple[int, ...], audio_len: int) -> list[str]:
    """Freeze trainable parameters that get no gradient (e.g. Cnn14's AudioSet classifier,
    unused by the embedding): DDP requires every trainable parameter to take part. Found with
    one backward on 2 random clips of ``frames_shape`` (S, F, H, W, 3), BN statistics untouched."""
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (2, *frames_shape), generator=g, dtype=torch.uint8)
    audio = 0.1 * torch.randn(2, frames_shape[0], audio_len, generator=g)
    was = model.training
    model.train()
    with bn_stats_frozen(model):
        v, a = model(frames, audio)
        (v.sum() + a.sum()).backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    for n, p in model.named_parameters():
        p.grad = None
        if n in unused:
            p.requires_grad_(False)
    model.train(was)
    return unused
