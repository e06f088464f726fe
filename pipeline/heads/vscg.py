"""VSCG: Jiang, Yin, Dang, "Leveraging the Video-level Semantic Consistency of Event for
Audio-visual Event Localization" (IEEE TMM 2023).

Pipeline (Fig. 3): AGVA -> Bi-LSTMs -> PSP (segment-level encoding, Sec. III-C) -> ESCM
(Sec. III-D): CERE, two 1D-conv blocks shared by audio and visual (Eqs. 1-3), gives video-level
event vectors ``E^a, E^v`` ``(2, d_e)``; ISCE uses them as the initial hidden state of one
bidirectional GRU per modality (Eqs. 4-11) -> project-and-norm blocks and late fusion
(Eqs. 12-13) -> classifier. The computation is that of the authors' code (Bravo5542/VSCG,
``vscgfully_model.py`` / ``vscgweakly_model.py``), which differs between the settings:

* fully (as the paper): audio through ``fa``, attended visual through ``fv`` (as PSP fully), PSP
  with ``W_3``; ISCE initialises both GRUs with ``E^av = (E^a + E^v) / 2`` (Eq. 9); Eq. 12 project
  (Linear + ReLU + dropout ``r_i``) + shared LayerNorm (Eq. 13); event-relevance score ``o_t``
  (Eq. 14) and video-level category ``o_c`` from the max-pooled fusion (Eq. 15); the negative
  pair filter loss (Eqs. 16-18); inference ``o_t > tau_b`` -> ``argmax o_c`` else background.
* weak (the authors' weak code, not Eq. 9/12; ``isce_weak: paper`` gives Eqs. 9 and 12): raw
  audio and one ``linear_v`` (as PSP weak); each GRU starts from a linear map (d_e -> d_e) of the
  *other* modality's CERE vector; GRU outputs get dropout ``r_i`` and LayerNorm without the Eq. 12
  projection; PSP without the second l1-normalisation; PSP's weighting-branch classifier with the
  code's ``sigmoid(relu(.))`` and the smooth loss (Eqs. 19-21).

The attention, PSP and weighting-branch blocks are those of :mod:`.psp`.
:meth:`VSCG.from_authors_state_dict` reads ``vscg_net.state_dict()`` of either file (the released
``VSCG_fully.pt`` / ``VSCG_weakly.pt`` are pickled whole modules: save their ``state_dict()``);
layers no output depends on (fully: ``linear_v``, ``v_classify``, ``a_classify``, ``L1``, ``L2``,
``audio_gated``, ``video_gated``, ``escm.L1``; weak: ``W1``, ``W2``, ``L3``, ``escm.layer_norm1``,
``escm.a_fc``, ``escm.v_fc``) are checked and dropped. The outputs match ``(is_event_scores,
event_scores, cross_att)`` (fully) and ``(video_prob, logits)`` (weak).

component            | authors' code                 | paper                | default here | option
---------------------+-------------------------------+----------------------+--------------+-----------------------
AGVA audio term      | per position                  | broadcast (AVEL Eq.) | code         | audio_term: broadcast
fully stream order   | lstm_a_v(v, a): names swapped | audio LSTM on audio  | paper        | -
fully ISCE dropout   | 0.1                           | r_i = 0.2            | code         | r_i_fully: 0.2
weak ISCE            | linear cross h0, no Eq. 12    | E^av h0, Eq. 12      | code         | isce_weak: paper
weak PSP 2nd l1-norm | absent                        | PSP's Eq. 2          | code         | renormalize_weak: true
weak weighting       | sigmoid(relu(.))              | PSP's Eq. 5          | code         | weight_relu: false
weak target          | prob_label (segment shares)   | video label          | code         | weak_target: video

Training-side switches (``train.recipe``: authors | paper; ``train.<switch>`` overrides one):

switch              | authors     | paper         | why
--------------------+-------------+---------------+------------------------------------------------
avps_target (fully) | buffer      | indicator     | the loader is PSP's ``AVE_Fully_Dataset``: its
                    |             |               | target buffer is never reset (psp.AVPSBuffer);
                    |             |               | Eq. 16 uses the segment labels ``y_tl``
video_class (fully) | max_index   | most_frequent | ``fully_supervised_main.py``: the largest class
                    |             |               | index present (``.max(-1)`` twice), class 0 for
                    |             |               | a video without an event; paper: o_c's class,
                    |             |               | such a video (undefined) left out of ``L_c``
drop_last           | true        | false         | both scripts: nb_batch = len // batch_size
shuffle_scope (weak)| first_batch | epoch         | PSP's ``AVE_Weakly_Dataset.get_batch``: batch 0
                    |             |               | shuffled, batches 1..n-1 the stored rows
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from ._authors import AuthorsStateDict
from ._avga import AudioTerm, bilstm
from ._cmbs_blocks import video_event_class
from ._registry import Reported, Schedule, authors_head, event_class_probabilities, register_head
from .psp import (CLASSIFY_UNUSED, PositiveSamplePropagation, PSPEncoderHead, WeakTarget,
                  WeightedMILClassifier, avps_loss, encoder_layout, weak_bce_target)

IsceWeak = Literal["code", "paper"]  # the `isce_weak` hyperparameter


class CERE(nn.Module):
    """Eqs. 1-3: ``E = MAX(relu(K2 * MAX(relu(K1 * f^T))))`` along time; ``(B,T,D) -> (2, B, d_e)``.

    Kernel size ``T/2`` (5), padding keeps the length, max pooling 2/2 after each block
    (code), so T=10 gives the 2 time steps that initialise the two GRU directions.
    """

    def __init__(self, dim: int, out_dim: int, kernel: int):
        super().__init__()
        self.conv1 = nn.Conv1d(dim, out_dim, kernel, padding=kernel // 2)
        self.conv2 = nn.Conv1d(out_dim, out_dim, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = F.max_pool1d(F.relu(self.conv1(x.transpose(1, 2))), 2, 2)
        e = F.max_pool1d(F.relu(self.conv2(e)), 2, 2)  # (B, d_e, T // 4)
        if e.shape[-1] != 2:
            raise ValueError(f"CERE needs T with T // 4 == 2 (one step per GRU direction); got T={x.shape[1]}")
        return e.permute(2, 0, 1).contiguous()


def negative_pair_filter_loss(is_event: torch.Tensor, event_logits: torch.Tensor, v: torch.Tensor,
                              a: torch.Tensor, labels: torch.Tensor, num_classes: int,
                              avps_weight: float = 1.0, video_class: str = "most_frequent",
                              avps_target: torch.Tensor | None = None
                              ) -> tuple[torch.Tensor, dict[str, float]]:
    """Eqs. 16-18: ``L_c + L_t + L_avps``.

    ``is_event`` ``(B, T)`` logits ``o_t``; ``event_logits`` ``(B, C)`` video-level ``o_c`` (Eq. 15);
    ``v, a`` ``(B, T, D)``; ``labels`` ``(B, T, C+1)`` one-hot. ``L_c``: cross-entropy of ``o_c``
    against the video's event category (Eq. 17 writes it per segment, but ``o_c`` is one vector
    per video; the code uses the video class): ``video_class`` ``max_index`` is the code's rule
    (the largest class index present; class 0 for a video without an event), ``most_frequent``
    the class of most segments, with videos without any event left out of ``L_c`` (the paper
    leaves them undefined). ``L_t``: BCE of ``sigmoid(o_t)`` against the segment's event
    indicator (Eq. 18). ``L_avps``: PSP's AVPS loss on ``v, a`` (Eq. 16; see
    :func:`.psp.avps_loss`; ``avps_target``: the authors' buffer, when given).
    """
    foreground = labels[..., :num_classes]
    is_fg = (foreground.sum(-1) > 0).to(is_event.dtype)  # y_t
    target = video_event_class(labels, video_class)
    if video_class == "most_frequent":
        target = torch.where(is_fg.sum(1) > 0, target, torch.full_like(target, -100))
    l_c = (F.cross_entropy(event_logits, target, ignore_index=-100) if (target >= 0).any()
           else event_logits.sum() * 0.0)
    l_t = F.binary_cross_entropy_with_logits(is_event, is_fg)
    l_avps = avps_loss(v, a, labels, num_classes, avps_target)
    loss = l_c + l_t + avps_weight * l_avps
    return loss, {"loss": float(loss.detach()), "l_c": float(l_c.detach()), "l_t": float(l_t.detach()),
                  "l_avps": float(l_avps.detach())}


def smooth_loss(video_prob: torch.Tensor, target: torch.Tensor,
                lam: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Eqs. 19-21: ``lam * BCE(O, Y) + BCE(softmax(O), Y)`` for video probabilities ``O`` ``(B, C+1)``."""
    l_bce = F.binary_cross_entropy(video_prob, target)
    l_s = F.binary_cross_entropy(F.softmax(video_prob, dim=-1), target)
    loss = lam * l_bce + l_s
    return loss, {"loss": float(loss.detach()), "l_bce": float(l_bce.detach()), "l_s_bce": float(l_s.detach())}


@register_head("vscg")
class VSCG(PSPEncoderHead):
    @dataclass(frozen=True)
    class Config:
        att_hidden: int = 512  # AGVA projection width (Sec. III-C uses AGVA [3]; code hidden_size=512)
        att_dim: int = 49  # AGVA scoring-MLP width (code map_size=49 = 7x7 positions)
        audio_term: AudioTerm = "position"  # AGVA: position (code; H*W = att_dim) | broadcast (AVEL's Eq.)
        embed_hidden: int = 256  # fully: fa/fv first layer width (code, as PSP)
        embed_dim: int = 128  # LSTM input width (code)
        lstm_hidden: int = 128  # per-direction Bi-LSTM units, d_s = 256 (Sec. III-C; code)
        psp_hidden: int = 256  # d_h of PSP's W_1 (code)
        psp_tau: float = 0.099  # PSP threshold (authors' code passes thr_val=0.099 in both settings)
        psp_dropout_fully: float = 0.2  # dropout of PSP's branch projections, fully (code p=0.2)
        psp_dropout_weak: float = 0.1  # dropout of PSP's branch projections, weak (code p=0.1)
        r_s: float = 0.2  # dropout of the project-and-norm blocks after PSP (Sec. III-C, IV-A: r_s=0.2)
        r_i_fully: float = 0.1  # dropout after ISCE, Eq. 12, fully (code ESCM p=0.1; Sec. IV-A: 0.2)
        r_i_weak: float = 0.5  # dropout after ISCE, weak (Sec. IV-A: 0.5; code 0.5)
        isce_weak: IsceWeak = "code"  # weak ISCE: code (cross-modal linear GRU init, no Eq. 12) | paper (Eqs. 9, 12)
        renormalize_weak: bool = False  # weak: PSP's second l1-norm of Eq. 2 (code: false; paper: true)
        weak_target: WeakTarget = "shares"  # weak BCE target: shares (code's prob_label) | video (label, l1)
        weight_relu: bool = True  # weak: PSP Eq. 5 phi = sigmoid(relu(.)) (code: true) | sigmoid(.) (paper)
        cere_dim: int = 128  # d_e: CERE output channels, GRU hidden, d_i = 2 d_e (Sec. III-D; code)
        cere_kernel: int = 5  # CERE kernel size T/2 (Eq. 3)
        fuse_dim: int = 256  # d_f of Eq. 12 (fully; code 256)
        fc_hidden: int = 64  # weak classifier first FC (PSP weighting branch; code 64)
        event_threshold: float = 0.7  # tau_b: o_t > tau_b is an event (Sec. III-E: 0.7)
        avps_weight: float = 1.0  # weight of L_avps in Eq. 18 (Table V: L_c + L_t + L_avps)
        smooth_lambda: float = 2.0  # lambda of Eq. 19 (Sec. IV-A: 2)
    SELECTION = {
        "fully": Schedule("test", every=5, skip_first=True, later_wins_ties=True,
                          source="Bravo5542/VSCG (fully_supervised_main.py): test, "
                                 "epoch % 5 == 0, epoch > 0"),
        "weak": Schedule("test", after=50, later_wins_ties=True,
                         source="Bravo5542/VSCG (weakly_supervised_main.py): test, every epoch > 50"),
    }
    SEEDS = {"fully": 123, "weak": 123}  # both scripts: seed 123
    SWITCHES = {"fully": {"avps_target": ("buffer", "indicator"),
                          "video_class": ("max_index", "most_frequent"), "drop_last": (True, False)},
                "weak": {"shuffle_scope": ("first_batch", "epoch"), "drop_last": (True, False)}}
    REPORTED = {"fully": Reported(79.7, "VSCG Table I"), "weak": Reported(74.8, "VSCG Table I")}
    REPORTED_PARAMS_M, REPORTED_PARAMS_SOURCE = 2.6, "VSCG Table II"
    TRAIN_DEFAULTS = {
        # Sec. IV-A: Adam, batch 128; fully_supervised_main.py: lr 1e-3, 300 epochs, lr *= 0.8 at
        # epochs 60, 120 and 240.
        "fully": {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "batch_size": 128,
                  "epochs": 300, "lr_step": 0, "lr_milestones": [60, 120, 240], "lr_gamma": 0.8,
                  "clip_grad": 0.0},
        # weakly_supervised_main.py: lr 1e-3, 300 epochs, lr *= 0.8 at epochs 80, 180 and 240.
        "weak": {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "batch_size": 128,
                 "epochs": 300, "lr_step": 0, "lr_milestones": [80, 180, 240], "lr_gamma": 0.8,
                 "clip_grad": 0.0},
    }

    @classmethod
    def prediction_rule(cls, setting, hparams):
        if setting == "fully":
            return (f"is_event: a segment whose event score passes event_threshold "
                    f"({hparams.get('event_threshold', cls.DEFAULTS['event_threshold'])}) takes the "
                    f"video's top event class; every other segment is background")
        return None

    def __init__(self, cfg: Config, visual_dim: int, audio_dim: int, num_classes: int,
                 setting: str = "fully"):
        super().__init__(cfg, visual_dim, audio_dim, num_classes, setting)
        self.paper_isce = setting == "fully" or cfg.isce_weak == "paper"  # Eqs. 9 and 12
        d_s, d_i = 2 * cfg.lstm_hidden, 2 * cfg.cere_dim
        self._build_encoder()
        fully = setting == "fully"
        self.psp = PositiveSamplePropagation(d_s, cfg.psp_hidden, cfg.psp_tau,
                                             cfg.psp_dropout_fully if fully else cfg.psp_dropout_weak,
                                             project=True, project_dropout=cfg.r_s,
                                             renormalize=fully or cfg.renormalize_weak)
        if self.paper_isce:
            self.a_W1 = nn.Linear(d_i, cfg.fuse_dim, bias=False)  # Eq. 12
            self.v_W1 = nn.Linear(d_i, cfg.fuse_dim, bias=False)
            nn.init.xavier_uniform_(self.a_W1.weight)
            nn.init.xavier_uniform_(self.v_W1.weight)
            out_dim = cfg.fuse_dim
        else:
            self.a_init = nn.Linear(cfg.cere_dim, cfg.cere_dim, bias=False)  # code ESCM.L1 (weak only)
            self.v_init = nn.Linear(cfg.cere_dim, cfg.cere_dim, bias=False)  # code ESCM.L2 (weak only)
            nn.init.xavier_uniform_(self.a_init.weight)
            nn.init.xavier_uniform_(self.v_init.weight)
            out_dim = d_i
        self.isce_dropout = nn.Dropout(cfg.r_i_fully if fully else cfg.r_i_weak)
        self.layer_norm = nn.LayerNorm(out_dim, eps=1e-6)  # Eq. 13, shared (code)
        if fully:
            self.W3 = nn.Linear(cfg.fuse_dim, 1)  # Eq. 14: event-relevance score o_t
            self.W4 = nn.Linear(cfg.fuse_dim, num_classes)  # Eq. 15: event category o_c
            nn.init.xavier_uniform_(self.W3.weight)
            nn.init.xavier_uniform_(self.W4.weight)
        else:
            self.classifier = WeightedMILClassifier(out_dim, cfg.fc_hidden, num_classes + 1, cfg.weight_relu)
        self.lstm_video = bilstm(cfg.embed_dim, cfg.lstm_hidden)
        self.cere = CERE(d_s, cfg.cere_dim, cfg.cere_kernel)  # shared by audio and visual (Sec. III-D1)
        self.a_gru = nn.GRU(d_s, cfg.cere_dim, num_layers=1, batch_first=True, bidirectional=True)
        self.v_gru = nn.GRU(d_s, cfg.cere_dim, num_layers=1, batch_first=True, bidirectional=True)

    def forward(self, visual: torch.Tensor, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        alpha, psp = self._encode(visual, audio)
        a_seg, v_seg = psp["a_psp"], psp["v_psp"]  # A^seg, V^seg
        e_a, e_v = self.cere(a_seg), self.cere(v_seg)  # Eqs. 1-2, (2, B, d_e)
        if self.paper_isce:
            h0_a = h0_v = 0.5 * (e_a + e_v)  # Eqs. 9-11: E^av
        else:
            h0_a, h0_v = self.v_init(e_v), self.a_init(e_a)  # authors' weak code
        a_isce, _ = self.a_gru(a_seg, h0_a)
        v_isce, _ = self.v_gru(v_seg, h0_v)
        if self.paper_isce:
            a_isce, v_isce = F.relu(self.a_W1(a_isce)), F.relu(self.v_W1(v_isce))  # Eq. 12
        f_a = self.layer_norm(self.isce_dropout(a_isce))  # Eq. 13
        f_v = self.layer_norm(self.isce_dropout(v_isce))
        fusion = 0.5 * (f_a + f_v)
        out = {"attention": alpha, "gamma_va": psp["gamma_va"], "gamma_av": psp["gamma_av"]}
        if self.setting == "fully":
            out["is_event"] = self.W3(fusion).squeeze(-1)  # (B, T) o_t logits
            out["event_logits"] = self.W4(fusion.max(dim=1).values)  # (B, C) o_c
            out["v_final"], out["a_final"] = f_v, f_a
        else:
            out["logits"], out["video_prob"] = self.classifier(fusion)
        return out

    def loss(self, out: dict[str, torch.Tensor], batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        if self.setting == "fully":
            # AVPS on the fused-branch features, as the code (Eq. 16 names V^ISCE, A^ISCE).
            return negative_pair_filter_loss(out["is_event"], out["event_logits"], out["v_final"],
                                             out["a_final"], batch["labels"].float(), self.num_classes,
                                             self.cfg.avps_weight, batch.get("video_class", "most_frequent"),
                                             batch.get("avps_target"))
        return smooth_loss(out["video_prob"], weak_bce_target(batch, self.cfg.weak_target), self.cfg.smooth_lambda)

    def predict(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.setting == "fully":
            event = out["event_logits"].argmax(-1, keepdim=True).expand_as(out["is_event"])
            background = torch.full_like(event, self.num_classes)
            return torch.where(torch.sigmoid(out["is_event"]) > self.cfg.event_threshold, event, background)
        return out["logits"].argmax(dim=-1)

    @classmethod
    def from_authors_state_dict(cls, state_dict: dict[str, torch.Tensor], setting: str = "fully",
                                **overrides: Any) -> "VSCG":
        """``vscg_net`` of ``vscgfully_model.py`` (fully) or ``vscgweakly_model.py`` (weak)."""
        sd = AuthorsStateDict(state_dict, f"vscg ({setting})")
        dims, widths, renames = encoder_layout(sd, setting, swap_streams=setting == "fully")
        widths.update(cere_dim=sd.dim("escm.conv1.0.weight", 0), cere_kernel=sd.dim("escm.conv1.0.weight", 2))
        renames.update({"cere.conv1": "escm.conv1.0", "cere.conv2": "escm.conv2.0",
                        "layer_norm": "escm.layer_norm"})
        d_s, d_e = 2 * widths["lstm_hidden"], widths["cere_dim"]
        if setting == "fully":
            dims["num_classes"] = sd.dim("L4.weight", 0)
            widths["fuse_dim"] = sd.dim("escm.a_fc.weight", 0)
            # the audio stream runs through the authors' v_gru and a_fc (see encoder_layout)
            renames.update(a_gru="escm.v_gru", v_gru="escm.a_gru", a_W1="escm.a_fc", v_W1="escm.v_fc",
                           W3="L3", W4="L4")
            unused = {"linear_v.weight": (dims["audio_dim"], dims["visual_dim"]),
                      "linear_v.bias": (dims["audio_dim"],), **CLASSIFY_UNUSED,
                      "L1.weight": (64, d_s), "L2.weight": (dims["num_classes"] + 1, 64),
                      **{f"{m}_gated.0.{p}": shape for m in ("audio", "video")
                         for p, shape in (("weight", (1, 256)), ("bias", (1,)))},
                      "escm.L1.weight": (10, 9)}
        else:
            dims["num_classes"] = sd.dim("L2.weight", 0) - 1
            widths["fc_hidden"] = sd.dim("L1.weight", 0)
            renames.update({"a_gru": "escm.a_gru", "v_gru": "escm.v_gru", "a_init": "escm.L1",
                            "v_init": "escm.L2", "classifier.W4": "L1", "classifier.W5": "L2",
                            "classifier.W6": "W3"})
            unused = {"W1.weight": (1, d_s), "W2.weight": (1, 64), "L3.weight": (64, widths["lstm_hidden"]),
                      "escm.layer_norm1.weight": (d_e,), "escm.layer_norm1.bias": (d_e,),
                      "escm.a_fc.weight": (256, d_s), "escm.v_fc.weight": (256, d_s)}
        head = authors_head(cls, setting, dims, widths, overrides, sd.what)
        return sd.load_into(head, renames, unused)

    def probabilities(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.setting == "fully":
            return event_class_probabilities(out["is_event"], out["event_logits"])
        return super().probabilities(out)
