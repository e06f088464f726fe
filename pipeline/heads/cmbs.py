"""CMBS: Xia & Zhao, CVPR 2022, "Cross-modal Background Suppression for Audio-Visual Event
Localization" (authors' code: marmot-xy/CMBS, ``model/main_model.py``, ``supv_main.py``,
``weakly_main.py``).

Pipeline (Fig. 2): input FC + ReLU on the visual maps (authors' code, to adapt VGG/ResNet
widths), cross-modal gated attention (CMGA, Sec. 3.3), [fully: Bi-LSTMs, authors' code], temporal
self-attention, time-level background suppression (TBS, Sec. 3.4), class activation sequences
(CAS) and event-level background suppression (EBS, Sec. 3.5), cross-modal attention and the AV
interaction module (Sec. 3.6). ``variant`` chooses between the computation of the authors' code
(``"code"``, the default: it produced the published numbers) and the equations as printed
(``"paper"``); the table below lists where they differ.

* fully: relevance ``W_ot F_o`` per segment (a sigmoid, Eq. 6's softmax over one logit being
  constant), class ``W_oc maxpool(F_o)`` over C classes with the event-level branch; a segment
  with relevance > 0.5 takes the video's class, others are background.
* weak: scores over C+1 classes from ``F_o`` (Eq. 10), event-level suppression, the time-level
  AV gate and max pooling over time (MIL) give the video prediction.

:meth:`CMBS.from_authors_state_dict` reads the authors' checkpoints (``torch.save`` of their
``supv_main_model`` / ``weak_main_model``, with or without the ``module.`` of DataParallel).

========================  ============================  ==========================  =========  ============
component                 authors' code                 paper                       default    option
========================  ============================  ==========================  =========  ============
CMGA (Eq. 1-2)            ``v_a + beta*sig(v_g)*v_a``   two-branch Eq. 2            code       (none)
cross-modal attn query    features before self-attn     suppressed ``V_s, A_s``     code       variant=paper
TBS acts on               cross-attention outputs       ``V_s, A_s`` (Eq. 3-4)      code       variant=paper
TBS form, fully           ``x + alpha*g*x``, alpha 0.1  ``(1-alpha)x + alpha*g*x``  code       variant=paper
TBS gate, weak            own modality's, convex        other modality's            code       variant=paper
AV gate ``g_av``, weak    ``(g_v + g_a) / 2``           ``g_v * g_a``               code       variant=paper
EBS, fully (Eq. 5, 8)     ``y + gamma*av_score``        ``sig`` gates, Eq. 8        code       variant=paper
EBS, weak (Eq. 5, 11)     ``gamma*(sig(S_V)+sig(S_A))   top-K gates, Eq. 11,        code       variant=paper
                          *S``, top-K mean, then gate   gate, then max over time
loss, fully (Eq. 9)       + CE(av_score); BCEWithLogits BCE(g_av)                   code       variant=paper
                          on the sigmoided ``g_av``
loss, weak                MultiLabelSoftMargin on       softmax + CE                code       variant=paper
                          softmax outputs
weak inference            video class, every segment    MIL (not specified)         code       weak_predict
alpha / beta / gamma      0.1/0.4/0.3; weak 0.2/0.5/0.5 alpha 0.2 best (Table 4)    code       alpha=...
weak recipe               lr 6e-4, decay 10, 20, 40     lr 7e-4, decay 10, 20, 30   code       train params
precision                 float64 (``model.double()``)  (not specified)             float32    (none)
========================  ============================  ==========================  =========  ============

Training-side switches (``train.recipe``: authors | paper; ``train.<switch>`` overrides one):

switch              | authors   | paper         | why
--------------------+-----------+---------------+----------------------------------------------
video_class (fully) | max_index | most_frequent | ``supv_main.py``: ``labels_foreground.max(-1)``
                    |           |               | then ``.max(-1)``: the largest class index of
                    |           |               | the video; differs on two-class videos only
(none, weak)        |           |               | ``weakly_main.py`` trains on the video labels:
                    |           |               | no class rule; its DataLoader shuffles each
                    |           |               | epoch and keeps the last batch, as ours
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch
from torch import nn
from torch.nn import functional as F

from ._authors import AuthorsStateDict
from ._cmbs_blocks import (CMGA, CMGA_KEYS, CMGA_UNUSED, CMBSTrunk, authors_trunk_sizes, av_score,
                           class_topk_mean, event_suppress, fully_loss, localize, trunk_keys,
                           trunk_unused_keys)
from ._registry import (RELEVANCE_RULE, Head, Reported, Schedule, authors_head,
                        event_class_probabilities, register_head)

Variant = Literal["code", "paper"]  # the `variant` hyperparameter


@register_head("cmbs")
class CMBS(Head):
    @dataclass(frozen=True)
    class Config:
        variant: Variant = "code"  # "code": the authors' computation (table in the module docstring) |
        # "paper": the equations as printed (Eq. 3-4, 8-12)
        visual_fc_dim: int = 512  # input FC width for the visual maps (authors' code video_fc_dim=512)
        input_dropout: Optional[float] = None  # dropout after the input FC; None = per setting
        cmga_hidden: int = 256  # hidden width of the CMGA attentions (Eq. 1; authors' code 256)
        d_model: int = 256  # d_h, hidden size of all temporal modules (authors' main.json/weak.json)
        heads: int = 4  # heads of self- and cross-modal attention (authors' code nhead=4)
        top_k: int = 4  # K of the class-wise top-K mean, Eq. 5 ("commonly set to 4"; code 4)
        beta: Optional[float] = None  # CMGA residual gate, Eq. 2; None = per setting (SETTING_DEFAULTS)
        alpha: Optional[float] = None  # TBS suppression weight, Eq. 3-4; None = per setting
        gamma: Optional[float] = None  # EBS weight, Eq. 8 / 11; None = per setting
        enc_ff: Optional[int] = None  # feed-forward width of the self-attention layers; None = per setting
        dec_ff: int = 1024  # feed-forward width of the cross-modal attention (authors' code 1024)
        av_heads: Optional[int] = None  # heads of the AV interaction module; None = per setting
        use_rnn: Optional[bool] = None  # Bi-LSTMs before self-attention; None = per setting
        weak_predict: Literal["video", "segment"] = "video"  # weak inference: "video" = the video's class for every segment
        # (authors' weakly_main.py: its sigmoid(gate) > 0.5 test always passes) | "segment" =
        # per-segment argmax of the gated scores (MIL localization of [32]; with variant="code"
        # the scores are a video-level vector times a positive gate, so both agree)
    # Values that differ between the settings (a Config value of None takes these).
    SETTING_DEFAULTS = {
        "fully": {
            "input_dropout": 0.2,  # authors' supv_main_model
            "beta": 0.4,  # authors' configs/main.json (the paper gives no value)
            "alpha": 0.1,  # authors' configs/main.json (Table 4's best, 0.2, is for Eq. 3's form)
            "gamma": 0.3,  # authors' configs/main.json (the paper gives no value)
            "enc_ff": 1024,  # authors' supv_main_model
            "av_heads": 4,  # authors' supv_main_model
            "use_rnn": True,  # authors' supv_main_model (RNNEncoder; not in the paper)
        },
        "weak": {
            "input_dropout": 0.1,  # authors' weak_main_model
            "beta": 0.5,  # authors' configs/weak.json
            "alpha": 0.2,  # authors' configs/weak.json
            "gamma": 0.5,  # authors' configs/weak.json
            "enc_ff": 2048,  # authors' weak_main_model
            "av_heads": 2,  # authors' weak_main_model
            "use_rnn": False,  # authors' weak_main_model has no LSTM
        },
    }
    SELECTION = {s: Schedule("test", source="marmot-xy/CMBS (supv_main.py, weakly_main.py, eval_freq 1): test, every epoch") for s in ("fully", "weak")}
    SEEDS = {"fully": 43, "weak": 666}  # supv_main.py: 43; weakly_main.py: 666
    SWITCHES = {"fully": {"video_class": ("max_index", "most_frequent")}}
    REPORTED = {"fully": Reported(79.3, "CMBS Table 1"), "weak": Reported(74.2, "CMBS Table 2")}
    REPORTED_PARAMS_M, REPORTED_PARAMS_SOURCE = 14.4, "VSCG Table II"
    TRAIN_DEFAULTS = {
        # Sec. 4.1: Adam, lr 7e-4, batch 64, lr halved at epochs 10, 20 and 30 (MultiStepLR in the
        # authors' code), then constant. 200 epochs and clip 0.5 from supv_train.sh /
        # weakly_train.sh. The authors' configs set weight_decay 5e-4 but never pass it to Adam,
        # so it is 0. Weak: weakly_train.sh / weakly_main.py use lr 6e-4, milestones 10, 20, 40.
        "fully": {"optimizer": "adam", "lr": 7e-4, "weight_decay": 0.0, "batch_size": 64,
                  "epochs": 200, "lr_step": 0, "lr_milestones": [10, 20, 30], "lr_gamma": 0.5,
                  "clip_grad": 0.5},
        "weak": {"optimizer": "adam", "lr": 6e-4, "weight_decay": 0.0, "batch_size": 64,
                 "epochs": 200, "lr_step": 0, "lr_milestones": [10, 20, 40], "lr_gamma": 0.5,
                 "clip_grad": 0.5},
    }

    @classmethod
    def prediction_rule(cls, setting, hparams):
        if setting == "fully":
            return RELEVANCE_RULE
        if hparams.get("weak_predict", cls.DEFAULTS["weak_predict"]) == "video":
            return ("weak_predict: video: every segment gets the video's class (the video-level "
                    "prediction), so no segment is predicted background "
                    "(heads.cmbs.weak_predict=segment: per-segment argmax)")
        return None

    def __init__(self, cfg: Config, visual_dim: int, audio_dim: int, num_classes: int,
                 setting: str = "fully"):
        super().__init__(cfg, visual_dim, audio_dim, num_classes, setting)
        d, vd, code = cfg.d_model, cfg.visual_fc_dim, cfg.variant == "code"
        classes = num_classes if setting == "fully" else num_classes + 1  # Sec. 3.5
        self.v_fc = nn.Linear(visual_dim, vd)
        self.dropout = nn.Dropout(cfg.input_dropout)
        self.cmga = CMGA(vd, audio_dim, cfg.cmga_hidden, cfg.beta)
        self.trunk = CMBSTrunk(vd, audio_dim, classes, d_model=d, heads=cfg.heads,
                               av_heads=cfg.av_heads, enc_ff=cfg.enc_ff, dec_ff=cfg.dec_ff,
                               use_rnn=cfg.use_rnn, alpha=cfg.alpha, order=cfg.variant,
                               tbs_form="residual" if code and setting == "fully" else "convex",
                               own_gate=code and setting == "weak")
        if setting == "fully":
            self.relevance = nn.Linear(d, 1)  # W_ot, Eq. 6
            self.classifier = nn.Linear(d, classes)  # W_oc, Eq. 7
        else:
            self.classifier = nn.Linear(d, classes, bias=False)  # W_oc, Eq. 10 (code: Conv1d, no bias)

    def forward(self, visual: torch.Tensor, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        v = self.dropout(F.relu(self.v_fc(visual)))
        out = self.trunk(self.cmga(v, audio), audio)
        if self.setting == "fully":
            out["relevance"] = self.relevance(out["fused"]).squeeze(-1)  # (B, T) logits
            out["gate_av"] = out["gate_v"] * out["gate_a"]
            class_raw = self.classifier(out["fused"].max(1).values)  # Eq. 7
            out.update(self._fully_event_level(class_raw, out["cas_v"], out["cas_a"]))
        else:
            out.update(self._weak_scores(out))
        return out

    def _fully_event_level(self, class_raw: torch.Tensor, cas_v: torch.Tensor,
                           cas_a: torch.Tensor) -> dict[str, torch.Tensor]:
        k, gamma = self.cfg.top_k, self.cfg.gamma
        if self.cfg.variant == "code":
            score = av_score(cas_v, cas_a, k)
            return {"av_score": score, "class_logits": class_raw + gamma * score}
        ebs_v = torch.sigmoid(class_topk_mean(cas_v, k))  # Eq. 5
        ebs_a = torch.sigmoid(class_topk_mean(cas_a, k))
        return {"class_logits": event_suppress(class_raw, ebs_v, ebs_a, gamma)}  # Eq. 8

    def _weak_scores(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        seg, gamma, k = self.classifier(out["fused"]), self.cfg.gamma, self.cfg.top_k  # Eq. 10
        if self.cfg.variant == "code":
            seg = gamma * torch.sigmoid(out["cas_v"]) * seg + gamma * torch.sigmoid(out["cas_a"]) * seg
            video_raw = class_topk_mean(seg, k)  # (B, C+1), before the time-level gate
            gate_av = (out["gate_v"] + out["gate_a"]) / 2
            gated = gate_av.unsqueeze(-1) * video_raw.unsqueeze(1)
        else:
            gate_av = out["gate_v"] * out["gate_a"]
            ebs_v = torch.sigmoid(class_topk_mean(out["cas_v"], k)).unsqueeze(1)  # Eq. 5
            ebs_a = torch.sigmoid(class_topk_mean(out["cas_a"], k)).unsqueeze(1)
            gated = gate_av.unsqueeze(-1) * event_suppress(seg, ebs_v, ebs_a, gamma)  # Eq. 11
            video_raw = gated.max(1).values
        return {"gate_av": gate_av, "segment_logits": gated, "video_raw": video_raw,
                "video_logits": gated.max(1).values}  # Eq. 12

    def loss(self, out: dict[str, torch.Tensor], batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        code = self.cfg.variant == "code"
        if self.setting == "fully":  # Eq. 9 (+ the code's CE on av_score)
            return fully_loss(out["class_logits"], out["relevance"], out["gate_av"], batch["labels"],
                              av_score=out.get("av_score"), gate_on_logits=code,
                              video_class=batch.get("video_class", "most_frequent"))
        if code:  # weakly_main.py: MultiLabelSoftMarginLoss on the softmax output
            loss = F.multilabel_soft_margin_loss(F.softmax(out["video_logits"], -1), batch["weak"])
        else:
            target = batch["weak"] / batch["weak"].sum(-1, keepdim=True).clamp_min(1e-8)
            loss = -(target * F.log_softmax(out["video_logits"], -1)).sum(-1).mean()
        return loss, {"class": loss.item()}

    @torch.no_grad()
    def predict(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.setting == "fully":
            return localize(out["relevance"], out["class_logits"])
        if self.cfg.weak_predict == "segment":
            return out["segment_logits"].argmax(-1)
        t = out["segment_logits"].shape[1]
        return out["video_raw"].argmax(-1, keepdim=True).expand(-1, t)

    @classmethod
    def from_authors_state_dict(cls, state_dict: dict[str, torch.Tensor], setting: str = "fully",
                                **overrides: Any) -> "CMBS":
        """A head with the weights of the authors' ``supv_main_model`` (fully) or
        ``weak_main_model`` (weak) state dict; dimensions from its shapes, ``overrides`` = other
        hyperparameters (heads, alpha, ...; their values are not in a state dict)."""
        sd = AuthorsStateDict(state_dict, f"cmbs ({setting})")
        cas = ("localize_module.event_classifier.weight" if setting == "fully"
               else "CAS_model.classifier.0.weight")
        widths, dims = authors_trunk_sizes(sd, "cmga_hidden")
        dims["num_classes"] = sd.dim(cas, 0) - (1 if setting == "weak" else 0)
        head = authors_head(cls, setting, dims, widths, overrides, sd.what)
        return sd.load_into(head, *head._authors_layout())

    def _authors_layout(self) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
        """Our module prefixes -> the authors', and the keys their forward never reads."""
        fully = self.setting == "fully"
        renames = {"v_fc": "v_fc", "cmga.self_att.norm": "spatial_channel_att.norm",
                   **{"cmga." + o: "spatial_channel_att." + t for o, t in CMGA_KEYS.items()},
                   **trunk_keys(weak=not fully), "relevance": "localize_module.classifier",
                   "classifier": "localize_module.event_classifier" if fully else "CAS_model.classifier.0"}
        d = self.cfg.d_model
        unused = {**trunk_unused_keys(self.trunk), **CMGA_UNUSED}
        if fully:
            unused.update({f"{m}_norm.{p}": (d,) for m in ("video", "audio") for p in ("weight", "bias")})
        else:  # weak_main_model.classifier (its localize head is commented out)
            unused.update({"classifier.weight": (1, d), "classifier.bias": (1,)})
        return renames, unused


    @torch.no_grad()
    def probabilities(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.setting == "fully":
            return event_class_probabilities(out["relevance"], out["class_logits"])
        if self.cfg.weak_predict == "segment":
            return out["segment_logits"].float().softmax(-1)
        t = out["segment_logits"].shape[1]
        return out["video_raw"].float().softmax(-1).unsqueeze(1).expand(-1, t, -1)
