"""Audio-guided visual attention (AVGA), shared by the ``avel``, ``psp`` and ``vscg`` heads.

Tian et al. ECCV 2018, Sec. 3.2: for each segment the audio vector scores every spatial
position of the visual map, ``alpha = softmax(w_h^T tanh(W_v relu(U_v v_n) + W_g relu(U_a a)))``
over the ``N = H * W`` positions, and the attended visual vector is ``sum_n alpha_n v_n``.
Layer names and sizes follow the authors' code (YapengTian/AVE-ECCV18 models.py: ``affine_video``,
``affine_audio`` to 512, ``affine_v``/``affine_g`` to 49, ``affine_h`` to 1).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class AudioGuidedVisualAttention(nn.Module):
    """``(visual (B,T,H,W,Cv), audio (B,T,Ca)) -> (attended (B,T,Cv), alpha (B,T,H*W))``.

    ``alpha`` sums to 1 over the spatial positions; any ``H, W`` work because ``att_dim`` is the
    width of the scoring MLP, not the number of positions.
    """

    def __init__(self, visual_dim: int, audio_dim: int, hidden_dim: int = 512, att_dim: int = 49):
        super().__init__()
        self.affine_video = nn.Linear(visual_dim, hidden_dim)
        self.affine_audio = nn.Linear(audio_dim, hidden_dim)
        self.affine_v = nn.Linear(hidden_dim, att_dim, bias=False)
        self.affine_g = nn.Linear(hidden_dim, att_dim, bias=False)
        self.affine_h = nn.Linear(att_dim, 1, bias=False)
        for layer in (self.affine_video, self.affine_audio, self.affine_v, self.affine_g, self.affine_h):
            nn.init.xavier_uniform_(layer.weight)

    def forward(self, visual: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, h, w, c = visual.shape
        v = visual.reshape(b * t, h * w, c)
        v_h = F.relu(self.affine_video(v))  # (BT, N, hidden)
        a_h = F.relu(self.affine_audio(audio.reshape(b * t, -1)))  # (BT, hidden)
        # The audio term is broadcast over the N positions (paper). The authors' code writes
        # affine_g(a).unsqueeze(2), which adds it along the scoring width instead; that only
        # type-checks because N == att_dim == 49 for 7x7 maps, so we follow the paper here.
        content = self.affine_v(v_h) + self.affine_g(a_h).unsqueeze(1)  # (BT, N, att_dim)
        alpha = F.softmax(self.affine_h(torch.tanh(content)).squeeze(-1), dim=-1)  # (BT, N)
        attended = torch.bmm(alpha.unsqueeze(1), v).reshape(b, t, c)
        return attended, alpha.reshape(b, t, h * w)


def bilstm(input_dim: int, hidden_dim: int) -> nn.LSTM:
    """One-layer bidirectional LSTM over segments (``batch_first``), as in all three papers."""
    return nn.LSTM(input_dim, hidden_dim, num_layers=1, batch_first=True, bidirectional=True)


def segment_targets(labels: torch.Tensor) -> torch.Tensor:
    """One-hot ``(B, T, C+1)`` -> class indices ``(B, T)`` (background = C)."""
    return labels.argmax(-1)
