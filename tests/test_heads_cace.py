"""CACE-Net head: shapes, parameter budget, no dead layers, overfitting, BECE (Eq. 7-8)."""
import math

import pytest
import torch

from pipeline.heads import build_head, count_parameters
from pipeline.heads._cmbs_blocks import localize
from pipeline.heads.cace import bece_loss

C = 28
TINY = {"visual_fc_dim": 32, "guide_hidden": 16, "d_model": 32, "enc_ff": 64, "dec_ff": 64}


@pytest.fixture(autouse=True)
def one_thread():
    """Small ops on a shared 2-core machine: intra-op threads only add contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_batch(b=2, c=C, h=7, w=7, cv=512, ca=128, seed=0, epoch=50, epochs=200):
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(b, 10, c + 1)
    labels[..., c] = 1
    for i in range(b):  # one event class per video, on a contiguous block
        start, end = i % 4, 6 + i % 4
        labels[i, start:end, c] = 0
        labels[i, start:end, i % c] = 1
    return {"visual": torch.randn(b, 10, h, w, cv, generator=g),
            "audio": torch.randn(b, 10, ca, generator=g),
            "labels": labels, "weak": labels.max(1).values, "epoch": epoch, "epochs": epochs}


@pytest.mark.parametrize("h,w,cv,ca", [(7, 7, 512, 128), (4, 5, 2048, 2048)])
def test_output_shapes(h, w, cv, ca):
    torch.manual_seed(0)
    head = build_head("cace", visual_dim=cv, audio_dim=ca, num_classes=C).eval()
    batch = make_batch(h=h, w=w, cv=cv, ca=ca)
    with torch.no_grad():
        out = head(batch["visual"], batch["audio"])
    assert out["relevance"].shape == (2, 10) and out["class_logits"].shape == (2, C)
    assert out["bece_query"].shape == out["bece_key"].shape == (2, 10, 256)
    pred = head.predict(out)
    assert pred.shape == (2, 10) and pred.dtype == torch.long
    assert int(pred.min()) >= 0 and int(pred.max()) <= C
    loss, parts = head.loss(out, batch)
    assert torch.isfinite(loss) and "contrast" in parts


def test_fully_supervised_only():
    with pytest.raises(ValueError, match="fully"):
        build_head("cace", visual_dim=512, audio_dim=128, num_classes=C, setting="weak")


def test_parameter_count_matches_authors_code():
    head = build_head("cace", visual_dim=512, audio_dim=128, num_classes=C)
    n = count_parameters(head)
    print(f"cace fully: {n} trainable parameters (authors' code 9.28M)")
    assert abs(n - 9.28e6) / 9.28e6 < 0.05


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    head = build_head("cace", visual_dim=512, audio_dim=128, num_classes=C)
    batch = make_batch(h=2, w=2)  # epoch 50 of 200: BECE is on
    loss, parts = head.loss(head(batch["visual"], batch["audio"]), batch)
    loss.backward()
    assert "contrast" in parts
    dead = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead


def test_bece_switches_on_after_an_eighth_of_the_epochs():
    torch.manual_seed(0)
    head = build_head("cace", visual_dim=16, audio_dim=8, num_classes=4, **TINY)
    before = make_batch(b=2, c=4, h=2, w=2, cv=16, ca=8, epoch=24, epochs=200)
    after = dict(before, epoch=25)
    out = head(before["visual"], before["audio"])
    assert "contrast" not in head.loss(out, before)[1]
    assert torch.equal(head.predict(out), localize(out["relevance_plain"], out["class_logits"]))
    assert "contrast" in head.loss(out, after)[1]
    assert torch.equal(head.predict(out), localize(out["relevance"], out["class_logits"]))
    assert bool(head.state_dict()["bece_trained"])  # travels with checkpoints


def test_overfits_a_tiny_batch():
    torch.manual_seed(0)
    head = build_head("cace", visual_dim=16, audio_dim=8, num_classes=4, **TINY)
    batch = make_batch(b=4, c=4, h=2, w=2, cv=16, ca=8, epoch=1, epochs=2)  # BECE on
    truth = batch["labels"].argmax(-1)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    first = acc = final = None
    for step in range(1, 151):
        head.train()
        loss, _ = head.loss(head(batch["visual"], batch["audio"]), batch)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0:
            head.eval()
            with torch.no_grad():
                out = head(batch["visual"], batch["audio"])
                final = head.loss(out, batch)[0].item()
                acc = (head.predict(out) == truth).float().mean().item()
            if acc == 1.0 or final < 0.1 * first:
                break
    assert acc == 1.0 or final < 0.1 * first, (acc, first, final)


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
                      bece_lambda=0.6, **TINY).eval()
    batch = make_batch(b=2, c=4, h=2, w=2, cv=16, ca=8)
    with torch.no_grad():
        out = head(batch["visual"], batch["audio"])
        assert torch.equal(out["bece_query"], out["bece_key"])  # no augmentation noise
        f_av = out["fused"]
        f_o = f_av + 0.6 * torch.relu(head.project[0](f_av))  # Eq. 8
        assert torch.allclose(out["relevance"], head.relevance(f_o).squeeze(-1), atol=1e-6)
        assert torch.allclose(out["relevance_plain"], head.relevance(f_av).squeeze(-1), atol=1e-6)
