"""CACE-Net: He et al., ACM MM 2024, "CACE-Net: Co-guidance Attention and Contrastive
Enhancement for Effective Audio-Visual Event Localization" (authors' code: Brain-Cog-Lab/CACE-Net,
``CACE/model``, ``CACE/supv_main.py``). Fully supervised only (the only setting the paper defines).

Built on the CMBS fully supervised model (blocks imported from :mod:`._cmbs_blocks`):

* audio-visual co-guidance attention (AVCA, Sec. 3.2): the CMBS audio-guided spatial-channel
  visual vector gated by the global visual signal (Eq. 1-2, beta); the audio is enhanced by a
  visual-guided attention over the temporally self-attended audio (Eq. 3-6, psi);
* the CMBS temporal trunk (Bi-LSTMs, self-attention, TBS, cross-modal attention, AV interaction);
* background-event contrast enhancement (BECE, Sec. 3.3): a one-layer projection of the fused
  feature ``F_av`` and of its Gaussian-noised copy, supervised contrastive loss Eq. 7 within each
  video (positives: event-event pairs and each segment with its own augmented copy), and
  ``F_o = F_av + lambda * F_FT`` (Eq. 8) for the event-relevance classifier (Eq. 10) only;
* class ``W_4 maxpool(F_av)`` (Eq. 11) with CMBS's event-level suppression (CMBS Eq. 8; the
  authors' code keeps the CMBS CAS branch), loss Eq. 12 = CE + mean_t[BCE(rel) + BCE(g_av)]
  + L_contrast, BECE switched on after the first eighth of the epochs (authors' code).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ._cmbs_blocks import (CMGA, CMBSTrunk, SpatialSelfAttention, event_suppress, fully_loss,
                           localize, relevance_targets)
from ._registry import Head, event_class_probabilities, register_head


def bece_loss(query: torch.Tensor, key: torch.Tensor, relevance: torch.Tensor,
              temperature: float) -> torch.Tensor:
    """Supervised contrastive loss of Eq. 7 within each video, averaged over all ``2T`` samples.

    ``query`` / ``key`` ``(B, T, D)``: projected features of the segments and of their augmented
    copies (L2-normalised here); ``relevance`` ``(B, T)`` in {0, 1}. The sample set is
    ``[query; key]`` (2T per video); ``K(i)`` = the other event samples when ``i`` is an event
    (its own copy included), else only its own copy; the denominator runs over ``I \\ {i}``.
    """
    b, t, _ = query.shape
    f = F.normalize(torch.cat([query, key], dim=1), dim=-1)  # (B, 2T, D)
    logits = f @ f.transpose(1, 2) / temperature  # (B, 2T, 2T)
    rel = torch.cat([relevance, relevance], dim=1).bool()  # (B, 2T)
    eye = torch.eye(2 * t, dtype=torch.bool, device=f.device)
    own_copy = eye.roll(t, dims=1)  # i <-> i + T
    positive = ((rel.unsqueeze(2) & rel.unsqueeze(1)) | own_copy) & ~eye  # (B, 2T, 2T)
    neg_inf = torch.finfo(logits.dtype).min
    log_num = logits.masked_fill(~positive, neg_inf).logsumexp(-1)
    log_den = logits.masked_fill(eye, neg_inf).logsumexp(-1)
    return -(log_num - log_den - positive.sum(-1).log()).mean()


class CoGuidedAttention(nn.Module):
    """AVCA: ``(visual (B,T,H,W,D), audio (B,T,A)) -> (visual (B,T,D), audio (B,T,A))``.

    Visual side = CMBS's CMGA (Eq. 1-2, beta). Audio side: temporal self-attention ``a^g`` with
    residual + LayerNorm (Eq. 3-4; residual/norm from the authors' code), query = the spatial
    average of a second spatial self-attention of the visual map projected to the audio width
    (Eq. 5, ``W_v^Q``), ``a~ = softmax(q K^T) V`` and ``a = a + psi * sigmoid(a~) * a`` (Eq. 6).
    The authors' second self-attention shares the first one's LayerNorm; it has its own here.
    """

    def __init__(self, dim: int, audio_dim: int, hidden: int, beta: float, psi: float,
                 dropout: float = 0.2):
        super().__init__()
        self.psi = psi
        self.cmga = CMGA(dim, audio_dim, hidden, beta, dropout)
        self.visual_self = SpatialSelfAttention(dim, dropout=dropout)
        self.audio_q = nn.Linear(audio_dim, audio_dim)  # W^Q, W^K, W^V of Eq. 4
        self.audio_k = nn.Linear(audio_dim, audio_dim)
        self.audio_v = nn.Linear(audio_dim, audio_dim)
        self.audio_norm = nn.LayerNorm(audio_dim)
        self.guide_q = nn.Linear(dim, audio_dim)  # W_v^Q of Eq. 5
        self.guide_k = nn.Linear(audio_dim, audio_dim)  # W_a^K
        self.guide_v = nn.Linear(audio_dim, audio_dim)  # W_a^V
        self.dropout = nn.Dropout(dropout)

    def forward(self, visual: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, h, w, d = visual.shape
        v = self.cmga(visual, audio)
        v_global = self.visual_self(visual.reshape(b * t, h * w, d)).mean(1).reshape(b, t, d)
        att = torch.softmax(self.audio_q(audio) @ self.audio_k(audio).transpose(1, 2), dim=-1)
        a_g = self.audio_norm(audio + self.dropout(att @ self.audio_v(audio)))  # Eq. 3
        att = torch.softmax(self.guide_q(v_global) @ self.guide_k(a_g).transpose(1, 2), dim=-1)
        a_tilde = att @ self.guide_v(a_g)  # Eq. 5
        return v, audio + self.psi * torch.sigmoid(a_tilde) * audio  # Eq. 6


@register_head("cace")
class CACENet(Head):
    settings = ("fully",)
    DEFAULTS = {
        "visual_fc_dim": 512,  # input FC width for the visual maps (authors' code video_fc_dim=512)
        "input_dropout": 0.2,  # dropout after the input FC (authors' code)
        "guide_hidden": 256,  # hidden width d of the guidance attentions (Eq. 1; code 256)
        "beta": 0.4,  # audio-guided visual gate, Eq. 2 (Appendix: "0.4 by default")
        "psi": 0.3,  # visual-guided audio gate, Eq. 6 (Table S2 best; run_supp.sh --psai 0.3)
        "d_model": 256,  # hidden size of the temporal modules (authors' main.json)
        "heads": 4,  # heads of self- and cross-modal attention (authors' code)
        "av_heads": 4,  # heads of the AV interaction module (authors' code)
        "enc_ff": 1024,  # self-attention feed-forward width (authors' code)
        "dec_ff": 512,  # cross-modal attention feed-forward width (authors' code)
        "alpha": 0.1,  # CMBS TBS weight, CMBS Eq. 3-4 (authors' main.json)
        "gamma": 0.3,  # CMBS EBS weight, CMBS Eq. 8 (authors' main.json)
        "top_k": 4,  # CMBS Eq. 5 top-K (authors' code)
        "bece_lambda": 0.6,  # lambda of Eq. 8 (Table 2 best; run_supp.sh --Lambda 0.6)
        "bece_noise_std": 0.1,  # std of the Gaussian-noise augmentation (authors' data_augmentation)
        "bece_temperature": 0.01,  # tau of Eq. 7 (authors' supv_main.py: logits /= 0.01)
        "bece_weight": 1.0,  # weight of L_contrast in Eq. 12 (paper 1; code contras_coeff 1.0)
        "bece_start": 0.125,  # BECE on from epoch >= this fraction of the epochs (code n_epoch/8)
    }
    TRAIN_DEFAULTS = {
        # Sec. 4: Adam, lr 7e-4 halved at epochs 10, 20 and 30 (authors' MultiStepLR), then
        # constant; 200 epochs, batch 64, gradient clipping (0.5 in run_supp.sh). weight_decay
        # 5e-4 is configured by the authors but never passed to Adam, so it is 0.
        "fully": {"optimizer": "adam", "lr": 7e-4, "weight_decay": 0.0, "batch_size": 64,
                  "epochs": 200, "lr_step": 0, "lr_milestones": [10, 20, 30], "lr_gamma": 0.5,
                  "clip_grad": 0.5},
    }

    def __init__(self, visual_dim: int, audio_dim: int, num_classes: int, setting: str = "fully",
                 **hp: Any):
        super().__init__(visual_dim, audio_dim, num_classes, setting)
        self.hp = hp
        d, vd = hp["d_model"], hp["visual_fc_dim"]
        self.v_fc = nn.Linear(visual_dim, vd)
        self.dropout = nn.Dropout(hp["input_dropout"])
        self.guide = CoGuidedAttention(vd, audio_dim, hp["guide_hidden"], hp["beta"], hp["psi"])
        self.trunk = CMBSTrunk(vd, audio_dim, num_classes, d_model=d, heads=hp["heads"],
                               av_heads=hp["av_heads"], enc_ff=hp["enc_ff"], dec_ff=hp["dec_ff"],
                               use_rnn=True, alpha=hp["alpha"], top_k=hp["top_k"])
        self.project = nn.Sequential(nn.Linear(d, d), nn.ReLU())  # one nonlinear layer (Sec. 3.3)
        self.relevance = nn.Linear(d, 1)  # W_3, Eq. 10
        self.classifier = nn.Linear(d, num_classes)  # W_4, Eq. 11
        # Set once a training loss has used BECE; inference uses F_o (Eq. 8) only after that, so a
        # run shorter than the warm-up does not add an untrained projection.
        self.register_buffer("bece_trained", torch.tensor(False))

    def forward(self, visual: torch.Tensor, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        v, a = self.guide(self.dropout(F.relu(self.v_fc(visual))), audio)
        out = self.trunk(v, a)
        fused = out["fused"]  # F_av
        query = self.project(fused)  # F_FT
        noise = torch.randn_like(fused) * self.hp["bece_noise_std"]
        out["bece_query"], out["bece_key"] = query, self.project(fused + noise)
        out["relevance_plain"] = self.relevance(fused).squeeze(-1)  # before BECE is switched on
        out["relevance"] = self.relevance(fused + self.hp["bece_lambda"] * query).squeeze(-1)  # Eq. 8
        class_raw = self.classifier(fused.max(1).values)  # Eq. 11 (logits; softmax in the CE)
        out["class_logits"] = event_suppress(class_raw, out["ebs_v"], out["ebs_a"], self.hp["gamma"])
        return out

    def bece_active(self, batch: dict[str, Any]) -> bool:
        return batch["epoch"] >= self.hp["bece_start"] * batch["epochs"]

    def loss(self, out: dict[str, torch.Tensor], batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        active = self.bece_active(batch)
        rel_logits = out["relevance"] if active else out["relevance_plain"]
        # Eq. 12 without L_contrast: CMBS's CE + BCE(relevance) + BCE(g_av)
        loss, parts = fully_loss(out["class_logits"], rel_logits, out["gate_av"], batch["labels"])
        if active:
            if self.training:
                self.bece_trained.fill_(True)
            l_con = bece_loss(out["bece_query"], out["bece_key"], relevance_targets(batch["labels"]),
                              self.hp["bece_temperature"])
            loss = loss + self.hp["bece_weight"] * l_con
            parts["contrast"] = l_con.item()
        return loss, parts

    @torch.no_grad()
    def predict(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        # Sec. 3.5: o_t = H(y_t - 0.5) * y_c, with BECE on once trained with it (the authors'
        # evaluation sets contrastive_switch = True).
        relevance = out["relevance"] if bool(self.bece_trained) else out["relevance_plain"]
        return localize(relevance, out["class_logits"])

    @torch.no_grad()
    def probabilities(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        relevance = out["relevance"] if bool(self.bece_trained) else out["relevance_plain"]
        return event_class_probabilities(relevance, out["class_logits"])
