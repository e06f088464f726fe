"""CACE-Net: He et al., ACM MM 2024, "CACE-Net: Co-guidance Attention and Contrastive
Enhancement for Effective Audio-Visual Event Localization" (authors' code: Brain-Cog-Lab/CACE-Net,
``CACE/model``, ``CACE/supv_main.py``, run as ``run_supp.sh``: ``--guide Co-Guide --psai 0.3
--contrastive --Lambda 0.6``). Fully supervised only: the paper defines no weak setting, and the
authors' ``weak_main_model`` does not run (it reads ``self.dual``, never set, and an unimported
``New_Audio_Guided_Attention``).

Built on the CMBS fully supervised model of the authors' code (blocks from :mod:`._cmbs_blocks`):

* audio-visual co-guidance attention (AVCA, Sec. 3.2): the CMBS audio-guided spatial-channel
  visual vector gated by the global visual signal (Eq. 1-2, beta); the audio is enhanced by a
  visual-guided attention over the temporally self-attended audio (Eq. 3-6, psi);
* the CMBS temporal trunk (Bi-LSTMs, self-attention, cross-modal attention, time-level gates,
  AV interaction), as the CMBS code computes it;
* background-event contrast enhancement (BECE, Sec. 3.3): a one-layer projection of the fused
  feature ``F_av`` and of its Gaussian-noised copy, supervised contrastive loss Eq. 7 within each
  video (positives: event-event pairs and each segment with its own augmented copy), and
  ``F_o = F_av + lambda * F_FT`` (Eq. 8) for the event-relevance classifier (Eq. 10) only;
* class ``W_4 maxpool(F_av)`` (Eq. 11) [+ the CMBS code's CAS score], loss Eq. 12 = CE +
  mean_t[BCE(rel) + BCE(g_av)] + L_contrast, BECE switched on after the first eighth of the
  epochs (authors' code).

:meth:`CACENet.from_authors_state_dict` reads the authors' checkpoints.

========================  =============================  ===========================  ========  ============
component                 authors' code                  paper                        default   option
========================  =============================  ===========================  ========  ============
class branch (Eq. 11)     ``W_4 max F_av + gamma *       ``W_4 max F_av``             code      variant=paper
                          av_score`` (CMBS CAS top-K)
loss (Eq. 12)             + CE(av_score); BCEWithLogits  CE + BCE(rel) + BCE(g_av)    code      variant=paper
                          on the sigmoided ``g_av``      + L_contrast
time-level suppression    ``x + alpha*g*x`` on the       "from CMBS" (not detailed)   code      (none)
                          cross-attention outputs
cross-modal attn query    features before self-attn      single modality (CMRAN)      code      (none)
audio self-attn (Eq. 3)   + residual and LayerNorm       ``softmax(qK^T) V``          code      (none)
2nd visual self-attn      shares the 1st's LayerNorm     (not specified)              code      (none)
BECE switch-on            epoch >= epochs / 8            (not specified)              code      bece_start
tau, noise std, lambda    0.01, 0.1, 0.6 (run_supp.sh)   lambda 0.6 best (Table 2)    code      bece_*
weak setting              does not run                   not defined                  none      (none)
precision                 float64 (``model.double()``)   (not specified)              float32   (none)
========================  =============================  ===========================  ========  ============

Training-side switches (``train.recipe``: authors | paper; ``train.<switch>`` overrides one):

switch              | authors   | paper         | why
--------------------+-----------+---------------+----------------------------------------------
video_class (fully) | max_index | most_frequent | ``CACE/supv_main.py``: ``labels_foreground.max(-1)``
                    |           |               | then ``.max(-1)``: the largest class index of
                    |           |               | the video; differs on two-class videos only
(loader)            |           |               | ``CACE/supv_main.py``: DataLoader(shuffle=True),
                    |           |               | last batch kept: as ours, no switch
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from ._authors import AuthorsStateDict
from ._cmbs_blocks import (CMGA, CMGA_KEYS, CMGA_UNUSED, CMBSTrunk, SpatialSelfAttention, authors_trunk_sizes,
                           av_score, fully_loss, localize, relevance_targets, trunk_keys,
                           trunk_unused_keys)
from ._registry import (RELEVANCE_RULE, Head, Reported, Schedule, authors_head,
                        event_class_probabilities, register_head)


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
    The second spatial self-attention uses the first one's LayerNorm, as the authors' code does
    (their ``v_norm2`` is built but never used).
    """

    def __init__(self, dim: int, audio_dim: int, hidden: int, beta: float, psi: float,
                 dropout: float = 0.2):
        super().__init__()
        self.psi = psi
        self.cmga = CMGA(dim, audio_dim, hidden, beta, dropout)
        self.visual_self = SpatialSelfAttention(dim, dropout=dropout, own_norm=False)
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
        x = visual.reshape(b * t, h * w, d)
        v_global = self.visual_self(x, norm=self.cmga.self_att.norm).mean(1).reshape(b, t, d)
        att = torch.softmax(self.audio_q(audio) @ self.audio_k(audio).transpose(1, 2), dim=-1)
        a_g = self.audio_norm(audio + self.dropout(att @ self.audio_v(audio)))  # Eq. 3
        att = torch.softmax(self.guide_q(v_global) @ self.guide_k(a_g).transpose(1, 2), dim=-1)
        a_tilde = att @ self.guide_v(a_g)  # Eq. 5
        return v, audio + self.psi * torch.sigmoid(a_tilde) * audio  # Eq. 6


@register_head("cace")
class CACENet(Head):
    settings = ("fully",)
    @dataclass(frozen=True)
    class Config:
        variant: Literal["code", "paper"] = "code"  # "code": the authors' supv_main_model (--guide Co-Guide --contrastive;
        # table in the module docstring) | "paper": class branch Eq. 11 and loss Eq. 12 as printed
        visual_fc_dim: int = 512  # input FC width for the visual maps (authors' code video_fc_dim=512)
        input_dropout: float = 0.2  # dropout after the input FC (authors' code)
        guide_hidden: int = 256  # hidden width d of the guidance attentions (Eq. 1; code 256)
        beta: float = 0.4  # audio-guided visual gate, Eq. 2 (Appendix: "0.4 by default"; main.json)
        psi: float = 0.3  # visual-guided audio gate, Eq. 6 (Table S2 best; run_supp.sh --psai 0.3)
        d_model: int = 256  # hidden size of the temporal modules (authors' main.json)
        heads: int = 4  # heads of self- and cross-modal attention (authors' code)
        av_heads: int = 4  # heads of the AV interaction module (authors' code)
        enc_ff: int = 1024  # self-attention feed-forward width (authors' code)
        dec_ff: int = 512  # cross-modal attention feed-forward width (authors' code)
        alpha: float = 0.1  # CMBS time-level suppression weight, x + alpha*g*x (authors' main.json)
        gamma: float = 0.3  # weight of the CAS score added to the class logits (authors' main.json)
        top_k: int = 4  # top-K of the CAS score (authors' code)
        bece_lambda: float = 0.6  # lambda of Eq. 8 (Table 2 best; run_supp.sh --Lambda 0.6)
        bece_noise_std: float = 0.1  # std of the Gaussian-noise augmentation (authors' data_augmentation)
        bece_temperature: float = 0.01  # tau of Eq. 7 (authors' supv_main.py: logits /= 0.01)
        bece_weight: float = 1.0  # weight of L_contrast in Eq. 12 (paper 1; code contras_coeff 1.0)
        bece_start: float = 0.125  # BECE on from epoch >= this fraction of the epochs (code n_epoch/8)
    SELECTION = {"fully": Schedule("test", source="Brain-Cog-Lab/CACE-Net (supv_main.py, eval_freq 1): "
                                                 "test, every epoch")}
    SEEDS = {"fully": 3917}  # supv_main.py: seed 3917
    SWITCHES = {"fully": {"video_class": ("max_index", "most_frequent")}}
    REPORTED = {"fully": Reported(80.8, "CACE-Net Table 5 (VGG-like, VGG-19)")}
    TRAIN_DEFAULTS = {
        # Sec. 4: Adam, lr 7e-4 halved at epochs 10, 20 and 30 (authors' MultiStepLR), then
        # constant; 200 epochs, batch 64, gradient clipping (0.5 in run_supp.sh). weight_decay
        # 5e-4 is configured by the authors but never passed to Adam, so it is 0.
        "fully": {"optimizer": "adam", "lr": 7e-4, "weight_decay": 0.0, "batch_size": 64,
                  "epochs": 200, "lr_step": 0, "lr_milestones": [10, 20, 30], "lr_gamma": 0.5,
                  "clip_grad": 0.5},
    }

    @classmethod
    def prediction_rule(cls, setting, hparams):
        return RELEVANCE_RULE if setting == "fully" else None

    def __init__(self, cfg: Config, visual_dim: int, audio_dim: int, num_classes: int,
                 setting: str = "fully"):
        super().__init__(cfg, visual_dim, audio_dim, num_classes, setting)
        d, vd, code = cfg.d_model, cfg.visual_fc_dim, cfg.variant == "code"
        self.v_fc = nn.Linear(visual_dim, vd)
        self.dropout = nn.Dropout(cfg.input_dropout)
        self.guide = CoGuidedAttention(vd, audio_dim, cfg.guide_hidden, cfg.beta, cfg.psi)
        # The paper's class branch (Eq. 11) has no CAS: those layers exist only in the code variant.
        self.trunk = CMBSTrunk(vd, audio_dim, num_classes if code else 0, d_model=d,
                               heads=cfg.heads, av_heads=cfg.av_heads, enc_ff=cfg.enc_ff,
                               dec_ff=cfg.dec_ff, use_rnn=True, alpha=cfg.alpha, order="code",
                               tbs_form="residual")
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
        out["gate_av"] = out["gate_v"] * out["gate_a"]
        query = self.project(fused)  # F_FT
        noise = torch.randn_like(fused) * self.cfg.bece_noise_std
        out["bece_query"], out["bece_key"] = query, self.project(fused + noise)
        out["relevance_plain"] = self.relevance(fused).squeeze(-1)  # before BECE is switched on
        out["relevance"] = self.relevance(fused + self.cfg.bece_lambda * query).squeeze(-1)  # Eq. 8
        out["class_logits"] = self.classifier(fused.max(1).values)  # Eq. 11 (softmax in the CE)
        if self.cfg.variant == "code":  # the CMBS code's CAS branch
            out["av_score"] = av_score(out["cas_v"], out["cas_a"], self.cfg.top_k)
            out["class_logits"] = out["class_logits"] + self.cfg.gamma * out["av_score"]
        return out

    def bece_active(self, batch: dict[str, Any]) -> bool:
        return batch["epoch"] >= self.cfg.bece_start * batch["epochs"]

    def loss(self, out: dict[str, torch.Tensor], batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        active = self.bece_active(batch)
        rel_logits = out["relevance"] if active else out["relevance_plain"]
        # Eq. 12 without L_contrast: CE + BCE(relevance) + BCE(g_av) (+ the code's CE on av_score,
        # and its BCEWithLogits on the sigmoided gate)
        loss, parts = fully_loss(out["class_logits"], rel_logits, out["gate_av"], batch["labels"],
                                 av_score=out.get("av_score"), gate_on_logits=self.cfg.variant == "code",
                                 video_class=batch.get("video_class", "most_frequent"))
        if active:
            if self.training:
                self.bece_trained.fill_(True)
            l_con = bece_loss(out["bece_query"], out["bece_key"], relevance_targets(batch["labels"]),
                              self.cfg.bece_temperature)
            loss = loss + self.cfg.bece_weight * l_con
            parts["contrast"] = l_con.item()
        return loss, parts

    @torch.no_grad()
    def predict(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        # Sec. 3.5: o_t = H(y_t - 0.5) * y_c, with BECE on once trained with it (the authors'
        # evaluation sets contrastive_switch = True).
        relevance = out["relevance"] if bool(self.bece_trained) else out["relevance_plain"]
        return localize(relevance, out["class_logits"])

    @classmethod
    def from_authors_state_dict(cls, state_dict: dict[str, torch.Tensor], setting: str = "fully",
                                **overrides: Any) -> "CACENet":
        """A head with the weights of the authors' ``supv_main_model`` (``--guide Co-Guide``, or
        ``Audio-Guide`` with ``psi=0``) state dict; dimensions from its shapes, ``overrides`` =
        other hyperparameters (psi, bece_lambda = their ``--Lambda``, 0 for a run without
        ``--contrastive``, ...). BECE counts as trained, as their evaluation switches it on."""
        what = f"cace ({setting})"
        if setting not in cls.settings:
            raise ValueError(f"{what}: the authors' weak model does not run (it reads an unset "
                             f"attribute) and the paper defines no weak setting")
        sd = AuthorsStateDict(state_dict, what)
        widths, dims = authors_trunk_sizes(sd, "guide_hidden")
        dims["num_classes"] = sd.dim("localize_module.event_classifier.weight", 0)
        head = authors_head(cls, setting, dims, widths, overrides, what)
        sd.load_into(head, *head._authors_layout(sd.dim("a_fc.weight", 0)), ours_only=["bece_trained"])
        head.bece_trained.fill_(True)
        return head

    def _authors_layout(self, a_fc: int) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
        """Our module prefixes -> the authors', and the keys their forward never reads (``a_fc``:
        the width of their ``a_fc``, whose call is commented out)."""
        att = "spatial_channel_att."
        renames = {"v_fc": "v_fc", **{"guide.cmga." + o: att + t for o, t in CMGA_KEYS.items()},
                   "guide.cmga.self_att.norm": att + "v_norm",
                   **{f"guide.visual_self.{o}": f"{att}video_{o}2" for o in ("query", "key", "value")},
                   **{f"guide.audio_{o[0]}": f"{att}audio_{o}" for o in ("query", "key", "value")},
                   "guide.audio_norm": att + "a_norm", "guide.guide_q": att + "v_query",
                   "guide.guide_k": att + "vaudio_key", "guide.guide_v": att + "vaudio_value",
                   **trunk_keys(weak=False), "project.0": "localize_module.encoder_q.0",
                   "relevance": "localize_module.classifier",
                   "classifier": "localize_module.event_classifier"}
        vd = self.cfg.visual_fc_dim
        unused = {**trunk_unused_keys(self.trunk), **CMGA_UNUSED,
                  att + "v_norm2.weight": (vd,), att + "v_norm2.bias": (vd,),
                  "a_fc.weight": (a_fc, self.audio_dim), "a_fc.bias": (a_fc,)}
        return renames, unused

    @torch.no_grad()
    def probabilities(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        relevance = out["relevance"] if bool(self.bece_trained) else out["relevance_plain"]
        return event_class_probabilities(relevance, out["class_logits"])
