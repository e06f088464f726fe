"""VSCG head (Jiang et al. TMM 2023): Eqs. 1-3 and 14-21, defaults (shared checks in
test_heads_common.py)."""
import math

import pytest
import torch
from test_heads_common import span_labels

from pipeline.heads import build_head, get_head_class, train_defaults
from pipeline.heads.vscg import CERE, negative_pair_filter_loss, smooth_loss

pytestmark = pytest.mark.usefixtures("torch_single_thread")

NAME = "vscg"


def test_negative_pair_filter_loss_by_hand():
    labels = span_labels([(1, 0, 1)], 2)[:, :2]  # T=2, C=2: segment 0 is class 1, segment 1 background
    is_event = torch.tensor([[2.0, -1.0]])
    event_logits = torch.tensor([[0.5, 1.5]])
    v = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    a = v.clone()  # cos = [1, 1] -> s = [.5, .5]; y_tl = [1, 0]
    l_c = math.log(1 + math.exp(-1.0))  # CE of o_c against the video class 1
    l_t = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(-1.0))) / 2  # BCE(sigmoid(o_t), [1, 0])
    l_avps = (0.25 + 0.25) / 2
    loss, parts = negative_pair_filter_loss(is_event, event_logits, v, a, labels, num_classes=2)
    torch.testing.assert_close(loss, torch.tensor(l_c + l_t + l_avps))
    assert parts["l_c"] == pytest.approx(l_c) and parts["l_t"] == pytest.approx(l_t)
    assert parts["l_avps"] == pytest.approx(l_avps)


def test_smooth_loss_by_hand():
    p = torch.tensor([[0.7, 0.2, 0.1]])
    y = torch.tensor([[1.0, 0.0, 0.0]])
    bce = lambda q: -(math.log(q[0]) + math.log(1 - q[1]) + math.log(1 - q[2])) / 3  # noqa: E731
    z = sum(math.exp(x) for x in (0.7, 0.2, 0.1))
    s = [math.exp(x) / z for x in (0.7, 0.2, 0.1)]
    loss, parts = smooth_loss(p, y, lam=2.0)
    torch.testing.assert_close(loss, torch.tensor(2 * bce([0.7, 0.2, 0.1]) + bce(s)))
    assert parts["l_s_bce"] == pytest.approx(bce(s), rel=1e-5)


def test_fully_prediction_thresholds_event_relevance():
    head = build_head(NAME, visual_dim=512, audio_dim=128, num_classes=2)
    assert head.event_threshold == 0.7
    out = {"is_event": torch.tensor([[1.0, 0.5, 3.0]]),  # sigmoid: .731 > .7, .622 < .7, .953
           "event_logits": torch.tensor([[0.1, 2.0]])}
    assert head.predict(out).tolist() == [[1, 2, 1]]


def test_cere_gives_one_video_vector_per_gru_direction():
    cere = CERE(256, 128, 5)
    assert cere(torch.randn(3, 10, 256)).shape == (2, 3, 128)
    with pytest.raises(ValueError, match="T // 4 == 2"):
        cere(torch.randn(3, 6, 256))


def test_defaults_and_train_defaults():
    d = get_head_class(NAME).DEFAULTS
    assert (d["event_threshold"], d["smooth_lambda"], d["r_s"], d["r_i_weak"]) == (0.7, 2.0, 0.2, 0.5)
    for setting in ("fully", "weak"):
        assert train_defaults(NAME, setting)["batch_size"] == 128
