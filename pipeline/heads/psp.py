"""PSP: Zhou et al. CVPR 2021, "Positive Sample Propagation along the Audio-Visual Event Line".

Pipeline (Fig. 2): AVGA -> two Bi-LSTMs -> positive sample propagation (Eqs. 1-3) -> fusion
(Eq. 4) -> classifier. Fully supervised: per-segment CE (Eq. 7) + ``lambda`` * AVPS loss
(Eqs. 8-10). Weakly supervised: the weighting branch (Eq. 5) and BCE on the video-level
prediction (Eq. 11). The computation is that of the authors' code (jasongief/PSP_CVPR_2021,
``fully_model.py`` / ``weakly_model.py``), which differs between the settings:

* fully: audio goes through ``fa`` (Ca->256->128, linear, no bias) before AVGA and its LSTM, the
  attended visual vector through ``fv`` (Cv->256->128); PSP ends with ``W_3`` (Eq. 4) + ReLU +
  dropout + LayerNorm;
* weak: raw audio feeds AVGA and its LSTM, the attended visual vector goes through one
  ``linear_v`` (Cv->128, with bias); PSP has no ``W_3`` (LayerNorm of ``v + v_pos`` directly) and
  no second l1-normalisation; the weighting branch is ``sigmoid(relu(f^h W_6))``.

Where the paper's equations leave activations out, the code's are used: ReLU + dropout after each
PSP branch projection (Eqs. 1, 3), ReLU between the two classifier FCs.
:meth:`PSP.from_authors_state_dict` reads ``psp_net.state_dict()`` of either file (the released
``PSP_fully.pt`` / ``PSP_weakly.pt`` are pickled whole modules: save their ``state_dict()``);
their layers that no output depends on (``linear_v`` in fully, ``v_classify``, ``a_classify``,
``L3``, ``L4``; ``temperature``, ``W1``, ``W2`` in weak) are checked and dropped. The outputs match
``(fusion, logits, cosine of v_psp and a_psp)`` (fully) and ``(video_prob, logits)`` (weak).

component             | authors' code                 | paper                | default here | option
----------------------+-------------------------------+----------------------+--------------+-----------------------
AVGA audio term       | per position                  | broadcast (AVEL Eq.) | code         | audio_term: broadcast
Eq. 1 scale           | sqrt(d_h)                     | sqrt(d_l)            | code         | -
Eq. 2 indicator       | beta > tau                    | beta - tau >= 0      | code         | -
Eq. 2 2nd l1-norm     | fully yes, weak no            | both ("again")       | code         | renormalize_weak: true
Eq. 4 W_3 in weak     | absent                        | present              | code         | project_weak: true
Eq. 5 weighting       | sigmoid(relu(f^h W_6))        | sigmoid(f^h W_6)     | code         | weight_relu: false
weak target (Eq. 11)  | prob_label (segment shares)   | Y^weak = mean Y^fully| code         | weak_target: video
threshold tau         | 0.099 fully, 0.095 weak       | 0.095 (Table 3)      | code         | tau_fully, tau_weak

Training-side switches (``train.recipe``: authors | paper; ``train.<switch>`` overrides one):

switch              | authors     | paper     | why
--------------------+-------------+-----------+--------------------------------------------------
avps_target (fully) | buffer      | indicator | ``AVE_Fully_Dataset.get_segment_wise_relation``
                    |             |           | writes into one (batch, 10) buffer allocated once
                    |             |           | and never reset (:class:`AVPSBuffer`); Eqs. 8-9
                    |             |           | define the batch's own event indicator
drop_last           | true        | false     | both scripts: nb_batch = len // batch_size
shuffle_scope (weak)| first_batch | epoch     | ``AVE_Weakly_Dataset.get_batch`` shuffles at batch
                    |             |           | 0 only and maps later ids through the shuffled
                    |             |           | list: batches 1..n-1 are the stored rows
"""
from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from ._authors import AuthorsStateDict
from ._avga import AudioGuidedVisualAttention, AudioTerm, bilstm, segment_targets
from ._registry import Head, Reported, Schedule, authors_head, register_head

_EPS = 1e-8  # the authors' code adds 1e-8 to every l1-normalisation denominator


def l1_normalize(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return x / (x.sum(dim=dim, keepdim=True) + _EPS)


def positive_connections(beta: torch.Tensor, tau: float, renormalize: bool = True) -> torch.Tensor:
    """Eq. 2: ReLU, row-wise l1 normalisation, keep entries ``> tau``, row-wise l1 again
    (``renormalize``; the authors' weak code leaves it out).

    ``beta`` ``(..., T, T)`` raw similarities (Eq. 1). The indicator is the code's ``beta > tau``
    (the paper's ``beta - tau >= 0`` differs only on exact ties).
    """
    beta = l1_normalize(F.relu(beta))
    gamma = beta * (beta > tau).to(beta.dtype)
    return l1_normalize(gamma) if renormalize else gamma


def avps_indicator(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The paper's AVPS target (Eqs. 8-9, ``avps_target: indicator``): each video's event
    indicator (segment not background), l1-normalised; ``(B, T, C+1)`` one-hot -> ``(B, T)``
    (all zeros for a video without an event)."""
    return l1_normalize((labels[..., :num_classes].sum(-1) > 0).float())


class AVPSBuffer:
    """The authors' AVPS target (``avps_target: buffer``): PSP's ``AVE_Fully_Dataset`` (and
    VSCG's copy) allocates one ``(batch_size, T)`` array once and, for each batch, writes only
    the segments of one class per slot (``get_segment_wise_relation``): for the video in slot
    ``i``, ``c`` is the smallest class index it holds (its event class; background only for a
    video without an event) and ``buffer[i, t] = 1 / |{t: y_tc = 1}|`` on the segments of ``c``.
    The other entries of the slot are never reset: they keep the values written for earlier
    videos in that slot (batches of earlier steps and epochs). :meth:`update` applies one batch
    and returns the target of its rows."""

    def __init__(self, batch_size: int, num_segments: int):
        self.buffer = torch.zeros(batch_size, num_segments)

    def update(self, labels: torch.Tensor) -> torch.Tensor:
        """Write the batch's ``labels`` ``(B, T, C+1)`` (B <= batch_size, in slots 0..B-1);
        the batch's target ``(B, T)`` (a copy, on ``labels``' device)."""
        labels = labels.detach().cpu()
        b = len(labels)
        present = labels.sum(1) > 0  # (B, C+1)
        index = torch.arange(labels.shape[-1]).expand_as(present)
        first = torch.where(present, index, labels.shape[-1]).min(-1).values.clamp_max(labels.shape[-1] - 1)
        rows = labels[torch.arange(b), :, first] > 0  # (B, T): segments of that class
        share = 1.0 / rows.sum(1, keepdim=True).clamp_min(1).float()
        self.buffer[:b] = torch.where(rows, share, self.buffer[:b])
        return self.buffer[:b].clone()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"buffer": self.buffer.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.buffer = state["buffer"].clone()


def avps_loss(v: torch.Tensor, a: torch.Tensor, labels: torch.Tensor, num_classes: int,
              target: torch.Tensor | None = None) -> torch.Tensor:
    """Audio-visual pair similarity loss (Eqs. 8-9) for ``v, a`` ``(B, T, D)``, ``labels`` ``(B,T,C+1)``.

    Eq. 8 leaves the per-segment similarity open; as in the authors' code (``AVSimilarity`` +
    ``AVPSLoss``) it is the cosine similarity of ``v_t`` and ``a_t``, ReLU'd and l1-normalised
    over the T segments, computed on the LayerNorm'd outputs of the PSP block. ``target`` is
    ``G`` when given (the training loop passes the authors' :class:`AVPSBuffer` under
    ``avps_target: buffer``); otherwise the paper's :func:`avps_indicator` of ``labels``.
    """
    s = l1_normalize(F.relu(F.cosine_similarity(v, a, dim=-1, eps=1e-12)))
    g = avps_indicator(labels, num_classes) if target is None else target
    return F.mse_loss(s, g.to(s.dtype))


class PositiveSamplePropagation(nn.Module):
    """Eqs. 1-4 on LSTM features ``a, v`` ``(B, T, d_l)``.

    Returns a dict: ``v_psp``, ``a_psp`` (after the LayerNorm), ``fusion`` (Eq. 4) and the
    connection matrices ``gamma_va``, ``gamma_av`` ``(B, T, T)`` (Eq. 2).

    ``W_1`` (similarity, ``d_l -> d_h``) and ``W_2`` (propagated values, ``d_l -> d_l``) are ReLU'd
    and dropped out (code). With ``project`` the outputs pass ``W_3`` + ReLU + dropout before
    the (shared) LayerNorm (Eq. 4, fully-supervised code); without it LayerNorm is applied
    directly (weakly-supervised code). ``renormalize``: Eq. 2's second l1-normalisation.
    In the authors' names (``PSP`` module): ``v_W1`` = ``v_L2``, ``a_W1`` = ``a_L1``,
    ``v_W2`` = ``v_L1``, ``a_W2`` = ``a_L2``, ``v_W3`` = ``v_fc``, ``a_W3`` = ``a_fc``.
    """

    def __init__(self, dim: int, hidden: int, tau: float, branch_dropout: float, project: bool,
                 project_dropout: float = 0.0, renormalize: bool = True):
        super().__init__()
        self.tau, self.hidden, self.renormalize = tau, hidden, renormalize
        self.v_W1 = nn.Linear(dim, hidden, bias=False)
        self.a_W1 = nn.Linear(dim, hidden, bias=False)
        self.v_W2 = nn.Linear(dim, dim, bias=False)
        self.a_W2 = nn.Linear(dim, dim, bias=False)
        layers = [self.v_W1, self.a_W1, self.v_W2, self.a_W2]
        self.project = project
        if project:
            self.v_W3 = nn.Linear(dim, dim, bias=False)
            self.a_W3 = nn.Linear(dim, dim, bias=False)
            layers += [self.v_W3, self.a_W3]
        for layer in layers:
            nn.init.xavier_uniform_(layer.weight)
        self.branch_dropout = nn.Dropout(branch_dropout)
        self.project_dropout = nn.Dropout(project_dropout)
        self.layer_norm = nn.LayerNorm(dim, eps=1e-6)  # one LayerNorm for both modalities (code)

    def _branch(self, layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        return self.branch_dropout(F.relu(layer(x)))

    def forward(self, a: torch.Tensor, v: torch.Tensor) -> dict[str, torch.Tensor]:
        branch = self._branch
        # Eq. 1, scaled by sqrt(d_h) as the code (the paper: sqrt(d_l); both 256 by default)
        beta_va = branch(self.v_W1, v) @ branch(self.a_W1, a).transpose(1, 2) / math.sqrt(self.hidden)
        gamma_va = positive_connections(beta_va, self.tau, self.renormalize)  # rows: visual segments
        gamma_av = positive_connections(beta_va.transpose(1, 2), self.tau, self.renormalize)  # audio
        v_psp = v + gamma_va @ branch(self.a_W2, a)  # Eq. 3
        a_psp = a + gamma_av @ branch(self.v_W2, v)
        if self.project:
            v_psp = self.project_dropout(F.relu(self.v_W3(v_psp)))
            a_psp = self.project_dropout(F.relu(self.a_W3(a_psp)))
        v_psp, a_psp = self.layer_norm(v_psp), self.layer_norm(a_psp)
        return {"v_psp": v_psp, "a_psp": a_psp, "fusion": 0.5 * (v_psp + a_psp),  # Eq. 4
                "gamma_va": gamma_va, "gamma_av": gamma_av}


class WeightedMILClassifier(nn.Module):
    """Eq. 5: ``f^h = relu(f W_4) W_5`` per segment (ReLU from the code), weights
    ``phi = sigmoid(relu(f^h W_6))`` (code; ``weight_relu=False``: ``sigmoid(f^h W_6)``, the
    paper), video prediction ``softmax(mean_t(f^h * phi))``. Authors' names: ``L1``, ``L2``, ``W3``."""

    def __init__(self, dim: int, hidden: int, num_outputs: int, weight_relu: bool = True):
        super().__init__()
        self.weight_relu = weight_relu
        self.W4 = nn.Linear(dim, hidden, bias=False)
        self.W5 = nn.Linear(hidden, num_outputs, bias=False)
        self.W6 = nn.Linear(num_outputs, 1, bias=False)  # default init, as in the code
        nn.init.xavier_uniform_(self.W4.weight)
        nn.init.xavier_uniform_(self.W5.weight)

    def forward(self, fusion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f_h = self.W5(F.relu(self.W4(fusion)))  # (B, T, C+1)
        w = self.W6(f_h)  # (B, T, 1)
        phi = torch.sigmoid(F.relu(w) if self.weight_relu else w)
        scores = f_h * phi
        return scores, F.softmax(scores.mean(dim=1), dim=-1)


def weak_target(weak: torch.Tensor) -> torch.Tensor:
    """The ``weak_target: video`` option of the weak BCE target: the video label
    l1-normalised (equal to the segment shares when the video has a single class, e.g. an
    event over all segments)."""
    return l1_normalize(weak.float())


WeakTarget = Literal["shares", "video"]  # the `weak_target` hyperparameter
WEAK_TARGETS = typing.get_args(WeakTarget)


def weak_bce_target(batch: dict[str, Any], kind: str) -> torch.Tensor:
    """The video-level BCE target of PSP's (and VSCG's) weak setting (Eq. 11).

    ``shares`` (default, both authors' ``weakly_supervised_main.py`` with ``prob_label``, and
    PSP's ``Y^weak``, the temporal mean of the segment labels): each class's share of the ten
    segments, background included, the weak setting's ``shares`` batch entry. ``video``: the video
    label l1-normalised (:func:`weak_target`), which departs from both on the videos that have
    background segments (1,107 of AVE's 3,339 training videos)."""
    if kind not in WEAK_TARGETS:
        raise ValueError(f"weak_target must be one of {WEAK_TARGETS}, got {kind!r}")
    return batch["shares"].float() if kind == "shares" else weak_target(batch["weak"])


class PSPEncoderHead(Head):
    """Base of the heads built on PSP's segment-level encoder (``psp``, ``vscg``): embeddings,
    audio-guided visual attention, one Bi-LSTM per modality and positive sample propagation.

    Per setting, as the authors' code of both papers: fully, audio goes through ``fa``
    (Ca->embed_hidden->embed_dim, no bias) before AVGA and its LSTM and the attended visual vector
    through ``fv`` (Cv->embed_hidden->embed_dim); weak, raw audio feeds AVGA and its LSTM and the
    attended visual vector goes through one ``linear_v`` (``fv``, Cv->embed_dim, with bias).
    A subclass calls :meth:`_build_encoder`, then creates ``self.psp``, its own layers and last
    ``self.lstm_video = bilstm(embed_dim, lstm_hidden)`` (that order fixes seeded initialisation).
    """

    def _build_encoder(self) -> None:
        """From ``self.cfg``: ``att_hidden, att_dim, audio_term, embed_hidden, embed_dim,
        lstm_hidden``."""
        visual_dim, audio_dim, cfg = self.visual_dim, self.audio_dim, self.cfg
        att_hidden, att_dim, audio_term = cfg.att_hidden, cfg.att_dim, cfg.audio_term
        embed_hidden, embed_dim, lstm_hidden = cfg.embed_hidden, cfg.embed_dim, cfg.lstm_hidden
        if self.setting == "fully":
            self.fa = nn.Sequential(nn.Linear(audio_dim, embed_hidden, bias=False),
                                    nn.Linear(embed_hidden, embed_dim, bias=False))
            self.fv = nn.Sequential(nn.Linear(visual_dim, embed_hidden, bias=False),
                                    nn.Linear(embed_hidden, embed_dim, bias=False))
            self.attention = AudioGuidedVisualAttention(visual_dim, embed_dim, att_hidden, att_dim, audio_term)
            self.lstm_audio = bilstm(embed_dim, lstm_hidden)
        else:
            self.attention = AudioGuidedVisualAttention(visual_dim, audio_dim, att_hidden, att_dim, audio_term)
            self.fv = nn.Linear(visual_dim, embed_dim)  # code: linear_v
            self.lstm_audio = bilstm(audio_dim, lstm_hidden)

    def _encode(self, visual: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(attention alpha (B, T, H*W), outputs of self.psp)``."""
        if self.setting == "fully":
            audio = self.fa(audio)
        attended, alpha = self.attention(visual, audio)
        lstm_a, _ = self.lstm_audio(audio)
        lstm_v, _ = self.lstm_video(self.fv(attended))
        return alpha, self.psp(lstm_a, lstm_v)


@register_head("psp")
class PSP(PSPEncoderHead):
    @dataclass(frozen=True)
    class Config:
        att_hidden: int = 512  # AVGA projection width (Sec. 4.2 uses AVGA [28]; code hidden_size=512)
        att_dim: int = 49  # AVGA scoring-MLP width (code map_size=49 = 7x7 positions)
        audio_term: AudioTerm = "position"  # AVGA: position (code; H*W = att_dim) | broadcast (AVEL's Eq.)
        embed_hidden: int = 256  # fully: fa/fv first layer width (code: Ca/Cv -> 256 -> 128)
        embed_dim: int = 128  # LSTM input width: fa/fv output (fully), linear_v output (weak) (code)
        lstm_hidden: int = 128  # per-direction Bi-LSTM units, d_l = 2 * 128 (Sec. 4.2; code)
        psp_hidden: int = 256  # d_h of W_1 in Eq. 1 (code hidden_dim=256)
        tau_fully: float = 0.099  # Eq. 2 threshold, fully (code --threshold 0.099; Table 3 lists 0.095)
        tau_weak: float = 0.095  # Eq. 2 threshold, weak (Table 3 best; code --threshold 0.095)
        weak_target: WeakTarget = "shares"  # weak BCE target: shares (code's prob_label; Y^weak) | video
        renormalize_weak: bool = False  # weak: Eq. 2's second l1-norm (code: false; paper: true)
        project_weak: bool = False  # weak: Eq. 4's W_3 + ReLU + dropout (code: false; paper: true)
        weight_relu: bool = True  # weak: Eq. 5 phi = sigmoid(relu(.)) (code: true) | sigmoid(.) (paper)
        avps_weight: float = 100.0  # lambda of Eq. 10 (Sec. 5.1: set to 100)
        dropout: float = 0.1  # dropout in the PSP linear layers (Sec. 5.1 "dropout"; rate from code)
        fc_hidden: int = 64  # first classifier FC (Sec. 4.4 "two FC layers"; W_4 in Eq. 5; code 64)

    SELECTION = {s: Schedule("test", every=5, skip_first=True, later_wins_ties=True,
                          source="jasongief/PSP_CVPR_2021 ({fully,weakly}_supervised_main.py, check_epoch 5): test, epoch % 5 == 0, epoch > 0")
                 for s in ("fully", "weak")}
    SEEDS = {"fully": 123, "weak": 123}  # both scripts: seed 123
    SWITCHES = {"fully": {"avps_target": ("buffer", "indicator"), "drop_last": (True, False)},
                "weak": {"shuffle_scope": ("first_batch", "epoch"), "drop_last": (True, False)}}
    REPORTED = {"fully": Reported(77.8, "PSP Table 4"), "weak": Reported(73.5, "PSP Table 4")}
    REPORTED_PARAMS_M, REPORTED_PARAMS_SOURCE = 1.7, "VSCG Table II"
    TRAIN_DEFAULTS = {
        # fully_supervised_main.py: Adam 1e-3, batch 128, 300 epochs, lr *= 0.8 every 60 epochs
        # but only before epoch 170, i.e. at epochs 60 and 120 only (not periodic: milestones).
        "fully": {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "batch_size": 128,
                  "epochs": 300, "lr_step": 0, "lr_milestones": [60, 120], "lr_gamma": 0.8,
                  "clip_grad": 0.0},
        # weakly_supervised_main.py: same, lr *= 0.8 every 80 epochs, in the code at 80 and 160 only.
        "weak": {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "batch_size": 128,
                 "epochs": 300, "lr_step": 0, "lr_milestones": [80, 160], "lr_gamma": 0.8,
                 "clip_grad": 0.0},
    }

    def __init__(self, cfg: Config, visual_dim: int, audio_dim: int, num_classes: int,
                 setting: str = "fully"):
        super().__init__(cfg, visual_dim, audio_dim, num_classes, setting)
        d_l = 2 * cfg.lstm_hidden
        self._build_encoder()
        if setting == "fully":
            self.psp = PositiveSamplePropagation(d_l, cfg.psp_hidden, cfg.tau_fully, cfg.dropout,
                                                 project=True, project_dropout=cfg.dropout)
            self.L1 = nn.Linear(d_l, cfg.fc_hidden, bias=False)
            self.L2 = nn.Linear(cfg.fc_hidden, num_classes + 1, bias=False)
            nn.init.xavier_uniform_(self.L1.weight)
            nn.init.xavier_uniform_(self.L2.weight)
        else:
            self.psp = PositiveSamplePropagation(d_l, cfg.psp_hidden, cfg.tau_weak, cfg.dropout,
                                                 project=cfg.project_weak, project_dropout=cfg.dropout,
                                                 renormalize=cfg.renormalize_weak)
            self.classifier = WeightedMILClassifier(d_l, cfg.fc_hidden, num_classes + 1, cfg.weight_relu)
        self.lstm_video = bilstm(cfg.embed_dim, cfg.lstm_hidden)

    def forward(self, visual: torch.Tensor, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        alpha, psp = self._encode(visual, audio)
        out = {"attention": alpha, "v_psp": psp["v_psp"], "a_psp": psp["a_psp"],
               "gamma_va": psp["gamma_va"], "gamma_av": psp["gamma_av"]}
        if self.setting == "fully":
            out["logits"] = self.L2(F.relu(self.L1(psp["fusion"])))  # (B, T, C+1)
        else:
            out["logits"], out["video_prob"] = self.classifier(psp["fusion"])
        return out

    def loss(self, out: dict[str, torch.Tensor], batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        if self.setting == "fully":
            labels = batch["labels"].float()
            ce = F.cross_entropy(out["logits"].flatten(0, 1), segment_targets(labels).flatten())  # Eq. 7
            avps = avps_loss(out["v_psp"], out["a_psp"], labels, self.num_classes,
                             batch.get("avps_target"))  # Eq. 9
            loss = ce + self.cfg.avps_weight * avps  # Eq. 10
            return loss, {"loss": float(loss.detach()), "ce": float(ce.detach()), "avps": float(avps.detach())}
        loss = F.binary_cross_entropy(out["video_prob"], weak_bce_target(batch, self.cfg.weak_target))  # Eq. 11
        return loss, {"loss": float(loss.detach())}

    def predict(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        # weak: argmax of each segment's weighted score (code: softmax then argmax)
        return out["logits"].argmax(dim=-1)

    @classmethod
    def from_authors_state_dict(cls, state_dict: dict[str, torch.Tensor], setting: str = "fully",
                                **overrides: Any) -> "PSP":
        """``psp_net`` of ``fully_model.py`` (fully) or ``weakly_model.py`` (weak)."""
        sd = AuthorsStateDict(state_dict, f"psp ({setting})")
        dims, widths, renames = encoder_layout(sd, setting)
        lstm_hidden = widths["lstm_hidden"]
        if setting == "fully":
            dims["num_classes"] = sd.dim("L2.weight", 0) - 1
            widths["fc_hidden"] = sd.dim("L1.weight", 0)
            renames.update(L1="L1", L2="L2")
            unused = {"linear_v.weight": (dims["audio_dim"], dims["visual_dim"]),
                      "linear_v.bias": (dims["audio_dim"],),
                      **CLASSIFY_UNUSED, "L3.weight": (64, 256), "L3.bias": (64,),
                      "L4.weight": (2, 64), "L4.bias": (2,)}
        else:
            dims["num_classes"] = sd.dim("L2.weight", 0) - 1
            widths["fc_hidden"] = sd.dim("L1.weight", 0)
            renames.update({"classifier.W4": "L1", "classifier.W5": "L2", "classifier.W6": "W3"})
            unused = {"temperature": (1, dims["num_classes"] + 1), "W1.weight": (1, 2 * lstm_hidden),
                      "W2.weight": (1, 64)}
        head = authors_head(cls, setting, dims, widths, overrides, sd.what)
        return sd.load_into(head, renames, unused)


# Dead layers of the fully supervised psp_net / vscg_net: Classify(hidden_dim=256) x 2, 28 classes.
CLASSIFY_UNUSED = {f"{m}_classify.{layer}": shape for m in ("v", "a")
                   for layer, shape in (("L1.weight", (64, 256)), ("L2.weight", (28, 64)))}


def encoder_layout(sd: AuthorsStateDict, setting: str, swap_streams: bool = False
                   ) -> tuple[dict[str, int], dict[str, int], dict[str, str]]:
    """Dimensions, widths and key renames of the encoder shared by PSP's and VSCG's code (AVGA,
    ``fa``/``fv`` or ``linear_v``, ``lstm_a_v``, ``psp``). ``swap_streams``: VSCG's fully code
    calls ``lstm_a_v(video, audio)``, so the audio stream runs through the authors' ``lstm_video``
    and PSP's ``v_*`` layers and the visual stream through ``lstm_audio`` and ``a_*`` (PSP is
    symmetric in its two inputs, so this is the same function with the names exchanged)."""
    if setting == "fully":
        dims = {"visual_dim": sd.dim("fv.0.weight", 1), "audio_dim": sd.dim("fa.0.weight", 1)}
        widths = {"embed_hidden": sd.dim("fa.0.weight", 0), "embed_dim": sd.dim("fa.1.weight", 0)}
        renames = {"fa": "fa", "fv": "fv"}
    else:
        dims = {"visual_dim": sd.dim("linear_v.weight", 1),
                "audio_dim": sd.dim("attention.affine_audio.weight", 1)}
        widths = {"embed_dim": sd.dim("linear_v.weight", 0)}
        renames = {"fv": "linear_v"}
    widths.update(att_hidden=sd.dim("attention.affine_audio.weight", 0),
                  att_dim=sd.dim("attention.affine_v.weight", 0),
                  lstm_hidden=sd.dim("lstm_a_v.lstm_audio.weight_hh_l0", 1),
                  psp_hidden=sd.dim("psp.a_L1.weight", 0))
    a, v = ("v", "a") if swap_streams else ("a", "v")  # the authors' role of our audio, visual
    lstm = {"a": "lstm_a_v.lstm_audio", "v": "lstm_a_v.lstm_video"}
    renames.update({"attention": "attention", "lstm_audio": lstm[a], "lstm_video": lstm[v],
                    "psp.layer_norm": "psp.layer_norm"})
    for ours, theirs in (("a", a), ("v", v)):  # similarity: v_L2 / a_L1; values: v_L1 / a_L2
        renames[f"psp.{ours}_W1"] = f"psp.{theirs}_L{2 if theirs == 'v' else 1}"
        renames[f"psp.{ours}_W2"] = f"psp.{theirs}_L{1 if theirs == 'v' else 2}"
        renames[f"psp.{ours}_W3"] = f"psp.{theirs}_fc"
    return dims, widths, renames
