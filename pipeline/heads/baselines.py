"""Reference baselines: majority class, audio-only and visual-only (Tian et al., ECCV 2018).

AVEL's Table 1 reports unimodal models ("A" with VGG-like audio, "V" with VGG-19 visual) that
run an LSTM over one modality's segment features and classify each segment into C+1 classes;
``audio_only`` / ``visual_only`` are that (a bidirectional LSTM as AVEL's ``lstm_a``/``lstm_v``).
``majority`` learns only a bias over the C+1 classes: with cross-entropy it converges to the
training frequencies, i.e. it predicts the most frequent class for every segment.

Weak setting (video labels only), for all three: AVEL's weakly supervised MIL recipe — segment
probabilities are averaged over time into a video prediction trained with binary cross-entropy
against the video-level labels (event class and background); segments are still classified
one by one at test time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ._registry import NO_RELEASED_CODE, Head, Reported, register_head

# Baselines have no paper recipe of their own; AVEL's released code (Adam, lr 1e-3) is used.
_RECIPE = {"optimizer": "adam",  # AVEL code: optim.Adam
           "lr": 1e-3,  # AVEL code: learning rate 0.001
           "weight_decay": 0.0,
           "batch_size": 64,  # AVEL code: batch size 64
           "epochs": 100,  # our choice (converges well before on AVE)
           "lr_step": 0,  # constant learning rate (AVEL's 15000-iteration step is past 100 epochs)
           "lr_milestones": [],  # no decay
           "lr_gamma": 0.1,
           "clip_grad": 0.0}  # no clipping


class _SegmentClassifier(Head):
    """Shared loss/predict: per-segment logits ``(B, T, C+1)`` in ``out['logits']``."""

    TRAIN_DEFAULTS = {"fully": dict(_RECIPE), "weak": dict(_RECIPE)}
    SELECTION = {"fully": NO_RELEASED_CODE, "weak": NO_RELEASED_CODE}  # no released code

    def loss(self, out: dict[str, torch.Tensor], batch: dict[str, Any]):
        logits = out["logits"]
        if self.setting == "fully":
            target = batch["labels"].argmax(-1)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        else:  # MIL: mean segment probability vs the video-level labels (no segment labels)
            video = logits.softmax(-1).mean(1).clamp(1e-6, 1 - 1e-6)
            loss = F.binary_cross_entropy(video, batch["weak"].float())
        return loss, {}

    def predict(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        return out["logits"].argmax(-1)


@register_head("majority")
class MajorityHead(_SegmentClassifier):
    """Predicts one class for every segment: a learned bias over the C+1 classes."""

    def __init__(self, cfg: Head.Config, visual_dim: int, audio_dim: int, num_classes: int,
                 setting: str = "fully"):
        super().__init__(cfg, visual_dim, audio_dim, num_classes, setting)
        self.bias = nn.Parameter(torch.zeros(num_classes + 1))

    def forward(self, visual: torch.Tensor, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        b, t = audio.shape[:2]
        return {"logits": self.bias.expand(b, t, -1)}


class _UnimodalLSTM(_SegmentClassifier):
    """Linear + ReLU, a bidirectional LSTM over the ten segments, a C+1-way classifier."""

    @dataclass(frozen=True)
    class Config:
        hidden_dim: int = 128  # AVEL code: LSTM hidden size 128
        dropout: float = 0.2  # our choice, on the LSTM output

    modality = ""

    def __init__(self, cfg: Config, visual_dim: int, audio_dim: int, num_classes: int,
                 setting: str = "fully"):
        super().__init__(cfg, visual_dim, audio_dim, num_classes, setting)
        in_dim = visual_dim if self.modality == "visual" else audio_dim
        self.proj = nn.Linear(in_dim, cfg.hidden_dim)
        self.lstm = nn.LSTM(cfg.hidden_dim, cfg.hidden_dim, batch_first=True, bidirectional=True)
        self.drop = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(2 * cfg.hidden_dim, num_classes + 1)

    def forward(self, visual: torch.Tensor, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        # Visual maps (B,T,H,W,C) are average-pooled over space (AVEL's "V" model input).
        x = visual.mean(dim=(2, 3)) if self.modality == "visual" else audio
        h, _ = self.lstm(F.relu(self.proj(x)))
        return {"logits": self.classifier(self.drop(h))}


@register_head("audio_only")
class AudioOnlyHead(_UnimodalLSTM):
    """AVEL Table 1 "A": audio features only."""
    modality = "audio"
    REPORTED = {"fully": Reported(59.5, "AVEL 'A' (VGG-like), as cited in M2N Table 2 / CACE-Net Table 5")}


@register_head("visual_only")
class VisualOnlyHead(_UnimodalLSTM):
    """AVEL Table 1 "V": visual features only."""
    modality = "visual"
    REPORTED = {"fully": Reported(55.3, "AVEL 'V' (VGG-19), as cited in M2N Table 2 / CACE-Net Table 5")}
