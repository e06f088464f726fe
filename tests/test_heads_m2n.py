"""M2N head: shapes, parameter count, no dead layers, overfitting, equations and the CML metric."""
import pytest
import torch

from pipeline.heads import build_head, count_parameters
from pipeline.heads.m2n import (Modulation, best_window, cross_modal_localization_accuracy,
                                proposal_map, window_localization_accuracy)

C = 28
TINY = {"d_model": 16, "att_hidden": 16, "att_dim": 8}


@pytest.fixture(autouse=True)
def one_thread():
    """Small ops on a shared 2-core machine: intra-op threads only add contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_batch(b=2, c=C, h=7, w=7, cv=512, ca=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(b, 10, c + 1)
    labels[..., c] = 1
    for i in range(b):  # one event class per video, on a contiguous block
        start, end = i % 4, 6 + i % 4
        labels[i, start:end, c] = 0
        labels[i, start:end, i % c] = 1
    return {"visual": torch.randn(b, 10, h, w, cv, generator=g),
            "audio": torch.randn(b, 10, ca, generator=g),
            "labels": labels, "weak": labels.max(1).values, "epoch": 5, "epochs": 10}


@pytest.mark.parametrize("h,w,cv,ca", [(7, 7, 512, 128), (4, 5, 2048, 2048)])
def test_output_shapes(h, w, cv, ca):
    torch.manual_seed(0)
    head = build_head("m2n", visual_dim=cv, audio_dim=ca, num_classes=C).eval()
    batch = make_batch(h=h, w=w, cv=cv, ca=ca)
    with torch.no_grad():
        out = head(batch["visual"], batch["audio"])
        v, a = head.cross_modal_embed(batch["visual"], batch["audio"])
        mask = batch["labels"][..., -1] == 0
        rel = head.cross_modal_relevance(batch["visual"], batch["audio"], mask, "a2v")
    assert out["relevance"].shape == (2, 10) and out["class_logits"].shape == (2, C)
    assert v.shape == a.shape == (2, 10, 256) and rel.shape == (2, 10)
    pred = head.predict(out)
    assert pred.shape == (2, 10) and pred.dtype == torch.long
    assert int(pred.min()) >= 0 and int(pred.max()) <= C
    assert torch.isfinite(head.loss(out, batch)[0])
    assert head.supports_cross_modal


def test_fully_supervised_only():
    with pytest.raises(ValueError, match="fully"):
        build_head("m2n", visual_dim=512, audio_dim=128, num_classes=C, setting="weak")


def test_parameter_count():
    head = build_head("m2n", visual_dim=512, audio_dim=128, num_classes=C)
    n = count_parameters(head)
    print(f"m2n fully: {n} trainable parameters (no public code to compare)")
    assert abs(n - 3.84e6) / 3.84e6 < 0.05  # as measured when written; guards silent changes


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    head = build_head("m2n", visual_dim=512, audio_dim=128, num_classes=C)
    batch = make_batch(h=2, w=2)
    loss, _ = head.loss(head(batch["visual"], batch["audio"]), batch)
    loss.backward()
    dead = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead


def test_overfits_a_tiny_batch():
    torch.manual_seed(0)
    head = build_head("m2n", visual_dim=16, audio_dim=8, num_classes=4, **TINY)
    batch = make_batch(b=4, c=4, h=2, w=2, cv=16, ca=8)
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


def test_proposal_map_eq9():
    f = torch.tensor([[[1.0], [2.0], [3.0], [6.0]]])  # (B=1, N=4, d=1)
    props = proposal_map(f)[0, :, :, 0]
    assert props[0, 0] == 1 and props[0, 2] == 2 and props[1, 3] == (2 + 3 + 6) / 3
    assert torch.equal(props, props.T)  # lower triangle mirrors the upper one


def test_modulation_eq7():
    torch.manual_seed(0)
    mod = Modulation(4, heads=2, dropout=0.0).eval()
    with torch.no_grad():  # gamma = tanh(atanh(0.5)) = 0.5, beta = tanh(0.2)
        mod.to_gamma.weight.zero_()
        mod.to_gamma.bias.fill_(float(torch.atanh(torch.tensor(0.5))))
        mod.to_beta.weight.zero_()
        mod.to_beta.bias.fill_(0.2)
        f = torch.tensor([[[1.0, 2.0, 3.0, 6.0]]])
        mu, sigma = 3.0, (((f - 3.0) ** 2).mean()) ** 0.5  # biased std over channels
        expect = 0.5 * (f - mu) / sigma + torch.tanh(torch.tensor(0.2))
        assert torch.allclose(mod(f), expect, atol=1e-4)


def test_best_window_is_max_contiguous_sum():
    scores = torch.tensor([0.0, 5.0, -1.0, 2.0, 2.0, 0.0])
    assert best_window(scores, 1) == 1
    assert best_window(scores, 2) == 0  # sums 5, 4, 1, 4, 2
    assert best_window(scores, 3) == 1  # sums 4, 6, 3, 4


def test_window_localization_accuracy_known_answer():
    relevance = torch.tensor([
        [0.0, 0.0, 0.9, 0.8, 0.7, 0.0, 0.0, 0.0, 0.0, 0.0],  # truth 2..4 -> window 2..4: correct
        [0.9, 0.9, 0.9, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # truth 1..3 -> window 0..2: wrong
        [0.1] * 10,  # truth is the whole video: the only 10-window is correct
        [0.5] * 10,  # two events (not contiguous): skipped
    ])
    mask = torch.zeros(4, 10, dtype=torch.bool)
    mask[0, 2:5] = True
    mask[1, 1:4] = True
    mask[2, :] = True
    mask[3, [1, 5]] = True
    assert window_localization_accuracy(relevance, mask) == pytest.approx(2 / 3)


def test_a2v_v2a_accuracy_from_embeddings():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3, 10, 8, generator=g)
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[0, 3:7] = True
    mask[1, 0:2] = True
    mask[2, 5:10] = True
    # Both modalities share the embeddings on the event and are far apart elsewhere: both
    # directions localize every event exactly.
    audio = torch.where(mask.unsqueeze(-1), base, base - 100.0)
    visual = torch.where(mask.unsqueeze(-1), base, base + 100.0)
    assert cross_modal_localization_accuracy(visual, audio, mask, "a2v") == 1.0
    assert cross_modal_localization_accuracy(visual, audio, mask, "v2a") == 1.0
    # Move video 0's matching visual segments two steps later: its window is off -> 2 / 3.
    shifted = visual.clone()
    shifted[0] = base[0] + 100.0
    shifted[0, 5:9] = base[0, 3:7]
    assert cross_modal_localization_accuracy(shifted, audio, mask, "a2v") == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        cross_modal_localization_accuracy(visual, audio, mask, "x2y")
