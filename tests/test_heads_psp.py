"""PSP head (Zhou et al. CVPR 2021): shapes, size, gradients, overfitting, Eqs. 2 and 8-10."""
import pytest
import torch

from pipeline.heads import build_head, count_parameters, train_defaults
from pipeline.heads._registry import TRAIN_KEYS
from pipeline.heads.psp import avps_loss, positive_connections, weak_target

NAME = "psp"
TARGET_PARAMS = {"fully": 1.55e6, "weak": 1.25e6}  # authors' code, VGG-19 (512x7x7) + VGGish (128)
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
    assert out["v_psp"].shape == out["a_psp"].shape == (2, 10, 256)
    assert out["gamma_va"].shape == out["gamma_av"].shape == (2, 10, 10)
    if setting == "weak":
        assert out["video_prob"].shape == (2, 29)
        torch.testing.assert_close(out["video_prob"].sum(-1), torch.ones(2))
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


def test_positive_connections_by_hand():
    beta = torch.tensor([[1.0, 2.0, -1.0],  # ReLU -> [1, 2, 0] / 3: all kept
                         [0.5, 0.5, 3.0],  # / 4 -> [.125, .125, .75]: two below tau -> [0, 0, 1]
                         [-1.0, -2.0, -3.0]])  # all negative: no connection
    expected = torch.tensor([[1 / 3, 2 / 3, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(positive_connections(beta, tau=0.3), expected)
    # tau = 0 keeps every non-negative entry (the "WPSP" row of Table 1)
    torch.testing.assert_close(positive_connections(beta[1:2], tau=0.0), torch.tensor([[0.125, 0.125, 0.75]]))


def test_avps_loss_by_hand():
    labels = _labels([(2, 0, 2)], 4)[:, :3]  # segments 0, 1 event, 2 background -> G = [.5, .5, 0]
    v = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    a = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [-1.0, -1.0]]])  # cos = [1, 0, -1] -> S = [1, 0, 0]
    torch.testing.assert_close(avps_loss(v, a, labels, 4), torch.tensor((0.25 + 0.25) / 3))
    # identical features: S = [1/3] * 3 -> ((1/6)^2 * 2 + (1/3)^2) / 3
    torch.testing.assert_close(avps_loss(v, v, labels, 4), torch.tensor((2 / 36 + 4 / 36) / 3))


def test_fully_loss_is_ce_plus_100_avps():
    torch.manual_seed(0)
    head = build_head(NAME, visual_dim=512, audio_dim=128, num_classes=28)
    assert head.avps_weight == 100.0
    labels = _labels([(3, 2, 8), (5, 0, 10)], 28)
    with torch.no_grad():
        out = head.eval()(*_inputs())
        loss, parts = head.loss(out, _batch(labels))
    ce = torch.nn.functional.cross_entropy(out["logits"].reshape(-1, 29), labels.argmax(-1).reshape(-1))
    avps = avps_loss(out["v_psp"], out["a_psp"], labels, 28)
    torch.testing.assert_close(loss, ce + 100 * avps)
    assert parts["ce"] == pytest.approx(ce.item()) and parts["avps"] == pytest.approx(avps.item())


def test_propagation_rows_are_normalised_and_use_the_setting_threshold():
    for setting, tau in (("fully", 0.099), ("weak", 0.095)):
        head = build_head(NAME, visual_dim=512, audio_dim=128, num_classes=28, setting=setting).eval()
        assert head.psp.tau == tau
        with torch.no_grad():
            out = head(*_inputs())
        for gamma in (out["gamma_va"], out["gamma_av"]):
            sums = gamma.sum(-1)
            assert torch.all(((sums - 1).abs() < 1e-5) | (sums == 0))
    assert build_head(NAME, visual_dim=512, audio_dim=128, num_classes=28, tau_fully=0.2).psp.tau == 0.2


def test_weak_target_is_normalised_video_label():
    weak = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    expected = torch.tensor([[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(weak_target(weak), expected, atol=1e-6, rtol=0)


def test_defaults_and_train_defaults():
    from pipeline.heads import get_head_class
    d = get_head_class(NAME).DEFAULTS
    assert (d["tau_fully"], d["tau_weak"], d["avps_weight"]) == (0.099, 0.095, 100.0)
    for setting in ("fully", "weak"):
        assert set(train_defaults(NAME, setting)) == set(TRAIN_KEYS)
        assert train_defaults(NAME, setting)["batch_size"] == 128
