"""PSP head (Zhou et al. CVPR 2021): Eqs. 2 and 8-10, the authors' checkpoints, defaults (shared
checks in test_heads_common.py)."""
import pytest
import numpy as np
import torch
from test_heads_common import make_batch, random_inputs, span_labels

import authors_reference as R
from pipeline.heads import build_head, from_authors_state_dict, get_head_class, train_defaults
from pipeline.heads._authors import LayoutError
from pipeline.heads.psp import WeightedMILClassifier, avps_loss, positive_connections, weak_target

pytestmark = pytest.mark.usefixtures("torch_single_thread")

NAME = "psp"


def test_positive_connections_by_hand():
    beta = torch.tensor([[1.0, 2.0, -1.0],  # ReLU -> [1, 2, 0] / 3: all kept
                         [0.5, 0.5, 3.0],  # / 4 -> [.125, .125, .75]: two below tau -> [0, 0, 1]
                         [-1.0, -2.0, -3.0]])  # all negative: no connection
    expected = torch.tensor([[1 / 3, 2 / 3, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(positive_connections(beta, tau=0.3), expected)
    # tau = 0 keeps every positive entry (the "WPSP" row of Table 1)
    torch.testing.assert_close(positive_connections(beta[1:2], tau=0.0), torch.tensor([[0.125, 0.125, 0.75]]))
    # the authors' weak code: no second l1-normalisation; the code's indicator is strict (beta > tau)
    torch.testing.assert_close(positive_connections(beta[1:2], tau=0.3, renormalize=False),
                               torch.tensor([[0.0, 0.0, 0.75]]))
    assert positive_connections(torch.tensor([[1.0, 1.0, 2.0]]), tau=0.25).tolist() == [[0.0, 0.0, 1.0]]


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
    assert head.cfg.avps_weight == 100.0
    labels = span_labels([(3, 2, 8), (5, 0, 10)], 28)
    with torch.no_grad():
        out = head.eval()(*random_inputs())
        loss, parts = head.loss(out, make_batch(labels))
    ce = torch.nn.functional.cross_entropy(out["logits"].reshape(-1, 29), labels.argmax(-1).reshape(-1))
    avps = avps_loss(out["v_psp"], out["a_psp"], labels, 28)
    torch.testing.assert_close(loss, ce + 100 * avps)
    assert parts["ce"] == pytest.approx(ce.item()) and parts["avps"] == pytest.approx(avps.item())


def test_propagation_rows_are_normalised_and_use_the_setting_threshold():
    for setting, tau, extra in (("fully", 0.099, {}), ("weak", 0.095, {"renormalize_weak": True})):
        head = build_head(NAME, visual_dim=512, audio_dim=128, num_classes=28, setting=setting, **extra).eval()
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


@pytest.mark.parametrize("name", ["psp", "vscg"])
def test_weak_target_is_the_segment_shares_of_the_authors_code(name):
    """Two hand-made videos: class 0 on segments 0-3 then background; class 1 on all ten. The
    weak batch's ``shares`` (the code's prob_label) are [0.4, 0, bg 0.6] and [0, 1, bg 0]; the
    default weak loss is the BCE against them; ``weak_target: video`` keeps the old target."""
    from pipeline.training.data import SplitData
    from pipeline import settings

    labels = span_labels([(0, 0, 4), (1, 0, 10)], 2)
    visual, audio = random_inputs(2, 2, 2, 16, 8)
    split = SplitData("train", np.arange(2), np.zeros(0, np.int64), visual, audio, labels,
                      make_batch(labels)["weak"])
    batch = settings.get("weak").batch(split, torch.arange(2), torch.device("cpu"), 0, 1)
    assert "labels" not in batch
    torch.testing.assert_close(batch["shares"], torch.tensor([[0.4, 0.0, 0.6], [0.0, 1.0, 0.0]]))
    torch.testing.assert_close(batch["weak"], torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    for target, expected in (("shares", batch["shares"]), ("video", weak_target(batch["weak"]))):
        head = build_head(name, visual_dim=16, audio_dim=8, num_classes=2, setting="weak",
                          att_dim=4, weak_target=target).eval()
        out = head.forward_batch(batch)
        prob = out["video_prob"]
        bce = torch.nn.functional.binary_cross_entropy
        expect = (bce(prob, expected) if name == "psp"  # Eq. 11; VSCG: Eqs. 19-21
                  else head.cfg.smooth_lambda * bce(prob, expected) + bce(prob.softmax(-1), expected))
        torch.testing.assert_close(head.loss(out, batch)[0], expect)


def test_defaults_and_train_defaults():
    d = get_head_class(NAME).DEFAULTS
    assert (d["tau_fully"], d["tau_weak"], d["avps_weight"]) == (0.099, 0.095, 100.0)
    for setting in ("fully", "weak"):
        assert train_defaults(NAME, setting)["batch_size"] == 128


def test_weighting_branch_relu_is_the_code_and_optional():
    torch.manual_seed(0)
    clf = WeightedMILClassifier(6, 4, 3)
    f_h = clf.W5(torch.relu(clf.W4(x := torch.randn(2, 10, 6))))
    w = clf.W6(f_h)
    for relu, phi in ((True, torch.sigmoid(torch.relu(w))), (False, torch.sigmoid(w))):
        clf.weight_relu = relu
        scores, prob = clf(x)
        torch.testing.assert_close(scores, f_h * phi)
        torch.testing.assert_close(prob, torch.softmax((f_h * phi).mean(1), -1))


def test_paper_variant_of_the_weak_model():
    code = build_head(NAME, visual_dim=512, audio_dim=128, num_classes=28, setting="weak")
    paper = build_head(NAME, visual_dim=512, audio_dim=128, num_classes=28, setting="weak",
                       renormalize_weak=True, project_weak=True, weight_relu=False)
    assert not hasattr(code.psp, "v_W3") and hasattr(paper.psp, "v_W3")  # Eq. 4's W_3
    assert (code.psp.renormalize, paper.psp.renormalize) == (False, True)
    assert (code.classifier.weight_relu, paper.classifier.weight_relu) == (True, False)


@pytest.mark.parametrize("setting", ["fully", "weak"])
def test_authors_checkpoint_gives_the_authors_outputs(setting):
    sd = R.random_state_dict(R.layout(NAME, setting), seed=2)
    head = from_authors_state_dict(NAME, sd, setting).double().eval()
    visual, audio = (x.double() for x in random_inputs(h=7, w=7))
    sd64 = {k: v.double() for k, v in sd.items()}
    with torch.no_grad():
        out, theirs = head(visual, audio), R.psp(sd64, setting, audio, visual)
    pruned = out["gamma_va"] == 0
    assert pruned.any() and not pruned.all()  # the threshold is exercised
    if setting == "fully":
        R.assert_close_rel(out["logits"], theirs[0])
        R.assert_close_rel(torch.nn.functional.cosine_similarity(out["v_psp"], out["a_psp"], -1), theirs[1])
    else:
        R.assert_close_rel(out["video_prob"], theirs[0])
        R.assert_close_rel(out["logits"], theirs[1])


@pytest.mark.parametrize("edit,message", [
    (lambda sd: sd.pop("psp.a_L1.weight"), "missing key 'psp.a_L1.weight'"),
    (lambda sd: sd.pop("L3.bias"), "missing key 'L3.bias'"),  # a dead layer of theirs: still required
    (lambda sd: sd.update(extra=torch.zeros(1)), "unexpected key 'extra'"),
    (lambda sd: sd.update({"L1.weight": torch.zeros(64, 300)}),
     "'L1.weight' has shape \\[64, 300\\], expected \\[64, 256\\]"),
    (lambda sd: sd.update({"L4.bias": torch.zeros(3)}), "'L4.bias' has shape \\[3\\], expected \\[2\\]"),
    (lambda sd: sd.update({"L2.weight": 1}), "'L2.weight' is a int, not a tensor"),
])
def test_authors_checkpoint_is_read_strictly(edit, message):
    sd = R.random_state_dict(R.layout(NAME, "fully"))
    edit(sd)
    with pytest.raises(LayoutError, match=f"^psp \\(fully\\): {message}"):
        from_authors_state_dict(NAME, sd, "fully")


def test_authors_checkpoint_of_the_other_setting_is_refused():
    with pytest.raises(LayoutError, match="psp \\(weak\\): "):
        from_authors_state_dict(NAME, R.random_state_dict(R.layout(NAME, "fully")), "weak")
