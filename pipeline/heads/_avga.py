"""Audio-guided visual attention (AVGA), shared by the ``avel``, ``psp``, ``vscg`` and ``m2n`` heads.

Tian et al. ECCV 2018, Sec. 3.2: for each segment the audio vector scores every spatial
position of the visual map, ``alpha = softmax(w_h^T tanh(W_v relu(U_v v_n) + W_g relu(U_a a)))``
over the ``N = H * W`` positions, and the attended visual vector is ``sum_n alpha_n v_n``.
Layer names and sizes follow the authors' code (YapengTian/AVE-ECCV18 models.py: ``affine_video``,
``affine_audio`` to 512, ``affine_v``/``affine_g`` to 49, ``affine_h`` to 1).

Where the audio term enters (``audio_term``):

* ``"position"`` (the authors' code of AVEL, PSP and VSCG): ``affine_g(a)`` has one entry per
  spatial position and the entry of position ``n`` is added to every scoring unit of that
  position, ``z_n = w_h^T tanh(W_v v_n + g_n 1)``. The scoring width is then the number of
  positions (the code's ``map_size`` = 49 for 7x7 maps), so ``H * W`` must equal ``att_dim``.
* ``"broadcast"`` (the paper's equation): the ``att_dim``-vector ``W_g a`` is added at every
  position, ``z_n = w_h^T tanh(W_v v_n + W_g a)``; any ``H, W``.
"""
from __future__ import annotations

import typing
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

AudioTerm = Literal["position", "broadcast"]  # the `audio_term` hyperparameter of a Config
AUDIO_TERMS = typing.get_args(AudioTerm)


class AudioGuidedVisualAttention(nn.Module):
    """``(visual (B,T,H,W,Cv), audio (B,T,Ca)) -> (attended (B,T,Cv), alpha (B,T,H*W))``.

    ``alpha`` sums to 1 over the spatial positions.
    """

    def __init__(self, visual_dim: int, audio_dim: int, hidden_dim: int = 512, att_dim: int = 49,
                 audio_term: str = "broadcast"):
        super().__init__()
        if audio_term not in AUDIO_TERMS:
            raise ValueError(f"audio_term must be one of {', '.join(AUDIO_TERMS)}; got {audio_term!r}")
        self.audio_term = audio_term
        self.affine_video = nn.Linear(visual_dim, hidden_dim)
        self.affine_audio = nn.Linear(audio_dim, hidden_dim)
        self.affine_v = nn.Linear(hidden_dim, att_dim, bias=False)
        self.affine_g = nn.Linear(hidden_dim, att_dim, bias=False)
        self.affine_h = nn.Linear(att_dim, 1, bias=False)
        for layer in (self.affine_video, self.affine_audio, self.affine_v, self.affine_g, self.affine_h):
            nn.init.xavier_uniform_(layer.weight)

    def forward(self, visual: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, h, w, c = visual.shape
        att_dim = self.affine_g.out_features
        if self.audio_term == "position" and h * w != att_dim:
            raise ValueError(f"audio_term 'position' (the authors' code) adds the audio score per "
                             f"spatial position, so H*W must equal att_dim: got {h}x{w} maps and "
                             f"att_dim={att_dim}; set the head's att_dim to {h * w} or audio_term "
                             f"to 'broadcast' (the paper's equation)")
        v = visual.reshape(b * t, h * w, c)
        v_h = F.relu(self.affine_video(v))  # (BT, N, hidden)
        a_h = F.relu(self.affine_audio(audio.reshape(b * t, -1)))  # (BT, hidden)
        g = self.affine_g(a_h)  # (BT, att_dim)
        g = g.unsqueeze(2) if self.audio_term == "position" else g.unsqueeze(1)  # (BT,N,1) | (BT,1,att)
        content = self.affine_v(v_h) + g  # (BT, N, att_dim)
        alpha = F.softmax(self.affine_h(torch.tanh(content)).squeeze(-1), dim=-1)  # (BT, N)
        attended = torch.bmm(alpha.unsqueeze(1), v).reshape(b, t, c)
        return attended, alpha.reshape(b, t, h * w)


def bilstm(input_dim: int, hidden_dim: int) -> nn.LSTM:
    """One-layer bidirectional LSTM over segments (``batch_first``), as in all three papers."""
    return nn.LSTM(input_dim, hidden_dim, num_layers=1, batch_first=True, bidirectional=True)


def segment_targets(labels: torch.Tensor) -> torch.Tensor:
    """One-hot ``(B, T, C+1)`` -> class indices ``(B, T)`` (background = C)."""
    return labels.argmax(-1)
