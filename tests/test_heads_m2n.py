"""M2N head: equations and the CML metric (shared checks in test_heads_common.py)."""
import pytest
import torch

from pipeline.heads.m2n import (Modulation, best_window, cross_modal_localization_accuracy,
                                proposal_map, window_localization_accuracy)

pytestmark = pytest.mark.usefixtures("torch_single_thread")


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
