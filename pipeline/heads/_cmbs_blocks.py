"""Building blocks of CMBS (Xia & Zhao, CVPR 2022), shared by the ``cmbs`` and ``cace`` heads.

The blocks compute what the authors' public code computes (marmot-xy/CMBS ``model/models.py``,
``model/main_model.py``) and, where the paper's equations differ, those too (``CMBSTrunk(order=
"paper")``, :func:`event_suppress`); the heads choose with their ``variant`` hyperparameter.
Only layers the authors' forward pass uses are built; :data:`CMGA_KEYS`, :func:`trunk_keys` and
:func:`trunk_unused_keys` describe the authors' checkpoints for
:meth:`pipeline.heads._authors.AuthorsStateDict.load_into` (their key names, their unused layers
checked and dropped).

Sequence tensors are batch-first ``(B, T, D)`` throughout.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.settings.targets import relevance_targets, video_event_class  # noqa: F401 (used by the heads)


# --------------------------------------------------------------------------- CMGA (Sec. 3.3)
class SpatialSelfAttention(nn.Module):
    """Non-local self-attention over the ``H*W`` positions of a map: ``(N, P, D) -> (N, P, D)``.

    The "global visual signal" of CMGA. The paper only cites non-local blocks [33]; layer shapes
    follow the authors' code (``video_query``/``video_key`` to ``D/4``, ``video_value``, residual +
    LayerNorm, no 1/sqrt(d) scaling).
    """

    def __init__(self, dim: int, latent: int = 4, dropout: float = 0.2, own_norm: bool = True):
        super().__init__()
        self.query = nn.Linear(dim, dim // latent)
        self.key = nn.Linear(dim, dim // latent)
        self.value = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim) if own_norm else None  # else forward() is given one
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, norm: nn.Module | None = None) -> torch.Tensor:
        attn = torch.softmax(self.query(x) @ self.key(x).transpose(1, 2), dim=-1)  # (N, P, P)
        return (self.norm if norm is None else norm)(x + self.dropout(attn @ self.value(x)))


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
    Layer names follow that ``DecoderLayer`` (``multihead_attn``, ``linear1``/``linear2``, ...).
    """

    def __init__(self, input_dim: int, d_model: int, heads: int, ff_dim: int, dropout: float = 0.1):
        super().__init__()
        self.affine = nn.Linear(input_dim, d_model)
        self.multihead_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, ff_dim)
        self.linear2 = nn.Linear(ff_dim, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, query: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        q = self.affine(query)
        kv = torch.cat([memory, q], dim=1)
        x = self.norm1(q + self.dropout1(self.multihead_attn(q, kv, kv, need_weights=False)[0]))
        ff = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm2(x + self.dropout2(ff))


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
TBS_FORMS = ("residual", "convex")


def time_suppress(x: torch.Tensor, gate: torch.Tensor, alpha: float, form: str = "convex") -> torch.Tensor:
    """Time-level suppression by a gate ``(B, T, 1)``. ``convex``: Eq. 3-4, ``(1 - alpha) x +
    alpha * g * x`` (also the authors' weak model); ``residual``: ``x + alpha * g * x`` (the
    authors' fully supervised model, and CACE-Net's)."""
    return (x if form == "residual" else (1 - alpha) * x) + alpha * gate * x


def class_topk_mean(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Eq. 5: per class, the mean of the top-``k`` segment scores: ``(B, T, C) -> (B, C)``."""
    return scores.topk(min(k, scores.shape[1]), dim=1).values.mean(1)


def event_suppress(logits: torch.Tensor, gate_v: torch.Tensor, gate_a: torch.Tensor,
                   gamma: float) -> torch.Tensor:
    """Eq. 8 / 11: ``(1 - gamma) y + gamma * (g_v * g_a) * y`` (event-level gates broadcast)."""
    return (1 - gamma) * logits + gamma * (gate_v * gate_a) * logits


def av_score(cas_v: torch.Tensor, cas_a: torch.Tensor, k: int) -> torch.Tensor:
    """Authors' fully supervised event-level branch: the mean of the two modalities' top-``k``
    class scores (Eq. 5 without the sigmoid), ``(B, T, C) x 2 -> (B, C)``; their class logits
    are ``y + gamma * av_score`` instead of Eq. 8's gating."""
    return (class_topk_mean(cas_v, k) + class_topk_mean(cas_a, k)) / 2


class CMBSTrunk(nn.Module):
    """From attended segment vectors to the fused feature ``F_o`` (Sec. 3.4-3.6).

    ``(v (B,T,Dv), a (B,T,Da)) -> dict`` (``fused``, ``gate_v``, ``gate_a``, ``cas_v``, ``cas_a``):
    optional Bi-LSTMs (authors' fully supervised code), self-attention ``V_s, A_s``; time-level
    gates ``g_v = sigmoid(W V_s)``, ``g_a = sigmoid(W A_s)``; cross-modal attention with key/value = both modalities; CAS ``S_V, S_A`` (1x1 temporal convs)
    of the suppressed streams; the AV interaction module; ``F_o`` = mean of the two streams.

    ``order`` says where the gates act:

    * ``"code"`` (marmot-xy/CMBS): the cross-modal attention takes the features *before* self-
      attention as its query and the other modality's self-attended features as memory; the gates
      then suppress the attention outputs, and the CAS read the suppressed outputs;
    * ``"paper"``: Eq. 3-4 suppress ``V_s, A_s``; CAS and cross-modal attention read those.

    ``own_gate``: each stream is suppressed by the gate of its own modality (the authors' weak
    model) instead of the other one's (Eq. 3-4, the authors' fully supervised model).
    """

    def __init__(self, visual_dim: int, audio_dim: int, cas_classes: int, *, d_model: int,
                 heads: int, av_heads: int, enc_ff: int, dec_ff: int, use_rnn: bool, alpha: float,
                 order: str = "code", tbs_form: str = "convex", own_gate: bool = False):
        super().__init__()
        if order not in ("code", "paper") or tbs_form not in TBS_FORMS:
            raise ValueError(f"CMBSTrunk: order must be 'code' or 'paper' and tbs_form one of "
                             f"{TBS_FORMS}, got {order!r}, {tbs_form!r}")
        self.alpha, self.order, self.tbs_form, self.own_gate = alpha, order, tbs_form, own_gate
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
        if cas_classes:  # 1x1 temporal convs (Sec. 3.5); 0 = none (CACE-Net's paper variant)
            self.visual_cas = nn.Linear(d_model, cas_classes)
            self.audio_cas = nn.Linear(d_model, cas_classes)
        else:
            self.visual_cas = self.audio_cas = None
        query_v, query_a = (visual_dim, audio_dim) if order == "code" else (d_model, d_model)
        self.visual_dec = CrossModalAttention(query_v, d_model, heads, dec_ff)
        self.audio_dec = CrossModalAttention(query_a, d_model, heads, dec_ff)
        self.av_inter = AVInteraction(d_model, av_heads)
        self.va_inter = AVInteraction(d_model, av_heads)

    def forward(self, v: torch.Tensor, a: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.visual_rnn is not None:
            a, _ = self.audio_rnn(a)
            v, _ = self.visual_rnn(v)
        v_s, a_s = self.visual_enc(v), self.audio_enc(a)
        gate_v, gate_a = torch.sigmoid(self.visual_gate(v_s)), torch.sigmoid(self.audio_gate(a_s))
        on_v, on_a = (gate_v, gate_a) if self.own_gate else (gate_a, gate_v)
        if self.order == "code":
            v_o = time_suppress(self.visual_dec(v, a_s), on_v, self.alpha, self.tbs_form)
            a_o = time_suppress(self.audio_dec(a, v_s), on_a, self.alpha, self.tbs_form)
            cas_in = v_o, a_o
        else:
            v_tbs = time_suppress(v_s, on_v, self.alpha, self.tbs_form)  # Eq. 3
            a_tbs = time_suppress(a_s, on_a, self.alpha, self.tbs_form)  # Eq. 4
            cas_in = v_tbs, a_tbs
            v_o, a_o = self.visual_dec(v_tbs, a_tbs), self.audio_dec(a_tbs, v_tbs)
        v_o = self.av_inter(v_o, a_o)
        a_o = self.va_inter(a_o, v_o)  # sequential, as in the authors' code
        out = {"fused": (v_o + a_o) / 2, "gate_v": gate_v.squeeze(-1), "gate_a": gate_a.squeeze(-1)}
        if self.visual_cas is not None:  # S_V, S_A (B, T, K)
            out["cas_v"], out["cas_a"] = self.visual_cas(cas_in[0]), self.audio_cas(cas_in[1])
        return out


# ----------------------------------------------------------------------------- labels, losses
def fully_loss(class_logits: torch.Tensor, relevance_logits: torch.Tensor, gate_av: torch.Tensor,
               labels: torch.Tensor, av_score: torch.Tensor | None = None,
               gate_on_logits: bool = False, video_class: str = "most_frequent"
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """CMBS Eq. 9 (CACE-Net Eq. 12 without ``L_contrast``): CE of the video's event class +
    mean_t BCE of the relevance logits + mean_t BCE of the gate ``g_av`` (a probability).

    Authors' code: ``av_score`` given adds its CE (the extra term of their ``supv_main.py``), and
    ``gate_on_logits`` applies ``BCEWithLogits`` to the already-sigmoided ``g_av`` as they do.
    ``video_class``: the rule of the class target (:func:`video_event_class`).
    """
    rel = relevance_targets(labels)
    event = video_event_class(labels, video_class)
    l_c = F.cross_entropy(class_logits, event)
    l_r = F.binary_cross_entropy_with_logits(relevance_logits, rel)
    l_g = (F.binary_cross_entropy_with_logits(gate_av, rel) if gate_on_logits
           else F.binary_cross_entropy(gate_av.clamp(1e-6, 1 - 1e-6), rel))
    loss, parts = l_c + l_r + l_g, {"class": l_c.item(), "relevance": l_r.item(), "gate": l_g.item()}
    if av_score is not None:
        l_cas = F.cross_entropy(av_score, event)
        loss, parts["cas"] = loss + l_cas, l_cas.item()
    return loss, parts


def localize(relevance_logits: torch.Tensor, class_logits: torch.Tensor) -> torch.Tensor:
    """Fully supervised inference (Sec. 3.6, authors' ``compute_accuracy_supervised``): a segment
    with ``sigmoid(relevance) > 0.5`` takes the video's argmax class, others are background."""
    background = class_logits.shape[-1]
    cls = class_logits.argmax(-1, keepdim=True).expand_as(relevance_logits)
    return torch.where(relevance_logits > 0, cls, torch.full_like(cls, background))


# ------------------------------------------------- the authors' checkpoints (marmot-xy/CMBS layout)
CMGA_KEYS = {  # ours (under the CMGA module) -> New_Audio_Guided_Attention / Co_Guided_Attention
    "self_att.query": "video_query", "self_att.key": "video_key", "self_att.value": "video_value",
    "global_att.affine_avg": "affine_video_ave", "global_att.affine_pos": "affine_video_3",
    "global_att.score": "ave_v_att", "audio_att.video_c": "affine_video_1",
    "audio_att.audio_c": "affine_audio_1", "audio_att.bottleneck": "affine_bottleneck",
    "audio_att.channel": "affine_v_c_att", "audio_att.video_s": "affine_video_2",
    "audio_att.audio_s": "affine_audio_2", "audio_att.spatial": "affine_v_s_att",
}

# New_Audio_Guided_Attention builds ave_bottleneck = Linear(512, 256) and never uses it.
CMGA_UNUSED = {"spatial_channel_att.ave_bottleneck.weight": (256, 512),
               "spatial_channel_att.ave_bottleneck.bias": (256,)}


def trunk_keys(weak: bool) -> dict[str, str]:
    """Our ``trunk.*`` module prefixes -> the authors' ``main_model`` prefixes. Their weak model
    computes the gate it calls ``audio_gated`` from the *visual* self-attention (and vice versa)."""
    gate_v, gate_a = ("audio_gated.0", "video_gated.0") if weak else ("video_gated.0", "audio_gated.0")
    keys = {"trunk.audio_rnn": "audio_visual_rnn_layer.audio_rnn",
            "trunk.visual_rnn": "audio_visual_rnn_layer.visual_rnn",
            "trunk.visual_gate": gate_v, "trunk.audio_gate": gate_a,
            "trunk.visual_cas": "video_cas", "trunk.audio_cas": "audio_cas"}
    for ours, theirs in (("visual", "video"), ("audio", "audio")):
        keys.update({f"trunk.{ours}_enc.affine": f"{theirs}_encoder.affine_matrix",
                     f"trunk.{ours}_enc.layers": f"{theirs}_encoder.encoder.layers",
                     f"trunk.{ours}_dec.affine": f"{theirs}_decoder.affine_matrix",
                     f"trunk.{ours}_dec": f"{theirs}_decoder.decoder.layers.0"})
    for ours, theirs in (("av", "AVInter"), ("va", "VAInter")):
        keys.update({f"trunk.{ours}_inter.attn": f"{theirs}.video_multihead",
                     f"trunk.{ours}_inter.norm": f"{theirs}.norm1"})
    return keys


def trunk_unused_keys(trunk: CMBSTrunk) -> dict[str, tuple[int, ...]]:
    """Keys the authors' modules save but their forward never reads, with their shapes: the
    layer templates that ``_get_clones`` copies (``encoder_layer``, ``decoder_layer``) and the
    decoder's self-attention."""
    unused: dict[str, tuple[int, ...]] = {}
    for ours, theirs in (("visual", "video"), ("audio", "audio")):
        for name, p in getattr(trunk, f"{ours}_enc").layers[0].named_parameters():
            unused[f"{theirs}_encoder.encoder_layer.{name}"] = tuple(p.shape)
        for name, p in getattr(trunk, f"{ours}_dec").named_parameters():
            if name.startswith("affine."):
                continue
            unused[f"{theirs}_decoder.decoder_layer.{name}"] = tuple(p.shape)
            if name.startswith("multihead_attn."):
                self_attn = name.replace("multihead_attn.", "self_attn.")
                unused[f"{theirs}_decoder.decoder_layer.{self_attn}"] = tuple(p.shape)
                unused[f"{theirs}_decoder.decoder.layers.0.{self_attn}"] = tuple(p.shape)
    return unused


def authors_trunk_sizes(sd, hidden_key: str) -> tuple[dict[str, Any], dict[str, int]]:
    """Widths and feature dimensions of the CMBS trunk read from an authors' state dict (the
    layout CMBS and CACE-Net share): ``(hyperparameters, {visual_dim, audio_dim})``;
    ``hidden_key`` names the CMGA bottleneck width in the head's ``Config``."""
    widths = {"visual_fc_dim": sd.dim("v_fc.weight", 0),
              hidden_key: sd.dim("spatial_channel_att.affine_bottleneck.weight", 0),
              "d_model": sd.dim("video_gated.0.weight", 1),
              "enc_ff": sd.dim("video_encoder.encoder.layers.0.linear1.weight", 0),
              "dec_ff": sd.dim("video_decoder.decoder.layers.0.linear1.weight", 0),
              "variant": "code"}
    dims = {"visual_dim": sd.dim("v_fc.weight", 1),
            "audio_dim": sd.dim("spatial_channel_att.affine_audio_1.weight", 1)}
    return widths, dims
