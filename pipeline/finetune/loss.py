"""Symmetric InfoNCE over the global batch, its cross-rank gather, and the retrieval metric."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.nn.functional import all_gather


def gather_global(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (B_local, D) of every rank in rank order -> (B_global, D), with gradients.

    ``torch.distributed.nn.functional.all_gather`` sums the incoming gradients over ranks in its
    backward; every rank computes the same global loss, so a rank's local embeddings get
    ``world_size * dL/dx`` and DDP's gradient *averaging* gives exactly the single-process
    gradient of the loss on the global batch (tests/test_finetune.py checks this).
    Identity when not distributed.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return torch.cat(all_gather(x), dim=0)


def symmetric_infonce(visual: torch.Tensor, audio: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE (paper Eq. 9, both directions averaged).

    ``visual``, ``audio``: (B, D) embeddings of the same B videos, row i of each is video i
    (the positive pair); the other B-1 rows are the negatives. Eq. 9 writes only the
    visual->audio direction with a raw dot product; the released code averages both directions
    and L2-normalises the embeddings first (done by the caller, see model.AVContrastive), as here.
    """
    logits = visual.float() @ audio.float().t() / temperature  # (B, B): [i, j] = f_i^I . f_j^A / tau
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def group_bounds(n: int, group: int) -> list[int]:
    """Boundaries of consecutive groups of ``group`` rows out of ``n`` (0 = one group of all);
    a tail shorter than ``group`` joins the previous group, so every group has >= ``group`` rows."""
    if n <= 0:
        raise ValueError("no rows to group")
    size = n if group <= 0 or group >= n else group
    starts = list(range(0, n, size))
    if len(starts) > 1 and n - starts[-1] < size:
        starts.pop()
    return starts + [n]


@torch.no_grad()
def retrieval_top1(audio: torch.Tensor, visual: torch.Tensor, group: int = 0) -> float:
    """In-batch audio->visual retrieval top-1: share of audio rows whose most similar visual row
    (dot product) is their own video, each group of :func:`group_bounds` being one candidate set."""
    bounds = group_bounds(audio.shape[0], group)
    hits = 0
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        sim = audio[lo:hi].float() @ visual[lo:hi].float().t()
        hits += int((sim.argmax(dim=1) == torch.arange(hi - lo, device=sim.device)).sum())
    return hits / audio.shape[0]


@torch.no_grad()
def grouped_infonce(visual: torch.Tensor, audio: torch.Tensor, temperature: float, group: int = 0) -> float:
    """Mean symmetric InfoNCE over the same groups as :func:`retrieval_top1` (evaluation)."""
    bounds = group_bounds(visual.shape[0], group)
    losses = [float(symmetric_infonce(visual[lo:hi], audio[lo:hi], temperature))
              for lo, hi in zip(bounds[:-1], bounds[1:])]
    return sum(losses) / len(losses)
