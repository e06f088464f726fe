"""CACE-Net head: BECE (Eq. 7-8) and its schedule, the authors' class branch, and the import of
their checkpoints checked against their forward (``cmbs_authors``). Shared checks in
test_heads_common.py."""
import math

import cmbs_authors as authors
import pytest
import torch
from test_heads_cmbs import SMALL, authors_inputs, close
from test_heads_common import CACE_TINY, block_batch
from torch.nn import functional as F

from pipeline.heads import build_head, count_parameters, get_head_class
from pipeline.heads._cmbs_blocks import localize
from pipeline.heads.cace import bece_loss

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_bece_switches_on_after_an_eighth_of_the_epochs():
    torch.manual_seed(0)
    head = build_head("cace", visual_dim=16, audio_dim=8, num_classes=4, **CACE_TINY)
    before = block_batch(b=2, c=4, h=2, w=2, cv=16, ca=8, epoch=24, epochs=200)
    after = dict(before, epoch=25)
    out = head(before["visual"], before["audio"])
    assert "contrast" not in head.loss(out, before)[1]
    assert torch.equal(head.predict(out), localize(out["relevance_plain"], out["class_logits"]))
    assert "contrast" in head.loss(out, after)[1]
    assert torch.equal(head.predict(out), localize(out["relevance"], out["class_logits"]))
    assert bool(head.state_dict()["bece_trained"])  # travels with checkpoints


def test_bece_loss_matches_hand_computation():
    # One video, T = 2, unit vectors (so the L2 normalisation is the identity), tau = 0.5.
    q1, q2, k1, k2 = (1.0, 0.0), (0.0, 1.0), (0.6, 0.8), (0.8, 0.6)
    f = [q1, q2, k1, k2]  # sample set I = [queries; keys]
    dot = [[a[0] * b[0] + a[1] * b[1] for b in f] for a in f]
    tau = 0.5

    def term(i, positives):
        den = sum(math.exp(dot[i][p] / tau) for p in range(4) if p != i)
        return -math.log(sum(math.exp(dot[i][k] / tau) for k in positives) / len(positives) / den)

    query = torch.tensor([[q1, q2]])
    key = torch.tensor([[k1, k2]])
    # Segment 0 is an event, segment 1 background: each sample's only positive is its own copy.
    expect = (term(0, [2]) + term(1, [3]) + term(2, [0]) + term(3, [1])) / 4
    got = bece_loss(query, key, torch.tensor([[1.0, 0.0]]), tau).item()
    assert math.isclose(got, expect, rel_tol=1e-5)
    # Both events: every other sample is a positive (|K(i)| = 3).
    expect = sum(term(i, [p for p in range(4) if p != i]) for i in range(4)) / 4
    got = bece_loss(query, key, torch.tensor([[1.0, 1.0]]), tau).item()
    assert math.isclose(got, expect, rel_tol=1e-5)
    # Normalisation: scaling the inputs changes nothing.
    assert math.isclose(bece_loss(3 * query, 2 * key, torch.tensor([[1.0, 0.0]]), tau).item(),
                        bece_loss(query, key, torch.tensor([[1.0, 0.0]]), tau).item(), rel_tol=1e-5)


def test_bece_fusion_eq8_and_noise_off():
    torch.manual_seed(0)
    head = build_head("cace", visual_dim=16, audio_dim=8, num_classes=4, bece_noise_std=0.0,
                      bece_lambda=0.6, **CACE_TINY).eval()
    batch = block_batch(b=2, c=4, h=2, w=2, cv=16, ca=8)
    with torch.no_grad():
        out = head(batch["visual"], batch["audio"])
        assert torch.equal(out["bece_query"], out["bece_key"])  # no augmentation noise
        f_av = out["fused"]
        f_o = f_av + 0.6 * torch.relu(head.project[0](f_av))  # Eq. 8
        assert torch.allclose(out["relevance"], head.relevance(f_o).squeeze(-1), atol=1e-6)
        assert torch.allclose(out["relevance_plain"], head.relevance(f_av).squeeze(-1), atol=1e-6)


def test_code_variant_adds_the_cas_score_and_its_loss():
    """supv_main.py: class logits y + gamma * av_score; loss adds CE(av_score) and applies
    BCEWithLogits to the sigmoided gate; the paper's variant (Eq. 11-12) builds no CAS."""
    torch.manual_seed(0)
    head = build_head("cace", visual_dim=16, audio_dim=8, num_classes=4, **CACE_TINY).eval()
    batch = block_batch(b=2, c=4, h=2, w=2, cv=16, ca=8, epoch=0, epochs=200)
    with torch.no_grad():
        out = head(batch["visual"], batch["audio"])
        raw = head.classifier(out["fused"].max(1).values)
        assert torch.allclose(out["class_logits"], raw + 0.3 * out["av_score"], atol=1e-6)
        loss, parts = head.loss(out, batch)
    rel, event = 1 - batch["labels"][..., -1], torch.tensor([0, 1])
    expect = (F.cross_entropy(out["class_logits"], event) + F.cross_entropy(out["av_score"], event)
              + F.binary_cross_entropy_with_logits(out["relevance_plain"], rel)
              + F.binary_cross_entropy_with_logits(out["gate_av"], rel))
    assert math.isclose(loss.item(), expect.item(), rel_tol=1e-5) and "cas" in parts
    paper = build_head("cace", visual_dim=16, audio_dim=8, num_classes=4, variant="paper", **CACE_TINY)
    assert paper.trunk.visual_cas is None
    loss, parts = paper.loss(paper(batch["visual"], batch["audio"]), dict(batch, epoch=100))
    loss.backward()
    assert "cas" not in parts and "contrast" in parts
    assert not [k for k, p in paper.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]


def test_authors_checkpoint_gives_their_outputs():
    sd = authors.random_state_dict(authors.cace_layout(**SMALL, enc_ff=32, a_fc=6), seed=4)
    head = get_head_class("cace").from_authors_state_dict(sd, "fully").double().eval()
    assert bool(head.bece_trained)  # their evaluation switches BECE on
    visual, audio = authors_inputs()
    with torch.no_grad():
        out = head(visual, audio)
    plain = {k[len("module."):]: v for k, v in sd.items()}
    is_event, event_scores, gate, score, query = authors.cace_fully(plain, visual, audio)
    for ours, theirs in ((out["relevance"], is_event), (out["class_logits"], event_scores),
                         (out["gate_av"], gate), (out["av_score"], score),
                         (F.normalize(out["bece_query"], dim=-1), query)):
        close(ours, theirs)
    assert torch.equal(head.predict(out), localize(is_event, event_scores))


def test_authors_model_size():
    """Their model saves 13,118,681 values, their forward reads 9,283,417: our head's size."""
    layout = authors.cace_layout()
    assert authors.numel(layout) == 13_118_681
    sd = authors.random_state_dict(layout, dtype=torch.float32)
    head = get_head_class("cace").from_authors_state_dict(sd, "fully")
    assert count_parameters(head) == 9_283_417
    assert count_parameters(build_head("cace", visual_dim=512, audio_dim=128, num_classes=28)) == 9_283_417


def test_authors_checkpoint_is_read_strictly():
    cace = get_head_class("cace")
    sd = authors.random_state_dict(authors.cace_layout(**SMALL, enc_ff=32), prefix="")
    with pytest.raises(ValueError, match="missing key 'spatial_channel_att.v_norm2.bias'"):
        cace.from_authors_state_dict({k: v for k, v in sd.items() if "v_norm2.bias" not in k}, "fully")
    with pytest.raises(ValueError, match="missing key 'localize_module.encoder_q.0.weight'"):
        cace.from_authors_state_dict({k: v for k, v in sd.items() if "encoder_q" not in k}, "fully")
    cmbs_sd = authors.random_state_dict(authors.cmbs_layout("fully", enc_ff=32, **SMALL), prefix="")
    with pytest.raises(ValueError, match=r"^cace \(fully\): missing key 'a_fc.weight'$"):
        cace.from_authors_state_dict(cmbs_sd, "fully")  # a CMBS checkpoint
    with pytest.raises(ValueError, match="weak model does not run"):
        cace.from_authors_state_dict(sd, "weak")
