"""AVEL: Tian et al. ECCV 2018, "Audio-Visual Event Localization in Unconstrained Videos".

The "A+V-att" model as the authors' public code computes it (YapengTian/AVE-ECCV18, ``models.py``
fully supervised, ``models_weakly.py`` weakly supervised; training scripts ``supervised_main.py``,
``weak_supervised_main.py``):

* audio-guided visual attention over the ``H x W`` positions (Sec. 3.2, :mod:`._avga`);
* one Bi-LSTM per modality (audio on the raw audio vector, visual on the attended vector);
* fusion by concatenation, ReLU, ``L1`` (64) + ReLU + ``L2`` -> per-segment scores over C+1 classes.

Fully supervised: softmax per segment, ``MultiLabelSoftMarginLoss`` against the one-hot segment
labels (the authors' code applies that loss to the softmax output; kept as written).
Weakly supervised (MIL over segments): the per-segment scores are max-pooled over time, softmaxed
and trained with ``MultiLabelSoftMarginLoss`` against the video-level label; segments are
predicted by the argmax of their own scores.

:meth:`AVEL.from_authors_state_dict` reads ``att_Net.state_dict()`` of either file (the released
``model/AV_att.pt`` and ``AV_att_weak.pt`` are pickled whole modules: load them with the authors'
code and save their ``state_dict()``). The outputs match ``softmax(logits)`` (fully) and
``(video_prob, logits)`` (weak).

component         | authors' code                 | paper           | default here | option
------------------+-------------------------------+-----------------+--------------+----------------------
AVGA audio term   | per position (H*W = 49)       | broadcast (Eq.) | code         | audio_term: broadcast
layer sizes, init | 512/49/LSTM 128/64, Xavier    | not all stated  | code         | widths in Config 
fully loss        | MultiLabelSoftMargin(softmax) | not stated      | code         | -
weak pooling      | max over time, softmax        | MIL             | code         | -

Training-side switches (``train.recipe``: authors | paper; ``train.<switch>`` overrides one):

switch     | authors        | paper       | why
-----------+----------------+-------------+-----------------------------------------------------
shuffle    | false          | true        | both scripts read batch i as rows i*64..i*64+63 of the
           |                |             | stored split every epoch; the paper says nothing
drop_last  | true           | false       | nb_batch = len // batch_size (52 of 3339/64 fully);
           |                |             | weak appends the 178 background-only videos last,
           |                |             | so the last 61 are never trained on (3517 - 54*64)
torch_seed | drawn          | seed (3344) | the scripts call random.seed(3344) only, torch is
           |                |             | unseeded: a fresh seed is drawn and recorded in the
           |                |             | checkpoint (``seed``); train.seed set = that seed
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ._authors import AuthorsStateDict
from ._avga import AudioGuidedVisualAttention, AudioTerm, bilstm
from ._registry import Head, Reported, Schedule, authors_head, register_head


@register_head("avel")
class AVEL(Head):
    @dataclass(frozen=True)
    class Config:
        att_hidden: int = 512  # AVGA projection width of audio and visual (Sec. 3.2; code hidden_size=512)
        att_dim: int = 49  # AVGA scoring-MLP width (code: affine_v/affine_g to 49 = 7x7 positions)
        audio_term: AudioTerm = "position"  # AVGA: position (code; H*W = att_dim) | broadcast (paper's Eq.)
        lstm_hidden: int = 128  # per-direction Bi-LSTM units (code hidden_dim=128; fused 4*128)
        fc_hidden: int = 64  # width of the first fusion FC (code L1: 4*hidden -> 64)

    # The released scripts check val every 5 epochs (from 0); the weak script never updates
    # best_val_acc, so it keeps the last check: we follow the evident intent, the best one.
    SELECTION = {s: Schedule("val", every=5, source="YapengTian/AVE-ECCV18 (supervised_main.py, weak_supervised_main.py): val, epoch % 5 == 0")
                 for s in ("fully", "weak")}
    # Both scripts call random.seed(3344) only: no torch (nor numpy) seed, and the random module
    # is never used afterwards, so init and dropout are unseeded (torch_seed: drawn, recorded).
    SEEDS = {"fully": 3344, "weak": 3344}
    REPORTED = {"fully": Reported(72.7, "VSCG Table I / CACE-Net Table 5 (AVEL, audio-guided attention)"),
                "weak": Reported(66.7, "PSP Table 4 / CMBS Table 2 / VSCG Table I")}
    # Both scripts walk the train split in its stored order, whole batches only
    # (``for i in range(nb_batch)`` with ``nb_batch = len // batch_size``): no shuffling, the last
    # partial batch dropped; torch is never seeded. train.recipe: (authors, paper) values.
    SWITCHES = {s: {"shuffle": (False, True), "drop_last": (True, False),
                    "torch_seed": ("drawn", "seed")} for s in ("fully", "weak")}
    TRAIN_DEFAULTS = {
        # supervised_main.py: Adam 1e-3, batch 64, 300 epochs, StepLR(step_size=15000 iterations,
        # gamma=0.1) stepped per batch: a periodic decay every 15000 / (3339 // 64 = 52) = 288.5
        # epochs, rounded to 288 (iteration 15000 is batch 24 of 52 in epoch 288); within 300
        # epochs it decays once, at 288.
        "fully": {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "batch_size": 64,
                  "epochs": 300, "lr_step": 288, "lr_milestones": [], "lr_gamma": 0.1,
                  "clip_grad": 0.0},
        # weak_supervised_main.py: Adam 1e-3, batch 64, 250 epochs, the same 15000-iteration
        # StepLR: with the 178 extra background videos, 15000 / (3517 // 64 = 54) = 277.8 -> every
        # 278 epochs, never reached in 250 (constant lr unless epochs is raised).
        "weak": {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "batch_size": 64,
                 "epochs": 250, "lr_step": 278, "lr_milestones": [], "lr_gamma": 0.1,
                 "clip_grad": 0.0},
    }

    def __init__(self, cfg: Config, visual_dim: int, audio_dim: int, num_classes: int,
                 setting: str = "fully"):
        super().__init__(cfg, visual_dim, audio_dim, num_classes, setting)
        self.attention = AudioGuidedVisualAttention(visual_dim, audio_dim, cfg.att_hidden, cfg.att_dim,
                                                    cfg.audio_term)
        self.lstm_audio = bilstm(audio_dim, cfg.lstm_hidden)
        self.lstm_video = bilstm(visual_dim, cfg.lstm_hidden)
        self.L1 = nn.Linear(4 * cfg.lstm_hidden, cfg.fc_hidden)
        self.L2 = nn.Linear(cfg.fc_hidden, num_classes + 1)
        for layer in (self.L1, self.L2):
            nn.init.xavier_uniform_(layer.weight)

    def forward(self, visual: torch.Tensor, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        attended, alpha = self.attention(visual, audio)
        lstm_a, _ = self.lstm_audio(audio)
        lstm_v, _ = self.lstm_video(attended)
        fused = F.relu(torch.cat([lstm_a, lstm_v], dim=-1))
        logits = self.L2(F.relu(self.L1(fused)))  # (B, T, C+1)
        out = {"logits": logits, "attention": alpha}
        if self.setting == "weak":
            out["video_prob"] = F.softmax(logits.max(dim=1).values, dim=-1)  # MIL max-pooling
        return out

    def loss(self, out: dict[str, torch.Tensor], batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        if self.setting == "fully":
            loss = F.multilabel_soft_margin_loss(F.softmax(out["logits"], dim=-1), batch["labels"].float())
        else:
            loss = F.multilabel_soft_margin_loss(out["video_prob"], batch["weak"].float())
        return loss, {"loss": float(loss.detach())}

    def predict(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        return out["logits"].argmax(dim=-1)

    @classmethod
    def from_authors_state_dict(cls, state_dict: dict[str, torch.Tensor], setting: str = "fully",
                                **overrides: Any) -> "AVEL":
        """``att_Net`` of ``models.py`` (fully) or ``models_weakly.py`` (weak): one key layout."""
        sd = AuthorsStateDict(state_dict, f"avel ({setting})")
        dims = {"visual_dim": sd.dim("affine_video.weight", 1), "audio_dim": sd.dim("affine_audio.weight", 1),
                "num_classes": sd.dim("L2.weight", 0) - 1}
        widths = {"att_hidden": sd.dim("affine_audio.weight", 0), "att_dim": sd.dim("affine_v.weight", 0),
                  "lstm_hidden": sd.dim("lstm_audio.weight_hh_l0", 1), "fc_hidden": sd.dim("L1.weight", 0)}
        head = authors_head(cls, setting, dims, widths, overrides, sd.what)
        renames = {"attention": "", "lstm_audio": "lstm_audio", "lstm_video": "lstm_video",
                   "L1": "L1", "L2": "L2"}
        return sd.load_into(head, renames)
