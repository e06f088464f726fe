"""CACE-Net head: BECE (Eq. 7-8) and its schedule (shared checks in test_heads_common.py)."""
import math

import pytest
import torch
from test_heads_common import CACE_TINY, block_batch

from pipeline.heads import build_head
from pipeline.heads._cmbs_blocks import localize
from pipeline.heads.cace import bece_loss

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_bece_switches_on_after_an_eighth_of_the_epochs():
    torch.manual_seed(0)
    head = build_head("cace", visual_dim=16, audio_dim=8, num_classes=4, **CACE_TINY)
    before = block_batch(b=2, c=4, h=2, w=2, cv=16, ca=8, epoch=24, epochs=200)
    after = dict(before, epoch=25)
    out = head(before["visual"], before["audio"])
    assert "contrast" not in head.loss(out, before)[1]
    assert torch.equal(head.predict(out), localize(out["relevance_plain"], out["class_logits"]))
    assert "contrast" in head.loss(out, after)[1]
    assert torch.equal(head.predict(out), localize(out["relevance"], out["class_logits"]))
    assert bool(head.state_dict()["bece_trained"])  # travels with checkpoints


def test_bece_loss_matches_hand_computation():
    # One video, T = 2, unit vectors (so the L2 normalisation is the identity), tau = 0.5.
    q1, q2, k1, k2 = (1.0, 0.0), (0.0, 1.0), (0.6, 0.8), (0.8, 0.6)
    f = [q1, q2, k1, k2]  # sample set I = [queries; keys]
    dot = [[a[0] * b[0] + a[1] * b[1] for b in f] for a in f]
    tau = 0.5

    def term(i, positives):
        den = sum(math.exp(dot[i][p] / tau) for p in range(4) if p != i)
        return -math.log(sum(math.exp(dot[i][k] / tau) for k in positives) / len(positives) / den)

    query = torch.tensor([[q1, q2]])
    key = torch.tensor([[k1, k2]])
    # Segment 0 is an event, segment 1 background: each sample's only positive is its own copy.
    expect = (term(0, [2]) + term(1, [3]) + term(2, [0]) + term(3, [1])) / 4
    got = bece_loss(query, key, torch.tensor([[1.0, 0.0]]), tau).item()
    assert math.isclose(got, expect, rel_tol=1e-5)
    # Both events: every other sample is a positive (|K(i)| = 3).
    expect = sum(term(i, [p for p in range(4) if p != i]) for i in range(4)) / 4
    got = bece_loss(query, key, torch.tensor([[1.0, 1.0]]), tau).item()
    assert math.isclose(got, expect, rel_tol=1e-5)
    # Normalisation: scaling the inputs changes nothing.
    assert math.isclose(bece_loss(3 * query, 2 * key, torch.tensor([[1.0, 0.0]]), tau).item(),
                        bece_loss(query, key, torch.tensor([[1.0, 0.0]]), tau).item(), rel_tol=1e-5)


def test_bece_fusion_eq8_and_noise_off():
    torch.manual_seed(0)
    head = build_head("cace", visual_dim=16, audio_dim=8, num_classes=4, bece_noise_std=0.0,
                      bece_lambda=0.6, **CACE_TINY).eval()
    batch = block_batch(b=2, c=4, h=2, w=2, cv=16, ca=8)
    with torch.no_grad():
        out = head(batch["visual"], batch["audio"])
        assert torch.equal(out["bece_query"], out["bece_key"])  # no augmentation noise
        f_av = out["fused"]
        f_o = f_av + 0.6 * torch.relu(head.project[0](f_av))  # Eq. 8
        assert torch.allclose(out["relevance"], head.relevance(f_o).squeeze(-1), atol=1e-6)
        assert torch.allclose(out["relevance_plain"], head.relevance(f_av).squeeze(-1), atol=1e-6)
