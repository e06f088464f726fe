"""CMBS head: the paper's equations (shared checks in test_heads_common.py)."""
import math

import pytest
import torch
from test_heads_common import CMBS_TINY, block_batch

from pipeline.heads import build_head
from pipeline.heads._cmbs_blocks import class_topk_mean, event_suppress, localize, time_suppress

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_time_level_suppression_eq3():
    x = torch.tensor([[[2.0, -1.0], [4.0, 3.0]]])  # (B=1, T=2, D=2)
    gate = torch.tensor([[[0.0], [1.0]]])  # the other modality's gate
    out = time_suppress(x, gate, alpha=0.2)
    # (1 - 0.2) * x + 0.2 * g * x: segment 0 shrunk to 0.8 x, segment 1 kept.
    assert torch.allclose(out, torch.tensor([[[1.6, -0.8], [4.0, 3.0]]]))


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


def test_gates_and_loss_follow_the_equations():
    torch.manual_seed(0)
    head = build_head("cmbs", visual_dim=16, audio_dim=8, num_classes=4, gamma=0.7, **CMBS_TINY).eval()
    batch = block_batch(b=2, c=4, h=2, w=2, cv=16, ca=8)
    with torch.no_grad():
        out = head(batch["visual"], batch["audio"])
        assert torch.allclose(out["gate_av"], out["gate_v"] * out["gate_a"])
        raw = head.classifier(out["fused"].max(1).values)  # Eq. 7
        expect = 0.3 * raw + 0.7 * out["ebs_v"] * out["ebs_a"] * raw  # Eq. 8
        assert torch.allclose(out["class_logits"], expect, atol=1e-6)
        loss, parts = head.loss(out, batch)
    rel = 1 - batch["labels"][..., -1]
    ce = -torch.log_softmax(out["class_logits"], -1)[torch.arange(2), torch.tensor([0, 1])].mean()
    p = torch.sigmoid(out["relevance"])
    bce_r = -(rel * p.log() + (1 - rel) * (1 - p).log()).mean()
    g = out["gate_av"]
    bce_g = -(rel * g.log() + (1 - rel) * (1 - g).log()).mean()
    assert math.isclose(loss.item(), (ce + bce_r + bce_g).item(), rel_tol=1e-5)  # Eq. 9


def test_weak_mil_pooling_eq10_12_and_prediction():
    torch.manual_seed(0)
    head = build_head("cmbs", visual_dim=16, audio_dim=8, num_classes=4, setting="weak", **CMBS_TINY).eval()
    batch = block_batch(b=2, c=4, h=2, w=2, cv=16, ca=8)
    with torch.no_grad():
        out = head(batch["visual"], batch["audio"])
        seg = head.classifier(out["fused"])  # Eq. 10, (B, T, C+1)
        gates = (out["ebs_v"] * out["ebs_a"]).unsqueeze(1)
        seg = 0.5 * seg + 0.5 * gates * seg  # Eq. 11, gamma = 0.5
        pooled = (out["gate_av"].unsqueeze(-1) * seg).max(1).values  # Eq. 12
        assert torch.allclose(out["video_logits"], pooled, atol=1e-6)
        pred = head.predict(out)  # authors' rule: the video-level class for every segment
        assert (pred == pooled.argmax(-1, keepdim=True)).all()
    head.hp["weak_predict"] = "segment"
    assert torch.equal(head.predict(out), out["segment_logits"].argmax(-1))
