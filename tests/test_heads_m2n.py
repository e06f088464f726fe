"""M2N head: equations, the CML setting (Eq. 18) and its window metric (shared checks in
test_heads_common.py)."""
import pytest
import torch

from pipeline.heads import build_head
from pipeline.heads.m2n import Modulation, proposal_map
from pipeline.settings.cml import (best_window, cml_evaluate, window_localization_accuracy,
                                   window_predictions)
from test_heads_common import M2N_TINY, make_batch, random_inputs, span_labels

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


def test_window_predictions_mark_the_best_l_window():
    relevance = torch.tensor([[0.0, 5.0, -1.0, 2.0, 2.0, 0.0],
                              [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1],  # l = 3: sums 4, 6, 3, 4 -> segments 1..3
                         [0, 0, 0, 0, 0, 0]], dtype=torch.bool)  # no event: empty window
    assert window_predictions(relevance, mask).int().tolist() == [[0, 1, 1, 1, 0, 0],
                                                                  [0, 0, 0, 0, 0, 0]]


def _cml_head(seed=0):
    torch.manual_seed(seed)
    return build_head("m2n", visual_dim=16, audio_dim=8, num_classes=4, setting="cml", **M2N_TINY)


def _cml_batch():
    visual, audio = random_inputs(b=3, h=2, w=2, cv=16, ca=8, relu=False)
    labels = span_labels([(0, 2, 5), (1, 0, 10), (2, 0, 0)], 4)  # video 2: no event segment
    return make_batch(labels, visual, audio)


def test_cml_loss_is_eq18_over_videos_with_an_event():
    head = _cml_head()
    batch = _cml_batch()
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 10, generator=g, requires_grad=True)  # rows 0-2 A2V, 3-5 V2A
    loss, parts = head.loss({"relevance": logits}, batch)
    events = (batch["labels"][..., -1] == 0).float().repeat(2, 1)
    p = torch.sigmoid(logits.detach())
    bce = -(events * p.log() + (1 - events) * (1 - p).log()).mean(1)  # Eq. 18 per video
    expect = bce[[0, 1, 3, 4]].mean()  # video 2 (rows 2 and 5) has no query
    assert loss.item() == pytest.approx(expect.item(), rel=1e-5)
    assert parts == {"relevance": pytest.approx(loss.item())}
    loss.backward()
    assert logits.grad[[2, 5]].abs().sum() == 0 and logits.grad[[0, 1, 3, 4]].abs().sum() > 0
    # No video with an event: nothing to learn, a zero loss (not NaN).
    empty = make_batch(span_labels([(0, 0, 0)], 4))
    assert head.loss({"relevance": torch.randn(2, 10)}, empty)[0].item() == 0.0


def test_cml_forward_batch_runs_both_directions_with_the_event_queries(monkeypatch):
    head = _cml_head().eval()
    batch = _cml_batch()
    events = batch["labels"][..., -1] == 0
    with torch.no_grad():
        out = head.forward_batch(batch)
        assert out["relevance"].shape == (6, 10)
        a2v = head.cross_modal_relevance(batch["visual"], batch["audio"], events, "a2v")
        v2a = head.cross_modal_relevance(batch["visual"], batch["audio"], events, "v2a")
        torch.testing.assert_close(out["relevance"], torch.cat([a2v, v2a]))
        # The query mask matters: another query gives other relevance.
        other = head.cross_modal_relevance(batch["visual"], batch["audio"], ~events, "a2v")
        assert not torch.allclose(other, a2v)
    calls = []
    monkeypatch.setattr(head, "cross_modal_relevance",
                        lambda v, a, m, d: calls.append((d, m.clone())) or torch.zeros(3, 10))
    head.forward_batch(batch)
    assert [d for d, _ in calls] == ["a2v", "v2a"]
    assert all(torch.equal(m, events) for _, m in calls)


def test_cml_head_has_no_classifier_and_no_plain_forward():
    head = _cml_head()
    assert head.classifier is None
    with pytest.raises(RuntimeError, match="cml.*forward_batch"):
        head(*random_inputs(b=1, h=2, w=2, cv=16, ca=8))
    fully = build_head("m2n", visual_dim=16, audio_dim=8, num_classes=4, **M2N_TINY)
    assert sum(p.numel() for p in fully.parameters()) - sum(p.numel() for p in head.parameters()) \
        == 16 * 4 + 4  # the classifier (Eq. 15)


class _OracleHead(torch.nn.Module):
    """Relevance = the query mask itself (A2V) or shifted one segment later (V2A)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def cross_modal_relevance(self, visual, audio, query_mask, direction):
        self.calls.append(len(visual))
        assert not self.training
        rel = query_mask.float()
        return rel if direction == "a2v" else rel.roll(1, dims=1)


def test_cml_evaluate_batches_both_directions_and_averages():
    labels = span_labels([(0, 2, 5), (1, 0, 10), (0, 9, 10), (2, 4, 6), (1, 1, 3)], 3)
    visual, audio = torch.zeros(5, 10, 1, 1, 2), torch.zeros(5, 10, 2)
    head = _OracleHead()
    acc, windows = cml_evaluate(head, visual, audio, labels, torch.device("cpu"), batch_size=2)
    assert head.calls == [2, 2, 2, 2, 1, 1] and head.training  # batches x directions; mode restored
    # V2A: every window one segment late (the last one wraps to segment 0), so wrong except the
    # whole-video event, whose only window is the video: 1 / 5.
    assert acc == {"a2v": 1.0, "v2a": pytest.approx(1 / 5), "average": pytest.approx(0.6)}
    events = labels[..., -1] == 0
    assert torch.equal(windows["a2v"], events)
    assert windows["v2a"][0].nonzero().flatten().tolist() == [3, 4, 5]


def test_cml_query_reads_only_the_query_modality_and_its_event_segments():
    """Sec. 3.5: the query modality's event segments averaged into one vector, repeated at every
    position; it never depends on the searched sequence (no leak of the answer)."""
    head = _cml_head().eval()
    batch = _cml_batch()
    inputs = {"visual": batch["visual"], "audio": batch["audio"]}
    events = batch["labels"][..., -1] == 0
    new_v, new_a = random_inputs(b=3, h=2, w=2, cv=16, ca=8, relu=False, seed=5)
    outside = (~events)[..., None]  # (B, T, 1): segments outside the query
    cases = {  # direction: (another searched sequence, other query segments outside the event)
        "a2v": ({"visual": new_v}, {"audio": torch.where(outside, new_a, batch["audio"])}),
        "v2a": ({"audio": new_a},
                {"visual": torch.where(outside[..., None, None], new_v, batch["visual"])}),
    }
    with torch.no_grad():
        for d, (searched, outside_query) in cases.items():
            def query(**change):
                return head.cross_modal_query(**{**inputs, **change}, query_mask=events,
                                              direction=d)

            def relevance(**change):
                return head.cross_modal_relevance(**{**inputs, **change}, query_mask=events,
                                                  direction=d)
            q = query()
            assert q.shape == (3, M2N_TINY["d_model"])
            torch.testing.assert_close(query(**searched), q)
            torch.testing.assert_close(query(**outside_query), q)
            torch.testing.assert_close(relevance(**outside_query), relevance())
            assert not torch.allclose(relevance(**searched), relevance())  # what is searched counts


def _real_cml_test_events() -> torch.Tensor:
    """Event masks (402, 10) of the AVE cml test split (raw/ave/cml), full-length ones excluded."""
    from pathlib import Path

    from pipeline.data.ave import load_annotations
    from pipeline.settings.cml import cml_exclusions

    with pytest.warns(UserWarning):  # the real file's line 27 (empty interval)
        ann = load_annotations(Path(__file__).resolve().parents[1] / "raw" / "ave")
    labels = ann.labels()[ann.cml_order("test")]
    excluded = cml_exclusions(labels)
    assert not excluded["full_length"].any() and not excluded["no_event"].any()
    return torch.from_numpy(labels[..., -1] == 0)


def test_random_window_scores_chance_on_the_real_cml_test_split():
    """A model whose relevance picks one of the 10 - l + 1 windows of the query length l at
    random scores mean(1 / (10 - l + 1)) on the cml test split (no full-length event there)."""
    mask = _real_cml_test_events()
    lengths = mask.sum(1)
    chance = float((1 / (10 - lengths.double() + 1)).mean())
    g = torch.Generator().manual_seed(0)
    accs = []
    for _ in range(50):
        starts = (torch.rand(len(mask), generator=g) * (11 - lengths)).long()
        pos = torch.arange(10)
        rel = ((pos >= starts[:, None]) & (pos < (starts + lengths)[:, None])).float()
        accs.append(window_localization_accuracy(rel, mask))
    assert len(mask) == 402 and chance == pytest.approx(0.2077, abs=1e-4)
    assert sum(accs) / len(accs) == pytest.approx(chance, abs=0.01)


def test_iid_random_scores_follow_the_max_window_sum_rule_on_the_real_cml_test_split():
    """Independent random segment scores: the max-sum window favours the two edge windows
    (P(start) per length, simulated here), and most AVE events touch an edge, so the expected
    accuracy is above the uniform chance level; far below the 0.7 that full-length events gave."""
    mask = _real_cml_test_events()
    lengths = mask.sum(1)
    first = mask.int().argmax(1)
    g = torch.Generator().manual_seed(1)
    p_start = {}
    for l in lengths.unique().tolist():
        sums = torch.rand(20000, 10, generator=g).unfold(1, l, 1).sum(-1)
        p_start[l] = torch.bincount(sums.argmax(1), minlength=11 - l).double() / 20000
    hits = sum(p_start[l][f] for l, f in zip(lengths.tolist(), first.tolist()))
    expected = float(hits / len(mask))
    accs = [window_localization_accuracy(torch.rand(mask.shape, generator=g), mask)
            for _ in range(50)]
    assert sum(accs) / len(accs) == pytest.approx(expected, abs=0.01)
    assert 0.21 < expected < 0.3
