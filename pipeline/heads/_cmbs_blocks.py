"""Building blocks of CMBS (Xia & Zhao, CVPR 2022), shared by the ``cmbs`` and ``cace`` heads.

Paper equations are implemented as written; where the paper is unclear the blocks follow the
authors' public code (marmot-xy/CMBS ``model/models.py``, ``model/main_model.py``), which is
said in a comment at each such place. Only layers the authors' forward pass uses are built.

Sequence tensors are batch-first ``(B, T, D)`` throughout.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


# --------------------------------------------------------------------------- CMGA (Sec. 3.3)
class SpatialSelfAttention(nn.Module):
    """Non-local self-attention over the ``H*W`` positions of a map: ``(N, P, D) -> (N, P, D)``.

    The "global visual signal" of CMGA. The paper only cites non-local blocks [33]; layer shapes
    follow the authors' code (``video_query``/``video_key`` to ``D/4``, ``video_value``, residual +
    LayerNorm, no 1/sqrt(d) scaling).
    """

    def __init__(self, dim: int, latent: int = 4, dropout: float = 0.2):
        super().__init__()
        self.query = nn.Linear(dim, dim // latent)
        self.key = nn.Linear(dim, dim // latent)
        self.value = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = torch.softmax(self.query(x) @ self.key(x).transpose(1, 2), dim=-1)  # (N, P, P)
        return self.norm(x + self.dropout(attn @ self.value(x)))


class GlobalSpatialAttention(nn.Module):
    """Spatial attention of a map guided by its own spatial average: ``(N, P, D) -> (N, D)``.

    Eq. 1 with the global visual vector in place of audio (``A^s_gt``); the authors' code scores
    with tanh instead of the paper's ReLU before the softmax, which we follow.
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.affine_avg = nn.Linear(dim, hidden)
        self.affine_pos = nn.Linear(dim, hidden)
        self.score = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = F.relu(self.affine_avg(x.mean(1))).unsqueeze(1)  # (N, 1, hidden)
        query = F.relu(self.affine_pos(x)) * avg  # (N, P, hidden)
        att = torch.softmax(torch.tanh(self.score(query)).squeeze(-1), dim=-1)  # (N, P)
        return torch.bmm(att.unsqueeze(1), x).squeeze(1)


class AudioChannelSpatialAttention(nn.Module):
    """Audio-guided channel then spatial attention (CMRAN's AGSCA, Eq. 1 ``A^s_at``).

    ``(x_att (N,P,D), x_raw (N,P,D), audio (N,A)) -> (N, D)``: the channel weights are computed
    from the self-attended map ``x_att`` and applied to the raw map as ``x * (1 + w)`` (authors'
    code), then an audio-guided spatial softmax pools the channel-attended map.
    """

    def __init__(self, dim: int, audio_dim: int, hidden: int):
        super().__init__()
        self.video_c = nn.Linear(dim, dim)
        self.audio_c = nn.Linear(audio_dim, dim)
        self.bottleneck = nn.Linear(dim, hidden)
        self.channel = nn.Linear(hidden, dim)
        self.video_s = nn.Linear(dim, hidden)
        self.audio_s = nn.Linear(audio_dim, hidden)
        self.spatial = nn.Linear(hidden, 1)

    def forward(self, x_att: torch.Tensor, x_raw: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        joint = (F.relu(self.audio_c(audio)).unsqueeze(1) * F.relu(self.video_c(x_att))).mean(1)
        weights = torch.sigmoid(self.channel(F.relu(self.bottleneck(joint))))  # (N, D)
        x_c = x_raw * (weights.unsqueeze(1) + 1)
        query = F.relu(self.video_s(x_c)) * F.relu(self.audio_s(audio)).unsqueeze(1)
        att = torch.softmax(torch.tanh(self.spatial(query)).squeeze(-1), dim=-1)  # (N, P)
        return torch.bmm(att.unsqueeze(1), x_c).squeeze(1)


class CMGA(nn.Module):
    """Cross-modal gated attention: ``(visual (B,T,H,W,D), audio (B,T,A)) -> (B, T, D)``.

    Eq. 2 as the authors implemented it ("slightly different from what we described in the
    paper", ``New_Audio_Guided_Attention``): ``v = v_a + beta * sigmoid(v_g) * v_a`` with ``v_a``
    the audio-guided channel-spatial vector and ``v_g`` the global-visual spatial vector; the
    paper's two-branch form with beta_1, beta_2 is not what produced its numbers.
    """

    def __init__(self, dim: int, audio_dim: int, hidden: int, beta: float, dropout: float = 0.2):
        super().__init__()
        self.beta = beta
        self.self_att = SpatialSelfAttention(dim, dropout=dropout)
        self.global_att = GlobalSpatialAttention(dim, hidden)
        self.audio_att = AudioChannelSpatialAttention(dim, audio_dim, hidden)

    def forward(self, visual: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        b, t, h, w, d = visual.shape
        x = visual.reshape(b * t, h * w, d)
        a = audio.reshape(b * t, -1)
        x_att = self.self_att(x)
        v_g = self.global_att(x_att)
        v_a = self.audio_att(x_att, x, a)
        return (v_a + self.beta * torch.sigmoid(v_g) * v_a).reshape(b, t, d)


# ------------------------------------------------------------- temporal modules (Sec. 3.4-3.6)
class TemporalSelfAttention(nn.Module):
    """Self-attention over segments (CMRAN encoder): affine to ``d_model`` + post-norm layers."""

    def __init__(self, input_dim: int, d_model: int, heads: int, ff_dim: int, layers: int = 2,
                 dropout: float = 0.1):
        super().__init__()
        self.affine = nn.Linear(input_dim, d_model)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model, heads, ff_dim, dropout, batch_first=True)
            for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.affine(x)
        for layer in self.layers:
            x = layer(x)
        return x


class CrossModalAttention(nn.Module):
    """Cross-modal attention (Sec. 3.6, CMRAN decoder): the query modality attends to the key /
    value ``concat(memory, query)`` along time, then residual + LayerNorm and a feed-forward block.

    The authors' ``DecoderLayer`` also builds a self-attention it never calls; not built here.
    """

    def __init__(self, input_dim: int, d_model: int, heads: int, ff_dim: int, dropout: float = 0.1):
        super().__init__()
        self.affine = nn.Linear(input_dim, d_model)
        self.attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(d_model, ff_dim), nn.ReLU(), nn.Dropout(dropout),
                                nn.Linear(ff_dim, d_model))
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, query: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        q = self.affine(query)
        kv = torch.cat([memory, q], dim=1)
        x = self.norm1(q + self.dropout1(self.attn(q, kv, kv, need_weights=False)[0]))
        return self.norm2(x + self.dropout2(self.ff(x)))


class AVInteraction(nn.Module):
    """Audio-visual interaction module of CMRAN [35]: ``g = v * a`` attends to ``concat(a, v)``."""

    def __init__(self, d_model: int, heads: int, attn_dropout: float = 0.2, dropout: float = 0.1):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, heads, dropout=attn_dropout, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        joint = x * other
        memory = torch.cat([other, x], dim=1)
        return self.norm(joint + self.dropout(self.attn(joint, memory, memory, need_weights=False)[0]))


# ------------------------------------------------------------------ background suppression
def time_suppress(x: torch.Tensor, gate: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. 3-4: ``(1 - alpha) x + alpha * g * x`` with the other modality's gate ``g`` (B, T, 1)."""
    return (1 - alpha) * x + alpha * gate * x


def class_topk_mean(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Eq. 5: per class, the mean of the top-``k`` segment scores: ``(B, T, C) -> (B, C)``."""
    return scores.topk(min(k, scores.shape[1]), dim=1).values.mean(1)


def event_suppress(logits: torch.Tensor, gate_v: torch.Tensor, gate_a: torch.Tensor,
                   gamma: float) -> torch.Tensor:
    """Eq. 8 / 11: ``(1 - gamma) y + gamma * (g_v * g_a) * y`` (event-level gates broadcast)."""
    return (1 - gamma) * logits + gamma * (gate_v * gate_a) * logits


class CMBSTrunk(nn.Module):
    """From attended segment vectors to the fused feature ``F_o`` (Sec. 3.4-3.6).

    ``(v (B,T,Dv), a (B,T,Da)) -> dict``: optional Bi-LSTM (authors' fully supervised code), self-
    attention ``V_s, A_s``; time-level gates ``g_v = sigmoid(W V_s)``, ``g_a = sigmoid(W A_s)``;
    Eq. 3-4 suppression; CAS ``S_V, S_A`` from the suppressed features and the event-level gates
    ``sigmoid(top-k mean)`` (Eq. 5); cross-modal attention with key/value = both modalities; the
    AV interaction module; ``F_o`` = mean of the two streams (authors' code).

    Order follows the paper (gates on the self-attended features, cross-attention on the
    suppressed ones); the authors' code gates the cross-attention outputs instead.
    """

    def __init__(self, visual_dim: int, audio_dim: int, cas_classes: int, *, d_model: int,
                 heads: int, av_heads: int, enc_ff: int, dec_ff: int, use_rnn: bool, alpha: float,
                 top_k: int):
        super().__init__()
        self.alpha, self.top_k = alpha, top_k
        if use_rnn:  # authors' supv_main_model: Bi-LSTMs (audio d/2, visual d units per direction)
            self.audio_rnn = nn.LSTM(audio_dim, d_model // 2, batch_first=True, bidirectional=True)
            self.visual_rnn = nn.LSTM(visual_dim, d_model, batch_first=True, bidirectional=True)
            audio_dim, visual_dim = d_model, 2 * d_model
        else:
            self.audio_rnn = self.visual_rnn = None
        self.visual_enc = TemporalSelfAttention(visual_dim, d_model, heads, enc_ff)
        self.audio_enc = TemporalSelfAttention(audio_dim, d_model, heads, enc_ff)
        self.visual_gate = nn.Linear(d_model, 1)  # W_g^v (Sec. 3.4)
        self.audio_gate = nn.Linear(d_model, 1)  # W_g^a
        self.visual_cas = nn.Linear(d_model, cas_classes)  # 1x1 temporal conv (Sec. 3.5)
        self.audio_cas = nn.Linear(d_model, cas_classes)
        self.visual_dec = CrossModalAttention(d_model, d_model, heads, dec_ff)
        self.audio_dec = CrossModalAttention(d_model, d_model, heads, dec_ff)
        self.av_inter = AVInteraction(d_model, av_heads)
        self.va_inter = AVInteraction(d_model, av_heads)

    def forward(self, v: torch.Tensor, a: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.visual_rnn is not None:
            a, _ = self.audio_rnn(a)
            v, _ = self.visual_rnn(v)
        v_s, a_s = self.visual_enc(v), self.audio_enc(a)
        gate_v, gate_a = torch.sigmoid(self.visual_gate(v_s)), torch.sigmoid(self.audio_gate(a_s))
        v_tbs = time_suppress(v_s, gate_a, self.alpha)  # Eq. 3
        a_tbs = time_suppress(a_s, gate_v, self.alpha)  # Eq. 4
        ebs_v = torch.sigmoid(class_topk_mean(self.visual_cas(v_tbs), self.top_k))
        ebs_a = torch.sigmoid(class_topk_mean(self.audio_cas(a_tbs), self.top_k))
        v_o = self.visual_dec(v_tbs, a_tbs)
        a_o = self.audio_dec(a_tbs, v_tbs)
        v_o = self.av_inter(v_o, a_o)
        a_o = self.va_inter(a_o, v_o)  # sequential, as in the authors' code
        return {"fused": (v_o + a_o) / 2, "gate_v": gate_v.squeeze(-1), "gate_a": gate_a.squeeze(-1),
                "gate_av": (gate_v * gate_a).squeeze(-1), "ebs_v": ebs_v, "ebs_a": ebs_a}


# ----------------------------------------------------------------------------- labels, losses
def relevance_targets(labels: torch.Tensor) -> torch.Tensor:
    """One-hot ``(B, T, C+1)`` -> event relevance ``(B, T)`` float (1 = event, 0 = background)."""
    return 1.0 - labels[..., -1]


def video_event_class(labels: torch.Tensor) -> torch.Tensor:
    """One-hot ``(B, T, C+1)`` -> the video's event class ``(B,)`` in ``0..C-1`` (authors' code:
    the foreground class present in the video)."""
    return labels[..., :-1].sum(1).argmax(-1)


def fully_loss(class_logits: torch.Tensor, relevance_logits: torch.Tensor, gate_av: torch.Tensor,
               labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """CMBS Eq. 9 (CACE-Net Eq. 12 without ``L_contrast``): CE of the video's event class +
    mean_t BCE of the relevance logits + mean_t BCE of the (already sigmoided) gate ``g_av``."""
    rel = relevance_targets(labels)
    l_c = F.cross_entropy(class_logits, video_event_class(labels))
    l_r = F.binary_cross_entropy_with_logits(relevance_logits, rel)
    l_g = F.binary_cross_entropy(gate_av.clamp(1e-6, 1 - 1e-6), rel)
    return l_c + l_r + l_g, {"class": l_c.item(), "relevance": l_r.item(), "gate": l_g.item()}


def localize(relevance_logits: torch.Tensor, class_logits: torch.Tensor) -> torch.Tensor:
    """Fully supervised inference (Sec. 3.6, authors' ``compute_accuracy_supervised``): a segment
    with ``sigmoid(relevance) > 0.5`` takes the video's argmax class, others are background."""
    background = class_logits.shape[-1]
    cls = class_logits.argmax(-1, keepdim=True).expand_as(relevance_logits)
    return torch.where(relevance_logits > 0, cls, torch.full_like(cls, background))
