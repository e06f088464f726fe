"""AVEL head (Tian et al. ECCV 2018): shapes, size, gradients, overfitting, attention."""
import pytest
import torch
from torch.nn import functional as F

from pipeline.heads import build_head, count_parameters, train_defaults
from pipeline.heads._registry import TRAIN_KEYS

NAME = "avel"
TARGET_PARAMS = {"fully": 1.34e6, "weak": 1.34e6}  # authors' code, VGG-19 (512x7x7) + VGGish (128)
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
    assert out["logits"].shape == (2, 10, 29)
    assert out["attention"].shape == (2, 10, h * w)
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
    if setting == "fully":
        assert (head.predict(out) == labels.argmax(-1)).all()
    else:
        # MIL trains only the max segment, so segment accuracy is not the measure; the loss (on
        # softmax outputs, as the authors' code) must close >90% of its gap to its minimum.
        floor = float(F.multilabel_soft_margin_loss(batch["weak"], batch["weak"]))
        assert (first - final) / (first - floor) > 0.9
        assert (out["video_prob"].argmax(-1) == torch.arange(4)).all()


def test_attention_sums_to_one_over_positions():
    head = build_head(NAME, visual_dim=512, audio_dim=128, num_classes=28).eval()
    with torch.no_grad():
        alpha = head(*_inputs(h=5, w=3))["attention"]
    assert alpha.shape == (2, 10, 15)
    assert (alpha >= 0).all()
    torch.testing.assert_close(alpha.sum(-1), torch.ones(2, 10))


def test_train_defaults_are_complete():
    for setting in ("fully", "weak"):
        assert set(train_defaults(NAME, setting)) == set(TRAIN_KEYS)
    assert train_defaults(NAME, "fully")["lr"] == 1e-3 and train_defaults(NAME, "fully")["batch_size"] == 64
