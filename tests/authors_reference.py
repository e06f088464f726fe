"""The authors' models of AVEL, PSP and VSCG written out functionally, for the parity tests.

Only facts read in the authors' repositories are used: the key names and shapes their
``model.state_dict()`` has (YapengTian/AVE-ECCV18 ``models.py``, ``models_weakly.py``;
jasongief/PSP_CVPR_2021 ``fully_model.py``, ``weakly_model.py``; Bravo5542/VSCG
``vscgfully_model.py``, ``vscgweakly_model.py``, all at the released sizes: VGG-19 maps 7x7x512,
VGGish 128, 29 classes) and the operations of their ``forward``. Nothing here imports our heads:
a test converts a random dict of this layout with ``from_authors_state_dict`` and compares.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

A, V, N, C1 = 128, 512, 49, 29  # audio dim, visual channels, 7x7 positions, 28 classes + background


# ------------------------------------------------------------------------------- key layouts
def _lstm(prefix: str, d_in: int, h: int) -> dict[str, tuple]:
    out = {}
    for sfx in ("", "_reverse"):
        out.update({f"{prefix}.weight_ih_l0{sfx}": (4 * h, d_in), f"{prefix}.weight_hh_l0{sfx}": (4 * h, h),
                    f"{prefix}.bias_ih_l0{sfx}": (4 * h,), f"{prefix}.bias_hh_l0{sfx}": (4 * h,)})
    return out


def _gru(prefix: str, d_in: int, h: int) -> dict[str, tuple]:
    return {k: (s[0] * 3 // 4, *s[1:]) for k, s in _lstm(prefix, d_in, h).items()}  # 3 gates


def _avga(prefix: str, a_dim: int) -> dict[str, tuple]:
    return {f"{prefix}affine_audio.weight": (512, a_dim), f"{prefix}affine_audio.bias": (512,),
            f"{prefix}affine_video.weight": (512, V), f"{prefix}affine_video.bias": (512,),
            f"{prefix}affine_v.weight": (N, 512), f"{prefix}affine_g.weight": (N, 512),
            f"{prefix}affine_h.weight": (1, N)}


def _psp(project: bool) -> dict[str, tuple]:
    keys = ["v_L1", "v_L2", "a_L1", "a_L2"] + (["v_fc", "a_fc"] if project else [])
    return {**{f"psp.{k}.weight": (256, 256) for k in keys},
            "psp.layer_norm.weight": (256,), "psp.layer_norm.bias": (256,)}


def _classify() -> dict[str, tuple]:
    return {f"{m}_classify.{k}": s for m in ("v", "a") for k, s in (("L1.weight", (64, 256)),
                                                                     ("L2.weight", (28, 64)))}


def _encoder(setting: str, vscg: bool = False) -> dict[str, tuple]:
    """PSP's and VSCG's shared front: fa/fv (fully), linear_v (both), AVGA, lstm_a_v, psp."""
    out = {"linear_v.weight": (A, V), "linear_v.bias": (A,)}
    if setting == "fully":
        out.update({"fa.0.weight": (256, A), "fa.1.weight": (128, 256),
                    "fv.0.weight": (256, V), "fv.1.weight": (128, 256)})
    out.update(_avga("attention.", 128))
    out.update({**_lstm("lstm_a_v.lstm_audio", 128, 128), **_lstm("lstm_a_v.lstm_video", 128, 128)})
    out.update(_psp(project=setting == "fully" or vscg))
    return out


def layout(head: str, setting: str) -> dict[str, tuple]:
    """Key -> shape of the authors' ``model.state_dict()`` (``head`` in avel, psp, vscg)."""
    if head == "avel":  # att_Net(128, 128, 512, 29), both files
        return {**_lstm("lstm_audio", A, 128), **_lstm("lstm_video", V, 128), **_avga("", A),
                "L1.weight": (64, 512), "L1.bias": (64,), "L2.weight": (C1, 64), "L2.bias": (C1,)}
    if head == "psp" and setting == "fully":  # psp_net(128, 512, 128, 29)
        return {**_encoder("fully"), **_classify(), "L1.weight": (64, 256), "L2.weight": (C1, 64),
                "L3.weight": (64, 256), "L3.bias": (64,), "L4.weight": (2, 64), "L4.bias": (2,)}
    if head == "psp":
        return {"temperature": (1, C1), **_encoder("weak"), "W1.weight": (1, 256), "W2.weight": (1, 64),
                "W3.weight": (1, C1), "L1.weight": (64, 256), "L2.weight": (C1, 64)}
    escm = {"escm.conv1.0.weight": (128, 256, 5), "escm.conv1.0.bias": (128,),
            "escm.conv2.0.weight": (128, 128, 5), "escm.conv2.0.bias": (128,),
            **_gru("escm.a_gru", 256, 128), **_gru("escm.v_gru", 256, 128),
            "escm.layer_norm.weight": (256,), "escm.layer_norm.bias": (256,),
            "escm.v_fc.weight": (256, 256), "escm.a_fc.weight": (256, 256)}
    if setting == "fully":  # vscg_net(128, 512, 128, 29)
        return {**_encoder("fully", vscg=True), **escm, "escm.L1.weight": (10, 9), **_classify(),
                "L1.weight": (64, 256), "L2.weight": (C1, 64), "L3.weight": (1, 256), "L3.bias": (1,),
                "L4.weight": (28, 256), "L4.bias": (28,),
                **{f"{m}_gated.0.{p}": s for m in ("audio", "video")
                   for p, s in (("weight", (1, 256)), ("bias", (1,)))}}
    return {**_encoder("weak", vscg=True), **escm, "escm.layer_norm1.weight": (128,),
            "escm.layer_norm1.bias": (128,), "escm.L1.weight": (128, 128), "escm.L2.weight": (128, 128),
            "W1.weight": (1, 256), "W2.weight": (1, 64), "W3.weight": (1, C1), "L1.weight": (64, 256),
            "L2.weight": (C1, 64), "L3.weight": (64, 128)}


def random_state_dict(shapes: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * (0.3 if len(s) > 1 else 0.1) for k, s in shapes.items()}


# -------------------------------------------------------------------------- building blocks
def lin(sd, name, x):
    return F.linear(x, sd[f"{name}.weight"], sd.get(f"{name}.bias"))


def lstm(sd, prefix, x):
    """Bidirectional one-layer LSTM from zero state, gates (i, f, g, o): ``(B, T, 2H)``."""
    outs = []
    for sfx, order in (("", range(x.shape[1])), ("_reverse", reversed(range(x.shape[1])))):
        w_ih, w_hh = sd[f"{prefix}.weight_ih_l0{sfx}"], sd[f"{prefix}.weight_hh_l0{sfx}"]
        b = sd[f"{prefix}.bias_ih_l0{sfx}"] + sd[f"{prefix}.bias_hh_l0{sfx}"]
        h = c = x.new_zeros(x.shape[0], w_hh.shape[1])
        ys = {}
        for t in order:
            i, f, g, o = (x[:, t] @ w_ih.T + h @ w_hh.T + b).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            ys[t] = h
        outs.append(torch.stack([ys[t] for t in range(x.shape[1])], 1))
    return torch.cat(outs, -1)


def gru(sd, prefix, x, h0):
    """Bidirectional one-layer GRU, gates (r, z, n), ``h0`` ``(2, B, H)``: ``(B, T, 2H)``."""
    outs = []
    for d, (sfx, order) in enumerate((("", range(x.shape[1])), ("_reverse", reversed(range(x.shape[1]))))):
        w_ih, w_hh = sd[f"{prefix}.weight_ih_l0{sfx}"], sd[f"{prefix}.weight_hh_l0{sfx}"]
        b_ih, b_hh = sd[f"{prefix}.bias_ih_l0{sfx}"], sd[f"{prefix}.bias_hh_l0{sfx}"]
        h, ys = h0[d], {}
        for t in order:
            xr, xz, xn = (x[:, t] @ w_ih.T + b_ih).chunk(3, -1)
            hr, hz, hn = (h @ w_hh.T + b_hh).chunk(3, -1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            h = (1 - z) * torch.tanh(xn + r * hn) + z * h
            ys[t] = h
        outs.append(torch.stack([ys[t] for t in range(x.shape[1])], 1))
    return torch.cat(outs, -1)


def avga(sd, prefix, audio, video):
    """Their AVGA: ``affine_g(a)`` is unsqueezed on the last axis, i.e. added per position."""
    b, t = audio.shape[:2]
    v = video.reshape(b * t, -1, video.shape[-1])
    v_t = F.relu(lin(sd, f"{prefix}affine_video", v))
    a_t = F.relu(lin(sd, f"{prefix}affine_audio", audio.reshape(b * t, -1)))
    content = lin(sd, f"{prefix}affine_v", v_t) + lin(sd, f"{prefix}affine_g", a_t).unsqueeze(2)
    alpha = torch.softmax(lin(sd, f"{prefix}affine_h", torch.tanh(content)).squeeze(2), -1)
    return torch.bmm(alpha.unsqueeze(1), v).reshape(b, t, -1)


def psp_block(sd, a_fea, v_fea, thr, renorm, project):
    """Their PSP forward with their argument roles: ``(v_psp, a_psp)``."""
    v1, v2 = F.relu(lin(sd, "psp.v_L1", v_fea)), F.relu(lin(sd, "psp.v_L2", v_fea))
    a1, a2 = F.relu(lin(sd, "psp.a_L1", a_fea)), F.relu(lin(sd, "psp.a_L2", a_fea))
    beta_va = F.relu(v2 @ a1.transpose(1, 2) / v2.shape[2] ** 0.5)
    gammas = []
    for beta in (beta_va, beta_va.transpose(1, 2)):
        beta = beta / (beta.sum(-1, keepdim=True) + 1e-8)
        gamma = (beta > thr).float() * beta
        gammas.append(gamma / (gamma.sum(-1, keepdim=True) + 1e-8) if renorm else gamma)
    v_psp, a_psp = v_fea + gammas[0] @ a2, a_fea + gammas[1] @ v1
    if project:
        v_psp, a_psp = F.relu(lin(sd, "psp.v_fc", v_psp)), F.relu(lin(sd, "psp.a_fc", a_psp))
    return layer_norm(sd, "psp.layer_norm", v_psp), layer_norm(sd, "psp.layer_norm", a_psp)


def layer_norm(sd, name, x):
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], 1e-6)


def cosine(v, a):
    return (F.normalize(v, dim=-1) * F.normalize(a, dim=-1)).sum(-1)


def weighting_branch(sd, fusion):
    """Weak classifier of PSP and VSCG: ``(softmax(mean_t(score)), score)``."""
    score = lin(sd, "L2", F.relu(lin(sd, "L1", fusion)))
    score = score * torch.sigmoid(F.relu(lin(sd, "W3", score)))
    return torch.softmax(score.mean(1), -1), score


def cere(sd, x):
    """ESCM's shared conv blocks: ``(2, B, 128)``."""
    x = F.max_pool1d(F.relu(F.conv1d(x.transpose(1, 2), sd["escm.conv1.0.weight"], sd["escm.conv1.0.bias"],
                                     padding=2)), 2, 2)
    x = F.max_pool1d(F.relu(F.conv1d(x, sd["escm.conv2.0.weight"], sd["escm.conv2.0.bias"], padding=2)), 2, 2)
    return x.permute(2, 0, 1)


# ----------------------------------------------------------------------------- the models
def avel(sd, setting, audio, video):
    """fully: softmax scores ``(B, T, 29)``; weak: ``(video softmax of max-pooled scores, scores)``."""
    video_t = avga(sd, "", audio, video)
    out = F.relu(torch.cat([lstm(sd, "lstm_audio", audio), lstm(sd, "lstm_video", video_t)], -1))
    score = lin(sd, "L2", F.relu(lin(sd, "L1", out)))
    if setting == "fully":
        return torch.softmax(score, -1)
    return torch.softmax(score.max(1).values, -1), score


def psp(sd, setting, audio, video):
    """fully: ``(logits, cross_att)``; weak: ``(video probabilities, scores)``."""
    if setting == "fully":
        fa = lin(sd, "fa.1", lin(sd, "fa.0", audio))
        video_t = lin(sd, "fv.1", lin(sd, "fv.0", avga(sd, "attention.", fa, video)))
        lstm_audio, lstm_video = lstm(sd, "lstm_a_v.lstm_audio", fa), lstm(sd, "lstm_a_v.lstm_video", video_t)
        v_psp, a_psp = psp_block(sd, lstm_audio, lstm_video, 0.099, renorm=True, project=True)
        return lin(sd, "L2", F.relu(lin(sd, "L1", 0.5 * (v_psp + a_psp)))), cosine(v_psp, a_psp)
    video_t = lin(sd, "linear_v", avga(sd, "attention.", audio, video))
    lstm_audio, lstm_video = lstm(sd, "lstm_a_v.lstm_audio", audio), lstm(sd, "lstm_a_v.lstm_video", video_t)
    v_psp, a_psp = psp_block(sd, lstm_audio, lstm_video, 0.095, renorm=False, project=False)
    return weighting_branch(sd, 0.5 * (v_psp + a_psp))


def vscg(sd, setting, audio, video):
    """fully: ``(is_event_scores (B, T), event_scores (B, 28), cross_att)``; weak: as PSP's."""
    def ln(x):
        return layer_norm(sd, "escm.layer_norm", x)

    if setting == "fully":
        fa = lin(sd, "fa.1", lin(sd, "fa.0", audio))
        video_t = lin(sd, "fv.1", lin(sd, "fv.0", avga(sd, "attention.", fa, video)))
        # their call is lstm_a_v(video_t, fa_fea): the visual stream goes through lstm_audio
        lstm_audio, lstm_video = lstm(sd, "lstm_a_v.lstm_audio", video_t), lstm(sd, "lstm_a_v.lstm_video", fa)
        p_v, p_a = psp_block(sd, lstm_audio, lstm_video, 0.099, renorm=True, project=True)
        h0 = 0.5 * (cere(sd, p_a) + cere(sd, p_v))  # escm(p_a_fea, p_v_fea)
        gru_audio, gru_video = gru(sd, "escm.a_gru", p_a, h0), gru(sd, "escm.v_gru", p_v, h0)
        norm_audio = ln(F.relu(lin(sd, "escm.v_fc", gru_audio)))
        norm_video = ln(F.relu(lin(sd, "escm.a_fc", gru_video)))
        fusion = 0.5 * (norm_video + norm_audio)
        return (lin(sd, "L3", fusion).squeeze(-1), lin(sd, "L4", fusion.max(1).values),
                cosine(norm_video, norm_audio))
    video_t = lin(sd, "linear_v", avga(sd, "attention.", audio, video))
    lstm_audio, lstm_video = lstm(sd, "lstm_a_v.lstm_audio", audio), lstm(sd, "lstm_a_v.lstm_video", video_t)
    v_psp, a_psp = psp_block(sd, lstm_audio, lstm_video, 0.099, renorm=False, project=True)
    a_t, v_t = lin(sd, "escm.L1", cere(sd, a_psp)), lin(sd, "escm.L2", cere(sd, v_psp))
    gru_audio, gru_video = gru(sd, "escm.a_gru", a_psp, v_t), gru(sd, "escm.v_gru", v_psp, a_t)
    return weighting_branch(sd, 0.5 * (ln(gru_video) + ln(gru_audio)))


def assert_close_rel(ours: torch.Tensor, theirs: torch.Tensor, rel: float = 1e-5) -> None:
    """``|ours - theirs| <= rel * max|theirs|`` everywhere."""
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    err = float((ours - theirs).abs().max())
    assert err <= rel * float(theirs.abs().max()), f"max abs error {err:.3g}"
