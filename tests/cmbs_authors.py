"""The authors' CMBS and CACE-Net models as facts, for the checkpoint-import tests: the key names
and shapes their ``torch.save(model.state_dict())`` writes (marmot-xy/CMBS ``supv_main_model`` /
``weak_main_model``, Brain-Cog-Lab/CACE-Net ``supv_main_model`` with ``--guide Co-Guide``), and
their eval-mode forward written as plain functions of such a state dict. Nothing here imports
the heads under test or the authors' code.

Their sequences are time-first; these functions are batch-first (same numbers).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

Shapes = dict[str, tuple[int, ...]]


# ------------------------------------------------------------------------------ key layouts
def linear(p: str, out: int, inp: int, bias: bool = True) -> Shapes:
    return {p + "weight": (out, inp), **({p + "bias": (out,)} if bias else {})}


def norm(p: str, d: int) -> Shapes:
    return {p + "weight": (d,), p + "bias": (d,)}


def mha(p: str, d: int) -> Shapes:
    return {p + "in_proj_weight": (3 * d, d), p + "in_proj_bias": (3 * d,),
            p + "out_proj.weight": (d, d), p + "out_proj.bias": (d,)}


def encoder_layer(p: str, d: int, ff: int) -> Shapes:
    return {**mha(p + "self_attn.", d), **linear(p + "linear1.", ff, d), **linear(p + "linear2.", d, ff),
            **norm(p + "norm1.", d), **norm(p + "norm2.", d)}


def decoder_layer(p: str, d: int, ff: int) -> Shapes:
    return {**mha(p + "self_attn.", d), **mha(p + "multihead_attn.", d), **linear(p + "linear1.", ff, d),
            **linear(p + "linear2.", d, ff), **norm(p + "norm1.", d), **norm(p + "norm2.", d)}


def temporal_encoder(p: str, inp: int, d: int, ff: int) -> Shapes:
    """InternalTemporalRelationModule: the template layer, its two clones, the input affine."""
    return {**encoder_layer(p + "encoder_layer.", d, ff), **encoder_layer(p + "encoder.layers.0.", d, ff),
            **encoder_layer(p + "encoder.layers.1.", d, ff), **linear(p + "affine_matrix.", d, inp)}


def cross_decoder(p: str, inp: int, d: int, ff: int) -> Shapes:
    """CrossModalRelationAttModule: the template layer, its one clone, the input affine."""
    return {**decoder_layer(p + "decoder_layer.", d, ff), **decoder_layer(p + "decoder.layers.0.", d, ff),
            **linear(p + "affine_matrix.", d, inp)}


def bilstm(p: str, inp: int, hidden: int) -> Shapes:
    out = {}
    for sfx in ("", "_reverse"):
        out.update({f"{p}weight_ih_l0{sfx}": (4 * hidden, inp), f"{p}weight_hh_l0{sfx}": (4 * hidden, hidden),
                    f"{p}bias_ih_l0{sfx}": (4 * hidden,), f"{p}bias_hh_l0{sfx}": (4 * hidden,)})
    return out


def cmga(p: str, fc: int, ca: int, hidden: int, norm_key: str = "norm.") -> Shapes:
    """New_Audio_Guided_Attention (its ``ave_bottleneck`` is Linear(512, 256) whatever the dims)."""
    return {**linear(p + "affine_video_1.", fc, fc), **linear(p + "affine_audio_1.", fc, ca),
            **linear(p + "affine_bottleneck.", hidden, fc), **linear(p + "affine_v_c_att.", fc, hidden),
            **linear(p + "affine_video_2.", hidden, fc), **linear(p + "affine_audio_2.", hidden, ca),
            **linear(p + "affine_v_s_att.", 1, hidden), **linear(p + "video_query.", fc // 4, fc),
            **linear(p + "video_key.", fc // 4, fc), **linear(p + "video_value.", fc, fc),
            **norm(p + norm_key, fc), **linear(p + "affine_video_ave.", hidden, fc),
            **linear(p + "affine_video_3.", hidden, fc), **linear(p + "ave_bottleneck.", 256, 512),
            **linear(p + "ave_v_att.", 1, hidden)}


def co_guided(p: str, fc: int, ca: int, hidden: int) -> Shapes:
    """Co_Guided_Attention: CMGA (LayerNorm ``v_norm``) + a second visual self-attention (its
    ``v_norm2`` unused) + the audio self-attention and visual-guided audio attention."""
    return {**cmga(p, fc, ca, hidden, norm_key="v_norm."), **linear(p + "video_query2.", fc // 4, fc),
            **linear(p + "video_key2.", fc // 4, fc), **linear(p + "video_value2.", fc, fc),
            **norm(p + "v_norm2.", fc), **linear(p + "v_query.", ca, fc), **linear(p + "vaudio_key.", ca, ca),
            **linear(p + "vaudio_value.", ca, ca), **linear(p + "audio_query.", ca, ca),
            **linear(p + "audio_key.", ca, ca), **linear(p + "audio_value.", ca, ca), **norm(p + "a_norm.", ca)}


def supv_trunk(fc: int, ca: int, d: int, enc_ff: int, dec_ff: int, classes: int) -> Shapes:
    """supv_main_model from the RNNs on (CMBS and CACE-Net share it)."""
    return {**temporal_encoder("video_encoder.", 2 * d, d, enc_ff),
            **cross_decoder("video_decoder.", 2 * d, d, dec_ff),
            **temporal_encoder("audio_encoder.", d, d, enc_ff), **cross_decoder("audio_decoder.", d, d, dec_ff),
            **bilstm("audio_visual_rnn_layer.audio_rnn.", ca, d // 2),
            **bilstm("audio_visual_rnn_layer.visual_rnn.", fc, d),
            **linear("audio_gated.0.", 1, d), **linear("video_gated.0.", 1, d),
            **mha("AVInter.video_multihead.", d), **norm("AVInter.norm1.", d),
            **mha("VAInter.video_multihead.", d), **norm("VAInter.norm1.", d),
            **linear("localize_module.classifier.", 1, d),
            **linear("localize_module.event_classifier.", classes, d),
            **linear("audio_cas.", classes, d), **linear("video_cas.", classes, d)}


def cmbs_layout(setting: str, cv=512, ca=128, fc=512, hidden=256, d=256, enc_ff=None, dec_ff=1024,
                classes=28) -> Shapes:
    """Keys and shapes of the authors' CMBS model (defaults: their VGG-19 / VGGish config)."""
    if setting == "fully":
        return {**linear("v_fc.", fc, cv), **cmga("spatial_channel_att.", fc, ca, hidden),
                **supv_trunk(fc, ca, d, enc_ff or 1024, dec_ff, classes),
                **norm("video_norm.", d), **norm("audio_norm.", d)}
    enc_ff = enc_ff or 2048
    return {**linear("v_fc.", fc, cv), **cmga("spatial_channel_att.", fc, ca, hidden),
            **temporal_encoder("video_encoder.", fc, d, enc_ff),
            **cross_decoder("video_decoder.", fc, d, dec_ff),
            **temporal_encoder("audio_encoder.", ca, d, enc_ff),
            **cross_decoder("audio_decoder.", ca, d, dec_ff),
            **mha("AVInter.video_multihead.", d), **norm("AVInter.norm1.", d),
            **mha("VAInter.video_multihead.", d), **norm("VAInter.norm1.", d),
            **linear("audio_gated.0.", 1, d), **linear("video_gated.0.", 1, d),
            "CAS_model.classifier.0.weight": (classes + 1, d, 1), **linear("classifier.", 1, d),
            **linear("audio_cas.", classes + 1, d), **linear("video_cas.", classes + 1, d)}


def cace_layout(cv=512, ca=128, fc=512, hidden=256, d=256, enc_ff=1024, dec_ff=512, classes=28,
                a_fc=128) -> Shapes:
    """Keys and shapes of the authors' CACE-Net ``supv_main_model`` (Co-Guide, contrastive)."""
    return {**co_guided("spatial_channel_att.", fc, ca, hidden), **linear("v_fc.", fc, cv),
            **linear("a_fc.", a_fc, ca), **supv_trunk(fc, ca, d, enc_ff, dec_ff, classes),
            **linear("localize_module.encoder_q.0.", d, d)}


def random_state_dict(layout: Shapes, seed: int = 0, prefix: str = "module.",
                      dtype=torch.float64) -> dict[str, torch.Tensor]:
    """Random values in ``layout`` (LayerNorm weights included), as DataParallel saves them."""
    g = torch.Generator().manual_seed(seed)
    return {prefix + k: (0.3 * torch.randn(s, generator=g)).to(dtype) for k, s in layout.items()}


def numel(layout: Shapes) -> int:
    return sum(torch.Size(s).numel() for s in layout.values())


# ---------------------------------------------------------------------- their eval forward
def lin(sd, p, x):
    return F.linear(x, sd[p + "weight"], sd.get(p + "bias"))


def ln(sd, p, x):
    return F.layer_norm(x, x.shape[-1:], sd[p + "weight"], sd[p + "bias"])


def attend(sd, p, q, kv, heads):
    """``nn.MultiheadAttention`` (time-first in their code) in eval mode, batch-first here."""
    out, _ = F.multi_head_attention_forward(
        q.transpose(0, 1), kv.transpose(0, 1), kv.transpose(0, 1), q.shape[-1], heads,
        sd[p + "in_proj_weight"], sd[p + "in_proj_bias"], None, None, False, 0.0,
        sd[p + "out_proj.weight"], sd[p + "out_proj.bias"], training=False, need_weights=False)
    return out.transpose(0, 1)


def encoder(sd, p, x, heads=4):
    x = lin(sd, p + "affine_matrix.", x)
    for i in (0, 1):
        layer = f"{p}encoder.layers.{i}."
        x = ln(sd, layer + "norm1.", x + attend(sd, layer + "self_attn.", x, x, heads))
        x = ln(sd, layer + "norm2.", x + lin(sd, layer + "linear2.", F.relu(lin(sd, layer + "linear1.", x))))
    return x


def decoder(sd, p, query, memory, heads=4):
    q = lin(sd, p + "affine_matrix.", query)
    layer = p + "decoder.layers.0."
    x = ln(sd, layer + "norm1.", q + attend(sd, layer + "multihead_attn.", q, torch.cat([memory, q], 1), heads))
    return ln(sd, layer + "norm2.", x + lin(sd, layer + "linear2.", F.relu(lin(sd, layer + "linear1.", x))))


def interact(sd, p, x, other, heads):
    joint = x * other
    memory = torch.cat([other, x], 1)
    return ln(sd, p + "norm1.", joint + attend(sd, p + "video_multihead.", joint, memory, heads))


def run_bilstm(sd, p, x):
    hidden = sd[p + "weight_hh_l0"].shape[1]
    rnn = nn.LSTM(x.shape[-1], hidden, batch_first=True, bidirectional=True).to(x.dtype)
    rnn.load_state_dict({k[len(p):]: v for k, v in sd.items() if k.startswith(p)})
    return rnn(x)[0]


def topk_mean(x, k=4):
    return x.sort(dim=1, descending=True).values[:, :k].mean(1)


def spatial_self_attention(sd, p, x, norm_key, sfx=""):
    q, k = lin(sd, f"{p}video_query{sfx}.", x), lin(sd, f"{p}video_key{sfx}.", x)
    att = torch.softmax(q @ k.transpose(1, 2), -1)
    return ln(sd, p + norm_key, x + att @ lin(sd, f"{p}video_value{sfx}.", x))


def audio_guided_attention(sd, p, visual, audio, beta, norm_key="norm."):
    b, t, h, w, d = visual.shape
    x, a = visual.reshape(b * t, h * w, d), audio.reshape(b * t, -1)
    xs = spatial_self_attention(sd, p, x, norm_key)
    avg = F.relu(lin(sd, p + "affine_video_ave.", xs.mean(1))).unsqueeze(1)
    s = torch.softmax(torch.tanh(lin(sd, p + "ave_v_att.", F.relu(lin(sd, p + "affine_video_3.", xs)) * avg)), 1)
    v_g = (s * xs).sum(1)
    joint = F.relu(lin(sd, p + "affine_audio_1.", a)).unsqueeze(1) * F.relu(lin(sd, p + "affine_video_1.", xs))
    joint = joint.mean(1)
    channel = torch.sigmoid(lin(sd, p + "affine_v_c_att.", F.relu(lin(sd, p + "affine_bottleneck.", joint))))
    xc = x * (channel.unsqueeze(1) + 1)
    query = F.relu(lin(sd, p + "affine_video_2.", xc)) * F.relu(lin(sd, p + "affine_audio_2.", a)).unsqueeze(1)
    s = torch.softmax(torch.tanh(lin(sd, p + "affine_v_s_att.", query)), 1)
    v_a = (s * xc).sum(1)
    return (v_a + beta * torch.sigmoid(v_g) * v_a).reshape(b, t, d)


def supv_from_rnn(sd, v, a, alpha, gamma, heads=4, av_heads=4):
    """supv_main_model after the spatial attention: ``(fused, g_a * g_v, av_score)``."""
    a_r = run_bilstm(sd, "audio_visual_rnn_layer.audio_rnn.", a)
    v_r = run_bilstm(sd, "audio_visual_rnn_layer.visual_rnn.", v)
    v_kv = encoder(sd, "video_encoder.", v_r, heads)
    a_q = decoder(sd, "audio_decoder.", a_r, v_kv, heads)
    a_kv = encoder(sd, "audio_encoder.", a_r, heads)
    v_q = decoder(sd, "video_decoder.", v_r, a_kv, heads)
    g_a, g_v = torch.sigmoid(lin(sd, "audio_gated.0.", a_kv)), torch.sigmoid(lin(sd, "video_gated.0.", v_kv))
    v_q, a_q = v_q + g_a * v_q * alpha, a_q + g_v * a_q * alpha
    score = (topk_mean(lin(sd, "video_cas.", v_q)) + topk_mean(lin(sd, "audio_cas.", a_q))) / 2
    v_o = interact(sd, "AVInter.", v_q, a_q, av_heads)
    a_o = interact(sd, "VAInter.", a_q, v_o, av_heads)
    return (v_o + a_o) / 2, (g_a * g_v).squeeze(-1), score


def cmbs_fully(sd, visual, audio, alpha=0.1, beta=0.4, gamma=0.3):
    """``(is_event (B,T), event_scores (B,C), audio_visual_gate (B,T), av_score (B,C))``."""
    v = audio_guided_attention(sd, "spatial_channel_att.", F.relu(lin(sd, "v_fc.", visual)), audio, beta)
    fused, gate, score = supv_from_rnn(sd, v, audio, alpha, gamma)
    classes = lin(sd, "localize_module.event_classifier.", fused.max(1).values) + gamma * score
    return lin(sd, "localize_module.classifier.", fused).squeeze(-1), classes, gate, score


def cmbs_weak(sd, visual, audio, alpha=0.2, beta=0.5, gamma=0.5):
    """``(av_gate (B,T), raw_logits (B,C+1), event_scores (B,C+1))`` of weak_main_model."""
    v = audio_guided_attention(sd, "spatial_channel_att.", F.relu(lin(sd, "v_fc.", visual)), audio, beta)
    v_kv = encoder(sd, "video_encoder.", v)
    a_q = decoder(sd, "audio_decoder.", audio, v_kv)
    a_kv = encoder(sd, "audio_encoder.", audio)
    v_q = decoder(sd, "video_decoder.", v, a_kv)
    g1, g2 = torch.sigmoid(lin(sd, "audio_gated.0.", v_kv)), torch.sigmoid(lin(sd, "video_gated.0.", a_kv))
    v_q = (1 - alpha) * v_q + g1 * v_q * alpha
    a_q = (1 - alpha) * a_q + g2 * a_q * alpha
    v_gate, a_gate = torch.sigmoid(lin(sd, "video_cas.", v_q)), torch.sigmoid(lin(sd, "audio_cas.", a_q))
    v_o = interact(sd, "AVInter.", v_q, a_q, 2)
    a_o = interact(sd, "VAInter.", a_q, v_o, 2)
    cas = (v_o + a_o) / 2 @ sd["CAS_model.classifier.0.weight"].squeeze(-1).T
    raw = topk_mean(gamma * v_gate * cas + gamma * a_gate * cas)
    av_gate = (g1 + g2) / 2
    return av_gate.squeeze(-1), raw, torch.softmax((av_gate * raw.unsqueeze(1)).max(1).values, -1)


def cace_fully(sd, visual, audio, alpha=0.1, beta=0.4, gamma=0.3, psi=0.3, lam=0.6):
    """``(is_event, event_scores, audio_visual_gate, av_score, normalised query)`` of CACE-Net's
    supv_main_model with ``contrastive_switch`` on (their evaluation)."""
    p = "spatial_channel_att."
    v = F.relu(lin(sd, "v_fc.", visual))
    b, t, h, w, d = v.shape
    guided_v = audio_guided_attention(sd, p, v, audio, beta, norm_key="v_norm.")
    x2 = spatial_self_attention(sd, p, v.reshape(b * t, h * w, d), "v_norm.", sfx="2")
    q, k = lin(sd, p + "audio_query.", audio), lin(sd, p + "audio_key.", audio)
    att = torch.softmax(q @ k.transpose(1, 2), -1)
    a_g = ln(sd, p + "a_norm.", audio + att @ lin(sd, p + "audio_value.", audio))
    q = lin(sd, p + "v_query.", x2.mean(1).reshape(b, t, d))
    att = torch.softmax(q @ lin(sd, p + "vaudio_key.", a_g).transpose(1, 2), -1)
    guided_a = audio + psi * torch.sigmoid(att @ lin(sd, p + "vaudio_value.", a_g)) * audio
    fused, gate, score = supv_from_rnn(sd, guided_v, guided_a, alpha, gamma)
    query = F.relu(lin(sd, "localize_module.encoder_q.0.", fused))
    is_event = lin(sd, "localize_module.classifier.", fused + lam * query).squeeze(-1)
    classes = lin(sd, "localize_module.event_classifier.", fused.max(1).values) + gamma * score
    return is_event, classes, gate, score, F.normalize(query, dim=-1)
