"""CMBS head: the authors' computation (default), the paper's equations (``variant="paper"``),
and the import of the authors' checkpoints, checked against their forward written from their code
(``cmbs_authors``). Shared checks in test_heads_common.py."""
import dataclasses
import math

import cmbs_authors as authors
import pytest
import torch
from test_heads_common import CMBS_TINY, block_batch
from torch.nn import functional as F

from pipeline.heads import build_head, count_parameters, get_head_class
from pipeline.heads._cmbs_blocks import class_topk_mean, event_suppress, localize, time_suppress

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_time_level_suppression_forms():
    x = torch.tensor([[[2.0, -1.0], [4.0, 3.0]]])  # (B=1, T=2, D=2)
    gate = torch.tensor([[[0.0], [1.0]]])  # the other modality's gate
    # Eq. 3: (1 - 0.2) * x + 0.2 * g * x: segment 0 shrunk to 0.8 x, segment 1 kept.
    assert torch.allclose(time_suppress(x, gate, 0.2), torch.tensor([[[1.6, -0.8], [4.0, 3.0]]]))
    # authors' fully supervised code: x + 0.2 * g * x: segment 0 kept, segment 1 grown to 1.2 x.
    assert torch.allclose(time_suppress(x, gate, 0.2, "residual"), torch.tensor([[[2.0, -1.0], [4.8, 3.6]]]))


def test_class_topk_mean_eq5():
    scores = torch.tensor([[[1.0, 0.0], [5.0, 2.0], [3.0, 2.0], [0.0, 9.0], [4.0, 1.0]]])  # (1, 5, 2)
    assert torch.allclose(class_topk_mean(scores, 2), torch.tensor([[4.5, 5.5]]))
    assert torch.allclose(class_topk_mean(scores, 9), scores.mean(1))  # k capped at T


def test_event_level_suppression_eq8():
    y = torch.tensor([[2.0, -1.0]])
    gv, ga = torch.tensor([[0.5, 1.0]]), torch.tensor([[1.0, 0.5]])
    # (1 - 0.5) * y + 0.5 * (gv * ga) * y = [1 + 0.5, -0.5 - 0.25]
    assert torch.allclose(event_suppress(y, gv, ga, 0.5), torch.tensor([[1.5, -0.75]]))


def test_localize_rule():
    relevance = torch.tensor([[2.0, -0.1, 0.3]])  # sigmoid > 0.5 iff logit > 0
    classes = torch.tensor([[0.1, 0.2, 3.0, -1.0]])
    assert localize(relevance, classes).tolist() == [[2, 4, 2]]


def test_paper_variant_gates_and_loss_follow_the_equations():
    torch.manual_seed(0)
    head = build_head("cmbs", visual_dim=16, audio_dim=8, num_classes=4, gamma=0.7, variant="paper",
                      **CMBS_TINY).eval()
    batch = block_batch(b=2, c=4, h=2, w=2, cv=16, ca=8)
    with torch.no_grad():
        out = head(batch["visual"], batch["audio"])
        assert torch.allclose(out["gate_av"], out["gate_v"] * out["gate_a"])
        raw = head.classifier(out["fused"].max(1).values)  # Eq. 7
        ebs = torch.sigmoid(class_topk_mean(out["cas_v"], 4)) * torch.sigmoid(class_topk_mean(out["cas_a"], 4))
        expect = 0.3 * raw + 0.7 * ebs * raw  # Eq. 5, 8
        assert torch.allclose(out["class_logits"], expect, atol=1e-6)
        loss, parts = head.loss(out, batch)
    rel = 1 - batch["labels"][..., -1]
    ce = -torch.log_softmax(out["class_logits"], -1)[torch.arange(2), torch.tensor([0, 1])].mean()
    p = torch.sigmoid(out["relevance"])
    bce_r = -(rel * p.log() + (1 - rel) * (1 - p).log()).mean()
    g = out["gate_av"]
    bce_g = -(rel * g.log() + (1 - rel) * (1 - g).log()).mean()
    assert math.isclose(loss.item(), (ce + bce_r + bce_g).item(), rel_tol=1e-5)  # Eq. 9


def test_code_variant_class_branch_and_loss():
    """supv_main.py: y + gamma * av_score, CE on both, BCEWithLogits on the sigmoided gate."""
    torch.manual_seed(0)
    head = build_head("cmbs", visual_dim=16, audio_dim=8, num_classes=4, gamma=0.7, **CMBS_TINY).eval()
    batch = block_batch(b=2, c=4, h=2, w=2, cv=16, ca=8)
    with torch.no_grad():
        out = head(batch["visual"], batch["audio"])
        score = (class_topk_mean(out["cas_v"], 4) + class_topk_mean(out["cas_a"], 4)) / 2
        assert torch.allclose(out["av_score"], score)
        raw = head.classifier(out["fused"].max(1).values)
        assert torch.allclose(out["class_logits"], raw + 0.7 * score, atol=1e-6)
        loss, parts = head.loss(out, batch)
    rel, event = 1 - batch["labels"][..., -1], torch.tensor([0, 1])
    ce = F.cross_entropy(out["class_logits"], event) + F.cross_entropy(score, event)
    bce = (-(rel * F.logsigmoid(z) + (1 - rel) * F.logsigmoid(-z)).mean()
           for z in (out["relevance"], out["gate_av"]))
    assert math.isclose(loss.item(), (ce + sum(bce)).item(), rel_tol=1e-5)
    assert set(parts) == {"class", "relevance", "gate", "cas"}


def test_paper_variant_weak_mil_pooling_eq10_12_and_prediction():
    torch.manual_seed(0)
    head = build_head("cmbs", visual_dim=16, audio_dim=8, num_classes=4, setting="weak", variant="paper",
                      **CMBS_TINY).eval()
    batch = block_batch(b=2, c=4, h=2, w=2, cv=16, ca=8)
    with torch.no_grad():
        out = head(batch["visual"], batch["audio"])
        seg = head.classifier(out["fused"])  # Eq. 10, (B, T, C+1)
        gates = torch.sigmoid(class_topk_mean(out["cas_v"], 4)) * torch.sigmoid(class_topk_mean(out["cas_a"], 4))
        seg = 0.5 * seg + 0.5 * gates.unsqueeze(1) * seg  # Eq. 11, gamma = 0.5
        pooled = ((out["gate_v"] * out["gate_a"]).unsqueeze(-1) * seg).max(1).values  # Eq. 12
        assert torch.allclose(out["video_logits"], pooled, atol=1e-6)
        assert (head.predict(out) == pooled.argmax(-1, keepdim=True)).all()
    head.cfg = dataclasses.replace(head.cfg, weak_predict="segment")
    assert torch.equal(head.predict(out), out["segment_logits"].argmax(-1))


def test_code_variant_weak_loss_and_prediction():
    """weakly_main.py: MultiLabelSoftMarginLoss on the softmax of the pooled scores; every
    segment takes the argmax of the top-K pooled scores (its relevance test always passes)."""
    torch.manual_seed(0)
    head = build_head("cmbs", visual_dim=16, audio_dim=8, num_classes=4, setting="weak", **CMBS_TINY).eval()
    batch = block_batch(b=2, c=4, h=2, w=2, cv=16, ca=8)
    with torch.no_grad():
        out = head(batch["visual"], batch["audio"])
        loss, _ = head.loss(out, batch)
    prob, y = torch.softmax(out["video_logits"], -1), batch["weak"]
    expect = -(y * F.logsigmoid(prob) + (1 - y) * F.logsigmoid(-prob)).mean()
    assert math.isclose(loss.item(), expect.item(), rel_tol=1e-5)
    assert torch.allclose(out["gate_av"], (out["gate_v"] + out["gate_a"]) / 2)
    assert (head.predict(out) == out["video_raw"].argmax(-1, keepdim=True)).all()


@pytest.mark.parametrize("setting", ["fully", "weak"])
def test_paper_variant_trains_every_parameter(setting):
    torch.manual_seed(0)
    head = build_head("cmbs", visual_dim=16, audio_dim=8, num_classes=4, setting=setting, variant="paper",
                      **CMBS_TINY)
    batch = block_batch(b=2, c=4, h=2, w=2, cv=16, ca=8)
    head.loss(head(batch["visual"], batch["audio"]), batch)[0].backward()
    assert not [k for k, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]


# ------------------------------------------------------------------- the authors' checkpoints
SMALL = dict(cv=24, ca=8, fc=16, hidden=12, d=16, dec_ff=24, classes=5)  # any dims convert


def small_layout(setting):
    return authors.cmbs_layout(setting, enc_ff=32, **SMALL)


def authors_inputs(b=3, h=3, w=2, cv=24, ca=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    visual = torch.randn(b, 10, h, w, cv, generator=g, dtype=torch.float64)
    return visual, torch.randn(b, 10, ca, generator=g, dtype=torch.float64)


def close(ours, theirs, rtol=1e-5):
    """Equal up to ``rtol`` of the largest magnitude of the reference."""
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max() <= rtol * theirs.abs().max()


@pytest.mark.parametrize("setting", ["fully", "weak"])
def test_authors_checkpoint_gives_their_outputs(setting):
    sd = authors.random_state_dict(small_layout(setting), seed=2)
    head = get_head_class("cmbs").from_authors_state_dict(sd, setting).double().eval()
    plain = {k[len("module."):]: v for k, v in sd.items()}
    visual, audio = authors_inputs()
    with torch.no_grad():
        out = head(visual, audio)
    if setting == "fully":
        is_event, event_scores, gate, score = authors.cmbs_fully(plain, visual, audio)
        for ours, theirs in ((out["relevance"], is_event), (out["class_logits"], event_scores),
                             (out["gate_av"], gate), (out["av_score"], score)):
            close(ours, theirs)
        assert torch.equal(head.predict(out), localize(is_event, event_scores))
    else:
        av_gate, raw, event_scores = authors.cmbs_weak(plain, visual, audio)
        close(out["gate_av"], av_gate)
        close(out["video_raw"], raw)
        close(torch.softmax(out["video_logits"], -1), event_scores)
        assert torch.equal(head.predict(out), raw.argmax(-1, keepdim=True).expand(-1, 10))
    # without DataParallel's "module." prefix: the same weights
    again = get_head_class("cmbs").from_authors_state_dict(plain, setting).double()
    assert all(torch.equal(a, b) for a, b in zip(head.state_dict().values(), again.state_dict().values()))


@pytest.mark.parametrize("setting,total,used", [("fully", 13_544_537, 9_200_473),
                                                ("weak", 14_789_439, 9_395_518)])
def test_authors_model_size(setting, total, used):
    """Their VGG-19 / VGGish model saves ``total`` values; their forward reads ``used`` of them,
    which is exactly our head's size (the rest: layer templates, a decoder self-attention, an
    unused bottleneck and norms, all checked and dropped by the import)."""
    layout = authors.cmbs_layout(setting)
    assert authors.numel(layout) == total
    sd = authors.random_state_dict(layout, dtype=torch.float32)
    head = get_head_class("cmbs").from_authors_state_dict(sd, setting)
    assert count_parameters(head) == used
    built = build_head("cmbs", visual_dim=512, audio_dim=128, num_classes=28, setting=setting)
    assert count_parameters(built) == used


def test_authors_checkpoint_is_read_strictly():
    cmbs = get_head_class("cmbs")
    sd = authors.random_state_dict(small_layout("fully"), prefix="")
    missing = {k: v for k, v in sd.items() if k != "video_decoder.affine_matrix.bias"}
    with pytest.raises(ValueError, match="missing key 'video_decoder.affine_matrix.bias'"):
        cmbs.from_authors_state_dict(missing, "fully")
    with pytest.raises(ValueError, match="unexpected key 'extra.weight'"):
        cmbs.from_authors_state_dict({**sd, "extra.weight": torch.zeros(1)}, "fully")
    # the paper's query width (the self-attended features) is not the authors' layout
    wrong = dict(sd, **{"video_decoder.affine_matrix.weight": torch.zeros(16, 16)})
    with pytest.raises(ValueError, match=r"'video_decoder.affine_matrix.weight' has shape \[16, 16\], "
                                         r"expected \[16, 32\]"):
        cmbs.from_authors_state_dict(wrong, "fully")
    unused = {k: v for k, v in sd.items() if not k.startswith("video_norm.")}
    with pytest.raises(ValueError, match="missing key 'video_norm.weight'"):
        cmbs.from_authors_state_dict(unused, "fully")
    with pytest.raises(ValueError, match="'d_model' is fixed by the authors' checkpoint"):
        cmbs.from_authors_state_dict(sd, "fully", d_model=32)
    with pytest.raises(ValueError, match="'variant' is fixed"):
        cmbs.from_authors_state_dict(sd, "fully", variant="paper")
    with pytest.raises(ValueError, match="has no hyperparameter 'lambda'"):
        cmbs.from_authors_state_dict(sd, "fully", **{"lambda": 1})
    with pytest.raises(ValueError, match="missing key 'CAS_model.classifier.0.weight'"):
        cmbs.from_authors_state_dict(sd, "weak")  # a fully supervised checkpoint
