"""VSCG head (Jiang et al. TMM 2023): Eqs. 1-3 and 14-21, the authors' checkpoints, defaults
(shared checks in test_heads_common.py)."""
import math

import pytest
import torch
from test_heads_common import random_inputs, span_labels

import authors_reference as R
from pipeline.heads import build_head, from_authors_state_dict, get_head_class, train_defaults
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
    assert head.cfg.event_threshold == 0.7
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
    assert d["r_i_fully"] == 0.1  # the code's ESCM dropout (the paper's r_i = 0.2 is an override)
    for setting in ("fully", "weak"):
        assert train_defaults(NAME, setting)["batch_size"] == 128


@pytest.mark.parametrize("setting", ["fully", "weak"])
def test_authors_checkpoint_gives_the_authors_outputs(setting):
    sd = R.random_state_dict(R.layout(NAME, setting), seed=3)
    head = from_authors_state_dict(NAME, sd, setting).double().eval()
    visual, audio = (x.double() for x in random_inputs(h=7, w=7))
    sd64 = {k: v.double() for k, v in sd.items()}
    with torch.no_grad():
        out, theirs = head(visual, audio), R.vscg(sd64, setting, audio, visual)
    if setting == "fully":
        cross_att = torch.nn.functional.cosine_similarity(out["v_final"], out["a_final"], -1)
        for ours, ref in zip((out["is_event"], out["event_logits"], cross_att), theirs):
            R.assert_close_rel(ours, ref)
    else:
        R.assert_close_rel(out["video_prob"], theirs[0])
        R.assert_close_rel(out["logits"], theirs[1])


def test_paper_variant_of_the_weak_isce():
    """isce_weak=paper: both GRUs start from E^av (Eq. 9) and Eq. 12 projects before the LayerNorm."""
    kw = dict(visual_dim=16, audio_dim=8, num_classes=3, setting="weak", att_dim=4, isce_weak="paper")
    torch.manual_seed(0)
    head = build_head(NAME, **kw).eval()
    assert not hasattr(head, "a_init") and head.a_W1.weight.shape == (256, 256)
    visual, audio = random_inputs(h=2, w=2, cv=16, ca=8)
    with torch.no_grad():
        out = head(visual, audio)
        alpha, psp = head._encode(visual, audio)
        e_av = 0.5 * (head.cere(psp["a_psp"]) + head.cere(psp["v_psp"]))
        f = [head.layer_norm(torch.relu(w(gru(x, e_av)[0]))) for w, gru, x in
             ((head.a_W1, head.a_gru, psp["a_psp"]), (head.v_W1, head.v_gru, psp["v_psp"]))]
        torch.testing.assert_close(out["logits"], head.classifier(0.5 * (f[0] + f[1]))[0])
    with pytest.raises(ValueError, match=r"expected one of 'code', 'paper' like the default 'code', got 'eq9'"):
        build_head(NAME, **{**kw, "isce_weak": "eq9"})
