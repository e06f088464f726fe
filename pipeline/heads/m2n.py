"""M2N: Wang et al., CVPR 2021, "Multi-Modulation Network for Audio-Visual Event Localization".

No public code; everything follows the paper (m2n.txt), choices it leaves open are marked
"(not stated)". Fully supervised (SEL) only, plus the cross-modality localization task (CML).

* audio-guided visual attention of [37] (AVEL, shared :mod:`._avga`), then one linear layer per
  modality into a common ``d`` (Sec. 3.2);
* cross-modal normalization (CMN, Eq. 1-7) and intra-modal normalization (IMN, Eq. 8): multi-head
  attention (cross / self), ``gamma, beta = tanh(Linear(.))``, ``gamma * LN(f) + beta`` with a
  parameter-free normalization over channels;
* MSPM (Sec. 3.3): ``f = f_v^I * f_a^I``, IMN, proposal map of segment means (Eq. 9), Conv2d +
  residual, segment-segment relation softmax pooling (Eq. 10-11), multi-head self-attention;
* MASM (Sec. 3.4): dense map ``f_v^I[i] * f_a^I[j]`` (Eq. 12), IMN over the ``N*N`` sequence,
  diagonal (Eq. 13); ``f_av = f_ms + f_ma``;
* SEL (Sec. 3.5): class ``Linear(maxpool f_av)`` over C classes (Eq. 14-15), relevance
  ``sigmoid(Linear(f_av))`` (Eq. 16), loss Eq. 17; a segment is an event iff ``p_r >= 0.5``.
* CML: :meth:`M2N.cross_modal_relevance` (the paper's query-averaged relevance prediction) and
  :meth:`M2N.cross_modal_embed`; the protocol and metric are the pure functions
  :func:`window_localization_accuracy` and :func:`cross_modal_localization_accuracy`.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ._avga import AudioGuidedVisualAttention
from ._cmbs_blocks import localize, relevance_targets, video_event_class
from ._registry import Head, register_head


class Modulation(nn.Module):
    """CMN / IMN (Eq. 1-8): ``gamma(m) * (f - mu) / sigma + beta(m)``, ``m = MHAttn(f, ctx, ctx)``.

    ``ctx`` is the other modality for CMN and ``f`` itself for IMN; ``mu, sigma`` are taken over
    the channel dimension (a LayerNorm without affine parameters).
    """

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.to_gamma = nn.Linear(d, d)  # Eq. 5
        self.to_beta = nn.Linear(d, d)  # Eq. 6

    def forward(self, f: torch.Tensor, ctx: torch.Tensor | None = None) -> torch.Tensor:
        ctx = f if ctx is None else ctx
        m = self.attn(f, ctx, ctx, need_weights=False)[0]
        normed = F.layer_norm(f, f.shape[-1:])
        return torch.tanh(self.to_gamma(m)) * normed + torch.tanh(self.to_beta(m))  # Eq. 7


def proposal_map(f: torch.Tensor) -> torch.Tensor:
    """Eq. 9: ``F[i, j] = mean(f[min(i,j) .. max(i,j)])``: ``(B, N, d) -> (B, N, N, d)``.

    The paper defines ``i <= j`` only; the lower triangle mirrors the upper one (not stated), so
    row ``i`` holds every proposal having segment ``i`` as a boundary.
    """
    n = f.shape[1]
    csum = torch.cat([torch.zeros_like(f[:, :1]), f.cumsum(1)], dim=1)  # (B, N+1, d)
    idx = torch.arange(n, device=f.device)
    lo, hi = torch.minimum(idx[:, None], idx[None]), torch.maximum(idx[:, None], idx[None])
    sums = csum[:, hi + 1] - csum[:, lo]  # (B, N, N, d)
    return sums / (hi - lo + 1).unsqueeze(-1).to(f.dtype)


class MSPM(nn.Module):
    """Multi-scale proposal modulating module (Sec. 3.3): ``(B, N, d) -> (B, N, d)``."""

    def __init__(self, d: int, heads: int, kernel: int, dropout: float):
        super().__init__()
        self.norm = Modulation(d, heads, dropout)  # IMN on the fused sequence
        self.conv = nn.Conv2d(d, d, kernel, padding=kernel // 2)  # relations of adjacent proposals
        self.w_ms = nn.Linear(d, d, bias=False)  # W_ms, Eq. 10
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        f_ms = self.norm(f)
        props = proposal_map(f_ms)  # (B, N, N, d)
        props = self.conv(props.permute(0, 3, 1, 2)).permute(0, 2, 3, 1) + props  # F'_ms
        proj = self.w_ms(f_ms)
        rel = torch.softmax(proj @ proj.transpose(1, 2), dim=-1)  # Eq. 10, softmax over j
        f_ms = (rel.unsqueeze(-1) * props).sum(2) + f_ms  # Eq. 11
        return self.attn(f_ms, f_ms, f_ms, need_weights=False)[0]


class MASM(nn.Module):
    """Multi-alignment segment modulating module (Sec. 3.4): ``(B,N,d) x2 -> (B, N, d)``."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.norm = Modulation(d, heads, dropout)

    def forward(self, f_v: torch.Tensor, f_a: torch.Tensor) -> torch.Tensor:
        b, n, d = f_v.shape
        dense = (f_v.unsqueeze(2) * f_a.unsqueeze(1)).reshape(b, n * n, d)  # Eq. 12
        dense = self.norm(dense).reshape(b, n, n, d)
        return dense.diagonal(dim1=1, dim2=2).transpose(1, 2)  # Eq. 13


@register_head("m2n")
class M2N(Head):
    settings = ("fully",)
    supports_cross_modal = True
    DEFAULTS = {
        "d_model": 256,  # common dimension d (Sec. 4.2)
        "heads": 4,  # heads h of every multi-head attention (Sec. 4.2)
        "att_hidden": 512,  # AVGA projection width of [37] (AVEL code hidden_size=512)
        "att_dim": 49,  # AVGA scoring-MLP width of [37] (AVEL code 49)
        "conv_kernel": 3,  # MSPM Conv2d kernel over the proposal map (not stated)
        "dropout": 0.1,  # attention dropout (not stated)
    }
    TRAIN_DEFAULTS = {
        # Sec. 4.2: Adam, lr 5e-4, batch 32. Epochs, schedule, weight decay and clipping are not
        # stated: 200 epochs as the sibling heads, no decay, no clipping.
        "fully": {"optimizer": "adam", "lr": 5e-4, "weight_decay": 0.0, "batch_size": 32,
                  "epochs": 200, "lr_step": 0, "lr_milestones": [], "lr_gamma": 1.0,
                  "clip_grad": 0.0},
    }

    def __init__(self, visual_dim: int, audio_dim: int, num_classes: int, setting: str = "fully",
                 **hp: Any):
        super().__init__(visual_dim, audio_dim, num_classes, setting)
        d, h, p = hp["d_model"], hp["heads"], hp["dropout"]
        self.avga = AudioGuidedVisualAttention(visual_dim, audio_dim, hp["att_hidden"], hp["att_dim"])
        self.visual_in = nn.Linear(visual_dim, d)
        self.audio_in = nn.Linear(audio_dim, d)
        self.cmn_v, self.cmn_a = Modulation(d, h, p), Modulation(d, h, p)
        self.imn_v, self.imn_a = Modulation(d, h, p), Modulation(d, h, p)
        self.mspm = MSPM(d, h, hp["conv_kernel"], p)
        self.masm = MASM(d, h, p)
        self.classifier = nn.Linear(d, num_classes)  # Eq. 15
        self.relevance = nn.Linear(d, 1)  # Eq. 16

    def _encode(self, visual: torch.Tensor, audio: torch.Tensor,
                query: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``f_v^I, f_a^I`` (Eq. 1-8); ``query`` in {"v", "a"} skips that modality's IMN (CML)."""
        v, _ = self.avga(visual, audio)
        f_v, f_a = self.visual_in(v), self.audio_in(audio)
        f_v, f_a = self.cmn_v(f_v, f_a), self.cmn_a(f_a, f_v)
        f_v = f_v if query == "v" else self.imn_v(f_v)
        f_a = f_a if query == "a" else self.imn_a(f_a)
        return f_v, f_a

    def _localize(self, f_v: torch.Tensor, f_a: torch.Tensor) -> dict[str, torch.Tensor]:
        f_av = self.mspm(f_v * f_a) + self.masm(f_v, f_a)
        return {"fused": f_av, "relevance": self.relevance(f_av).squeeze(-1),
                "class_logits": self.classifier(f_av.max(1).values)}  # Eq. 14-16 (logits)

    def forward(self, visual: torch.Tensor, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._localize(*self._encode(visual, audio))

    def loss(self, out: dict[str, torch.Tensor], batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        labels = batch["labels"]
        l_c = F.cross_entropy(out["class_logits"], video_event_class(labels))
        l_r = F.binary_cross_entropy_with_logits(out["relevance"], relevance_targets(labels))
        return l_c + l_r, {"class": l_c.item(), "relevance": l_r.item()}  # Eq. 17

    @torch.no_grad()
    def predict(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        return localize(out["relevance"], out["class_logits"])  # p_r >= 0.5 -> class, else bg

    # ------------------------------------------------------------------------ cross-modal (CML)
    def cross_modal_embed(self, visual: torch.Tensor,
                          audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-segment modulated features ``(f_v^I, f_a^I)``, each ``(B, T, d)``."""
        return self._encode(visual, audio)

    def cross_modal_relevance(self, visual: torch.Tensor, audio: torch.Tensor,
                              query_mask: torch.Tensor, direction: str) -> torch.Tensor:
        """The paper's CML forward: event-relevance logits ``(B, T)`` over the searched modality.

        ``direction`` "a2v": the audio segments under ``query_mask`` (B, T) are averaged and
        repeated over the T positions, the visual sequence is searched; "v2a" the converse. The
        query modality skips its IMN (Sec. 3.5). Train with BCE on these logits (Eq. 18).
        """
        if direction not in ("a2v", "v2a"):
            raise ValueError(f"direction must be 'a2v' or 'v2a', got {direction!r}")
        w = query_mask.to(audio.dtype)
        w = w / w.sum(1, keepdim=True).clamp_min(1)
        if direction == "a2v":
            audio = torch.einsum("bt,btc->bc", w, audio).unsqueeze(1).expand_as(audio)
        else:
            visual = torch.einsum("bt,bthwc->bhwc", w, visual).unsqueeze(1).expand_as(visual)
        f_v, f_a = self._encode(visual, audio, query="a" if direction == "a2v" else "v")
        return self._localize(f_v, f_a)["relevance"]


# ----------------------------------------------------------------------- CML protocol / metric
def best_window(scores: torch.Tensor, length: int) -> int:
    """Start of the ``length``-long window with the maximum contiguous sum of ``scores`` (T,)."""
    return int(scores.unfold(0, length, 1).sum(-1).argmax())


def window_localization_accuracy(relevance: torch.Tensor, event_mask: torch.Tensor) -> float:
    """CML metric (Sec. 3.5, 4.1): the fraction of videos whose predicted window equals the truth.

    ``relevance`` (B, T): scores of the searched modality's segments (higher = more likely the
    query's synchronized part); ``event_mask`` (B, T) bool: ground-truth event segments, whose
    count ``l`` is the query length. The prediction is the ``l``-window with the maximum
    contiguous sum; it is correct only if it matches the ground truth exactly. Videos whose event
    is not one contiguous run of 1..T segments cannot be matched by a window and are skipped.
    """
    correct = total = 0
    for scores, mask in zip(relevance.float(), event_mask.bool()):
        idx = mask.nonzero().flatten()
        if len(idx) == 0 or int(idx[-1] - idx[0]) + 1 != len(idx):
            continue
        total += 1
        correct += best_window(scores, len(idx)) == int(idx[0])
    if total == 0:
        raise ValueError("no video with one contiguous ground-truth event to evaluate")
    return correct / total


def cross_modal_localization_accuracy(visual: torch.Tensor, audio: torch.Tensor,
                                      event_mask: torch.Tensor, direction: str) -> float:
    """A2V / V2A accuracy from per-segment embeddings (``cross_modal_embed`` output).

    ``visual``, ``audio`` (B, T, D); ``event_mask`` (B, T) bool. "a2v": the query is the mean of
    the audio embeddings over the event segments, each visual segment is scored by minus its
    Euclidean distance to the query (the embedding protocol of [37]); "v2a" swaps the roles. The
    window rule and exact-match metric are :func:`window_localization_accuracy`.
    """
    if direction not in ("a2v", "v2a"):
        raise ValueError(f"direction must be 'a2v' or 'v2a', got {direction!r}")
    query, target = (audio, visual) if direction == "a2v" else (visual, audio)
    w = event_mask.to(query.dtype)
    q = (w.unsqueeze(-1) * query).sum(1) / w.sum(1, keepdim=True).clamp_min(1)  # (B, D)
    relevance = -(target - q.unsqueeze(1)).norm(dim=-1)
    return window_localization_accuracy(relevance, event_mask)
