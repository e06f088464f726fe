"""M2N: Wang et al., CVPR 2021, "Multi-Modulation Network for Audio-Visual Event Localization".

No public code; everything follows the paper (m2n.txt), choices it leaves open are marked
"(not stated)". Settings: ``fully`` (SEL) and ``cml``, the cross-modality localization setting, a
separately trained model as in the paper; no weak setting.

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
* CML (Sec. 3.5): :meth:`M2N.cross_modal_query` (the query modality's event segments averaged
  into one ``d``-vector that reads nothing of the searched sequence) repeated N times, its IMN
  omitted, relevance over the searched modality (:meth:`M2N.cross_modal_relevance`); in the
  ``cml`` setting ``forward_batch`` runs A2V and V2A with the event segments as query and the
  loss is Eq. 18 (BCE only; no classifier is built). Inference, metric and protocol (Sec. 4.1,
  Table 1): the ``cml`` setting, :mod:`pipeline.settings.cml`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.settings.cml import DIRECTIONS

from ._avga import AudioGuidedVisualAttention
from ._cmbs_blocks import localize, relevance_targets, video_event_class
from ._registry import (NO_RELEASED_CODE, RELEVANCE_RULE, Head, Reported, event_class_probabilities,
                        register_head)


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
    settings = ("fully", "cml")
    @dataclass(frozen=True)
    class Config:
        d_model: int = 256  # common dimension d (Sec. 4.2)
        heads: int = 4  # heads h of every multi-head attention (Sec. 4.2)
        att_hidden: int = 512  # AVGA projection width of [37] (AVEL code hidden_size=512)
        att_dim: int = 49  # AVGA scoring-MLP width of [37] (AVEL code 49)
        conv_kernel: int = 3  # MSPM Conv2d kernel over the proposal map (not stated)
        dropout: float = 0.1  # attention dropout (not stated)
    SELECTION = {"fully": NO_RELEASED_CODE, "cml": NO_RELEASED_CODE}  # no released code
    REPORTED = {"fully": Reported(79.5, "M2N Table 2"),
                "cml": Reported(52.4, "M2N Table 1 (cross-modality localization, average of A2V "
                                      "and V2A)", per_direction={"a2v": 51.2, "v2a": 53.6})}
    TRAIN_DEFAULTS = {
        # Sec. 4.2: Adam, lr 5e-4, batch 32, one recipe for both settings (SEL and CML). Epochs,
        # schedule, weight decay and clipping are not stated: 200 epochs as the sibling heads,
        # no decay, no clipping.
        setting: {"optimizer": "adam", "lr": 5e-4, "weight_decay": 0.0, "batch_size": 32,
                  "epochs": 200, "lr_step": 0, "lr_milestones": [], "lr_gamma": 1.0,
                  "clip_grad": 0.0}
        for setting in ("fully", "cml")
    }

    @classmethod
    def prediction_rule(cls, setting, hparams):
        if setting == "cml":
            return ("cross-modal localization (M2N): each query's predicted window is marked "
                    "'event', the rest 'background'; rows A2V then V2A")
        return RELEVANCE_RULE

    def __init__(self, cfg: Config, visual_dim: int, audio_dim: int, num_classes: int,
                 setting: str = "fully"):
        super().__init__(cfg, visual_dim, audio_dim, num_classes, setting)
        d, h, p = cfg.d_model, cfg.heads, cfg.dropout
        self.avga = AudioGuidedVisualAttention(visual_dim, audio_dim, cfg.att_hidden, cfg.att_dim)
        self.visual_in = nn.Linear(visual_dim, d)
        self.audio_in = nn.Linear(audio_dim, d)
        self.cmn_v, self.cmn_a = Modulation(d, h, p), Modulation(d, h, p)
        self.imn_v, self.imn_a = Modulation(d, h, p), Modulation(d, h, p)
        self.mspm = MSPM(d, h, cfg.conv_kernel, p)
        self.masm = MASM(d, h, p)
        # Eq. 15; CML has no category label ("no event category label is provided", Sec. 3.5)
        self.classifier = nn.Linear(d, num_classes) if setting == "fully" else None
        self.relevance = nn.Linear(d, 1)  # Eq. 16

    def _encode(self, visual: torch.Tensor,
                audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``f_v^I, f_a^I`` (Eq. 1-8)."""
        v, _ = self.avga(visual, audio)
        f_v, f_a = self.visual_in(v), self.audio_in(audio)
        f_v, f_a = self.cmn_v(f_v, f_a), self.cmn_a(f_a, f_v)
        return self.imn_v(f_v), self.imn_a(f_a)

    def _localize(self, f_v: torch.Tensor, f_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused ``f_av`` (B, N, d) (MSPM + MASM) and its relevance logits (B, N) (Eq. 16)."""
        f_av = self.mspm(f_v * f_a) + self.masm(f_v, f_a)
        return f_av, self.relevance(f_av).squeeze(-1)

    def forward(self, visual: torch.Tensor, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        """SEL (fully): relevance and class logits (Eq. 14-16)."""
        if self.classifier is None:
            raise RuntimeError("m2n in the cml setting localizes a query: call forward_batch or "
                               "cross_modal_relevance")
        f_av, relevance = self._localize(*self._encode(visual, audio))
        return {"fused": f_av, "relevance": relevance,
                "class_logits": self.classifier(f_av.max(1).values)}

    def forward_batch(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """cml: ``relevance`` (2B, T): rows ``:B`` A2V, ``B:`` V2A, each video's event segments
        (``labels`` != background) as the query (Sec. 3.5); fully: ``forward``."""
        if self.setting != "cml":
            return super().forward_batch(batch)
        events = relevance_targets(batch["labels"]).bool()
        return {"relevance": torch.cat([self.cross_modal_relevance(
            batch["visual"], batch["audio"], events, d) for d in DIRECTIONS])}

    def loss(self, out: dict[str, torch.Tensor], batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        labels = batch["labels"]
        if self.setting == "cml":
            # Eq. 18 per video and direction, averaged over the videos that have an event
            # segment (without one there is no query).
            target = relevance_targets(labels).repeat(len(DIRECTIONS), 1)
            per_video = F.binary_cross_entropy_with_logits(out["relevance"], target,
                                                           reduction="none").mean(1)
            has_query = target.amax(1)
            l_r = (per_video * has_query).sum() / has_query.sum().clamp_min(1)
            return l_r, {"relevance": l_r.item()}
        l_c = F.cross_entropy(out["class_logits"], video_event_class(labels))
        l_r = F.binary_cross_entropy_with_logits(out["relevance"], relevance_targets(labels))
        return l_c + l_r, {"class": l_c.item(), "relevance": l_r.item()}  # Eq. 17

    @torch.no_grad()
    def predict(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        return localize(out["relevance"], out["class_logits"])  # p_r >= 0.5 -> class, else bg

    def probabilities(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        return event_class_probabilities(out["relevance"], out["class_logits"])

    # ------------------------------------------------------------------------ cross-modal (CML)
    @staticmethod
    def _query_input(visual: torch.Tensor, audio: torch.Tensor, query_mask: torch.Tensor,
                     direction: str) -> torch.Tensor:
        """The query modality's input features averaged over its event segments: audio
        ``(B, Ca)`` (A2V) or visual ``(B, Cv)`` (V2A). The visual segments are pooled over
        space uniformly: the audio that guides AVGA is the searched sequence in V2A, and the
        query must not see it (not stated)."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be 'a2v' or 'v2a', got {direction!r}")
        x = audio if direction == "a2v" else visual.mean(dim=(2, 3))
        w = query_mask.to(x.dtype)
        w = w / w.sum(1, keepdim=True).clamp_min(1)
        return torch.einsum("bt,btc->bc", w, x)

    def cross_modal_query(self, visual: torch.Tensor, audio: torch.Tensor,
                          query_mask: torch.Tensor, direction: str) -> torch.Tensor:
        """The CML query ``(B, d)`` (Sec. 3.5): the query modality's event segments (under
        ``query_mask`` (B, T)) in the common space, averaged into one vector. It reads only
        the query modality ("a2v": audio, "v2a": visual), never the searched sequence."""
        q = self._query_input(visual, audio, query_mask, direction)
        return self.audio_in(q) if direction == "a2v" else self.visual_in(q)

    def cross_modal_relevance(self, visual: torch.Tensor, audio: torch.Tensor,
                              query_mask: torch.Tensor, direction: str) -> torch.Tensor:
        """The paper's CML forward: event-relevance logits ``(B, T)`` over the searched modality.

        ``direction`` "a2v": the audio query (:meth:`cross_modal_query`) is repeated over the T
        positions and the visual sequence is searched (its AVGA guided by the averaged query
        audio); "v2a" the converse (the audio sequence is searched). Then CMN for both, IMN
        for the searched modality only (Sec. 3.5), MSPM + MASM and Eq. 16. Train with BCE on
        these logits (Eq. 18).
        """
        t = query_mask.shape[1]
        q = self.cross_modal_query(visual, audio, query_mask, direction).unsqueeze(1)
        q = q.expand(-1, t, -1)
        if direction == "a2v":
            guide = self._query_input(visual, audio, query_mask, direction)
            f_v = self.visual_in(self.avga(visual, guide.unsqueeze(1).expand(-1, t, -1))[0])
            f_v, f_a = self.cmn_v(f_v, q), self.cmn_a(q, f_v)
            f_v = self.imn_v(f_v)
        else:
            f_a = self.audio_in(audio)
            f_v, f_a = self.cmn_v(q, f_a), self.cmn_a(f_a, q)
            f_a = self.imn_a(f_a)
        return self._localize(f_v, f_a)[1]
