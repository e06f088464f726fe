"""PSP head (Zhou et al. CVPR 2021): Eqs. 2 and 8-10, defaults (shared checks in
test_heads_common.py)."""
import pytest
import torch
from test_heads_common import make_batch, random_inputs, span_labels

from pipeline.heads import build_head, get_head_class, train_defaults
from pipeline.heads.psp import avps_loss, positive_connections, weak_target

pytestmark = pytest.mark.usefixtures("torch_single_thread")

NAME = "psp"


def test_positive_connections_by_hand():
    beta = torch.tensor([[1.0, 2.0, -1.0],  # ReLU -> [1, 2, 0] / 3: all kept
                         [0.5, 0.5, 3.0],  # / 4 -> [.125, .125, .75]: two below tau -> [0, 0, 1]
                         [-1.0, -2.0, -3.0]])  # all negative: no connection
    expected = torch.tensor([[1 / 3, 2 / 3, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(positive_connections(beta, tau=0.3), expected)
    # tau = 0 keeps every non-negative entry (the "WPSP" row of Table 1)
    torch.testing.assert_close(positive_connections(beta[1:2], tau=0.0), torch.tensor([[0.125, 0.125, 0.75]]))


def test_avps_loss_by_hand():
    labels = span_labels([(2, 0, 2)], 4)[:, :3]  # segments 0, 1 event, 2 background -> G = [.5, .5, 0]
    v = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    a = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [-1.0, -1.0]]])  # cos = [1, 0, -1] -> S = [1, 0, 0]
    torch.testing.assert_close(avps_loss(v, a, labels, 4), torch.tensor((0.25 + 0.25) / 3))
    # identical features: S = [1/3] * 3 -> ((1/6)^2 * 2 + (1/3)^2) / 3
    torch.testing.assert_close(avps_loss(v, v, labels, 4), torch.tensor((2 / 36 + 4 / 36) / 3))


def test_fully_loss_is_ce_plus_100_avps():
    torch.manual_seed(0)
    head = build_head(NAME, visual_dim=512, audio_dim=128, num_classes=28)
    assert head.avps_weight == 100.0
    labels = span_labels([(3, 2, 8), (5, 0, 10)], 28)
    with torch.no_grad():
        out = head.eval()(*random_inputs())
        loss, parts = head.loss(out, make_batch(labels))
    ce = torch.nn.functional.cross_entropy(out["logits"].reshape(-1, 29), labels.argmax(-1).reshape(-1))
    avps = avps_loss(out["v_psp"], out["a_psp"], labels, 28)
    torch.testing.assert_close(loss, ce + 100 * avps)
    assert parts["ce"] == pytest.approx(ce.item()) and parts["avps"] == pytest.approx(avps.item())


def test_propagation_rows_are_normalised_and_use_the_setting_threshold():
    for setting, tau in (("fully", 0.099), ("weak", 0.095)):
        head = build_head(NAME, visual_dim=512, audio_dim=128, num_classes=28, setting=setting).eval()
        assert head.psp.tau == tau
        with torch.no_grad():
            out = head(*random_inputs())
        for gamma in (out["gamma_va"], out["gamma_av"]):
            sums = gamma.sum(-1)
            assert torch.all(((sums - 1).abs() < 1e-5) | (sums == 0))
    assert build_head(NAME, visual_dim=512, audio_dim=128, num_classes=28, tau_fully=0.2).psp.tau == 0.2


def test_weak_target_is_normalised_video_label():
    weak = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    expected = torch.tensor([[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(weak_target(weak), expected, atol=1e-6, rtol=0)


def test_defaults_and_train_defaults():
    d = get_head_class(NAME).DEFAULTS
    assert (d["tau_fully"], d["tau_weak"], d["avps_weight"]) == (0.099, 0.095, 100.0)
    for setting in ("fully", "weak"):
        assert train_defaults(NAME, setting)["batch_size"] == 128
