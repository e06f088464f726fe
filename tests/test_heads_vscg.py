"""VSCG head (Jiang et al. TMM 2023): shapes, size, gradients, overfitting, Eqs. 1-3 and 14-21."""
import math

import pytest
import torch

from pipeline.heads import build_head, count_parameters, train_defaults
from pipeline.heads._registry import TRAIN_KEYS
from pipeline.heads.vscg import CERE, negative_pair_filter_loss, smooth_loss

NAME = "vscg"
TARGET_PARAMS = {"fully": 2.53e6, "weak": 2.26e6}  # authors' code, VGG-19 (512x7x7) + VGGish (128)
DIMS = [(7, 7, 512, 128), (7, 7, 2048, 2048), (4, 6, 512, 128)]  # H, W, Cv, Ca


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny tensors: one intra-op thread is faster and steadier on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _inputs(b=2, h=7, w=7, cv=512, ca=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 10, h, w, cv, generator=g).relu(), torch.randn(b, 10, ca, generator=g)


def _labels(spans, num_classes):
    """One-hot (B, 10, C+1) from (class, start, end) spans; other segments background."""
    labels = torch.zeros(len(spans), 10, num_classes + 1)
    labels[..., num_classes] = 1
    for i, (c, s, e) in enumerate(spans):
        labels[i, s:e, num_classes] = 0
        labels[i, s:e, c] = 1
    return labels


def _batch(labels):
    return {"labels": labels, "weak": labels.max(dim=1).values, "epoch": 0, "epochs": 1}


@pytest.mark.parametrize("setting", ["fully", "weak"])
@pytest.mark.parametrize("h,w,cv,ca", DIMS)
def test_output_shapes(setting, h, w, cv, ca):
    head = build_head(NAME, visual_dim=cv, audio_dim=ca, num_classes=28, setting=setting).eval()
    visual, audio = _inputs(h=h, w=w, cv=cv, ca=ca)
    with torch.no_grad():
        out = head(visual, audio)
    if setting == "fully":
        assert out["is_event"].shape == (2, 10) and out["event_logits"].shape == (2, 28)
        assert out["v_final"].shape == out["a_final"].shape == (2, 10, 256)
    else:
        assert out["logits"].shape == (2, 10, 29) and out["video_prob"].shape == (2, 29)
    pred = head.predict(out)
    assert pred.shape == (2, 10) and pred.dtype == torch.long
    assert int(pred.min()) >= 0 and int(pred.max()) <= 28
    loss, parts = head.loss(out, _batch(_labels([(3, 2, 8), (5, 0, 10)], 28)))
    assert loss.ndim == 0 and torch.isfinite(loss) and "loss" in parts


@pytest.mark.parametrize("setting", ["fully", "weak"])
def test_parameter_count_matches_authors_code(setting):
    head = build_head(NAME, visual_dim=512, audio_dim=128, num_classes=28, setting=setting)
    n = count_parameters(head)
    print(f"{NAME} {setting}: {n} trainable parameters (target {TARGET_PARAMS[setting]:.0f})")
    assert abs(n - TARGET_PARAMS[setting]) / TARGET_PARAMS[setting] < 0.05


@pytest.mark.parametrize("setting", ["fully", "weak"])
def test_every_parameter_receives_gradient(setting):
    torch.manual_seed(0)
    head = build_head(NAME, visual_dim=512, audio_dim=128, num_classes=28, setting=setting)
    loss, _ = head.loss(head(*_inputs()), _batch(_labels([(3, 2, 8), (5, 0, 10)], 28)))
    loss.backward()
    dead = [k for k, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead


@pytest.mark.parametrize("setting", ["fully", "weak"])
def test_overfits_tiny_batch(setting):
    torch.manual_seed(0)
    c = 5
    head = build_head(NAME, visual_dim=64, audio_dim=32, num_classes=c, setting=setting)
    visual, audio = _inputs(b=4, h=3, w=3, cv=64, ca=32)
    spans = ([(k, 0, 10) for k in range(4)] if setting == "weak"
             else [(0, 0, 10), (1, 2, 8), (2, 0, 6), (3, 4, 10)])
    labels = _labels(spans, c)
    batch = _batch(labels)
    opt = torch.optim.Adam(head.parameters(), lr=5e-3)
    for step in range(60):
        loss, _ = head.loss(head(visual, audio), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = float(loss.detach()) if step == 0 else first
    head.eval()
    with torch.no_grad():
        out = head(visual, audio)
        final = float(head.loss(out, batch)[0])
    assert (head.predict(out) == labels.argmax(-1)).all() or final < 0.1 * first


def test_negative_pair_filter_loss_by_hand():
    labels = _labels([(1, 0, 1)], 2)[:, :2]  # T=2, C=2: segment 0 is class 1, segment 1 background
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
    from pipeline.heads import get_head_class
    d = get_head_class(NAME).DEFAULTS
    assert (d["event_threshold"], d["smooth_lambda"], d["r_s"], d["r_i_weak"]) == (0.7, 2.0, 0.2, 0.5)
    for setting in ("fully", "weak"):
        assert set(train_defaults(NAME, setting)) == set(TRAIN_KEYS)
        assert train_defaults(NAME, setting)["batch_size"] == 128
