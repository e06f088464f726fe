"""The training-side switches of ``train.recipe`` (authors | paper), each on hand-made tensors,
and the one key that flips them all (the rules written out from the authors' scripts here, so
no test reads fetched code)."""
from __future__ import annotations

import pytest
import torch

from pipeline.config import ConfigError, load_params
from pipeline.heads import _registry, resolve
from pipeline.heads._cmbs_blocks import fully_loss
from pipeline.settings.targets import video_event_class
from pipeline.heads.psp import AVPSBuffer, avps_indicator, avps_loss
from pipeline.heads.vscg import negative_pair_filter_loss
from pipeline.training import checkpoint as ckpt_io
from pipeline.training.loop import batch_order, run_spec, train
from test_training import _ToyHead, register_head, toyset  # noqa: F401  (fixture; "toy" head)

C, T = 3, 10


def one_hot(classes: list[int]) -> torch.Tensor:
    """(T, C+1) one-hot rows of ``classes`` (C = background)."""
    return torch.eye(C + 1)[torch.tensor(classes)]


BG = C
# video a: class 1 on segments 0-3; b: class 0 on 5-9; c: background only; d: classes 2 (0-1)
# and 0 (7-9); e: class 2 on segments 8-9
VIDEO_A = one_hot([1] * 4 + [BG] * 6)
VIDEO_B = one_hot([BG] * 5 + [0] * 5)
VIDEO_C = one_hot([BG] * 10)
VIDEO_D = one_hot([2, 2] + [BG] * 5 + [0] * 3)
VIDEO_E = one_hot([BG] * 8 + [2, 2])


def test_never_reset_buffer_after_two_batches_is_the_authors_rule():
    """``AVE_Fully_Dataset.get_segment_wise_relation``: per slot, the segments of the smallest
    class present get 1/count; every other entry keeps what earlier batches wrote."""
    buf = AVPSBuffer(batch_size=2, num_segments=T)
    first = buf.update(torch.stack([VIDEO_A, VIDEO_B]))
    expect1 = torch.zeros(2, T)
    expect1[0, :4] = 1 / 4  # a: class 1 on 0-3
    expect1[1, 5:] = 1 / 5  # b: class 0 on 5-9
    torch.testing.assert_close(first, expect1)
    second = buf.update(torch.stack([VIDEO_E, VIDEO_D]))
    expect2 = expect1.clone()
    expect2[0, 8:] = 1 / 2  # e: class 2 on 8-9; segments 0-3 keep a's 1/4 (never reset)
    expect2[1, 7:] = 1 / 3  # d: the smallest class present is 0 (7-9); 5-6 keep b's 1/5
    torch.testing.assert_close(second, expect2)
    # a video without an event: its background class, all ten segments at 1/10
    third = buf.update(torch.stack([VIDEO_C]))
    torch.testing.assert_close(third, torch.full((1, T), 0.1))
    torch.testing.assert_close(buf.buffer[1], expect2[1])  # slot 1 untouched by a 1-row batch
    # the paper's target of the second batch: its own indicators only
    indicator = avps_indicator(torch.stack([VIDEO_E, VIDEO_D]), C)
    expect_ind = torch.zeros(2, T)
    expect_ind[0, 8:] = 1 / 2
    expect_ind[1, [0, 1, 7, 8, 9]] = 1 / 5
    torch.testing.assert_close(indicator, expect_ind, atol=1e-6, rtol=1e-6)
    # avps_loss uses the target it is given
    v, a = torch.randn(2, T, 4), torch.randn(2, T, 4)
    labels = torch.stack([VIDEO_E, VIDEO_D])
    assert avps_loss(v, a, labels, C, second) != pytest.approx(float(avps_loss(v, a, labels, C)))
    s = torch.nn.functional.cosine_similarity(v, a, dim=-1).relu()
    s = s / (s.sum(-1, keepdim=True) + 1e-8)
    assert float(avps_loss(v, a, labels, C, second)) == pytest.approx(float(((s - second) ** 2).mean()), rel=1e-5)


def test_video_class_rules_differ_on_two_class_videos_only():
    labels = torch.stack([VIDEO_A, VIDEO_D, VIDEO_C, one_hot([0] * 3 + [2] * 7)])
    # d: class 2 on 2 segments, class 0 on 3: most frequent 0, largest index 2
    assert video_event_class(labels, "most_frequent").tolist() == [1, 0, 0, 2]
    assert video_event_class(labels, "max_index").tolist() == [1, 2, 0, 2]
    with pytest.raises(ValueError, match="video_class"):
        video_event_class(labels, "mode")


def test_the_class_rule_reaches_the_cmbs_and_vscg_losses():
    labels = torch.stack([VIDEO_D])
    logits = torch.tensor([[0.0, 0.0, 3.0]])  # confident in class 2 (d's largest index)
    rel, gate = torch.zeros(1, T), torch.full((1, T), 0.5)
    authors, _ = fully_loss(logits, rel, gate, labels, video_class="max_index")
    paper, _ = fully_loss(logits, rel, gate, labels, video_class="most_frequent")
    ce = torch.nn.functional.cross_entropy
    assert float(paper - authors) == pytest.approx(float(ce(logits, torch.tensor([0]))
                                                         - ce(logits, torch.tensor([2]))), rel=1e-5)
    # VSCG: a video without an event is class 0 in the code's rule, left out in the paper's
    labels = torch.stack([VIDEO_C, VIDEO_A])
    event_logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    v, a, is_event = torch.randn(2, T, 4), torch.randn(2, T, 4), torch.zeros(2, T)
    _, code = negative_pair_filter_loss(is_event, event_logits, v, a, labels, C, video_class="max_index")
    _, ours = negative_pair_filter_loss(is_event, event_logits, v, a, labels, C,
                                        video_class="most_frequent")
    assert code["l_c"] == pytest.approx(float(ce(event_logits, torch.tensor([0, 1]))), rel=1e-5)
    assert ours["l_c"] == pytest.approx(float(ce(event_logits[1:], torch.tensor([1]))), rel=1e-5)


def test_batch_order_stored_epoch_and_first_batch():
    n, bs = 10, 3
    assert batch_order(n, bs, False, "epoch", torch.Generator().manual_seed(0)).tolist() == list(range(n))
    perm = batch_order(n, bs, True, "epoch", torch.Generator().manual_seed(0))
    assert sorted(perm.tolist()) == list(range(n)) and perm.tolist() != list(range(n))
    gen = torch.Generator().manual_seed(0)
    firsts = set()
    for _ in range(20):  # epochs: batch 0 a fresh random draw, batches 1.. the stored rows
        order = batch_order(n, bs, True, "first_batch", gen)
        assert order[bs:].tolist() == list(range(bs, n))
        assert len(set(order[:bs].tolist())) == bs and all(0 <= i < n for i in order[:bs].tolist())
        firsts.add(tuple(order[:bs].tolist()))
    assert len(firsts) > 1 and any(max(f) >= bs for f in firsts)


def test_drop_last_and_weak_order_in_training(toyset, tmp_path):
    """Step counts with and without ``drop_last``, and the weak batch order the loop feeds."""
    data = toyset[0]
    n, bs = len(data.splits["train"]), 7
    seen = []

    class Recording(_ToyHead):
        def loss(self, out, batch):
            if self.training:
                seen.append(batch["audio"].clone())
            return super().loss(out, batch)
    if "toy_recipe" not in _registry._HEADS:
        register_head("toy_recipe")(Recording)
    else:
        _registry._HEADS["toy_recipe"].loss = Recording.loss
    for drop_last, steps in ((True, n // bs), (False, -(-n // bs))):
        seen.clear()
        train(run_spec("toy_recipe", "fully", device="cpu", recipe_overrides={
            "epochs": 1, "batch_size": bs, "drop_last": drop_last}), data, tmp_path / str(drop_last))
        assert len(seen) == steps
    seen.clear()
    train(run_spec("toy_recipe", "weak", device="cpu", recipe_overrides={
        "epochs": 2, "batch_size": bs, "shuffle_scope": "first_batch", "drop_last": True}),
        data, tmp_path / "weak")
    audio = data.splits["train"].audio.float()
    per_epoch = n // bs
    for e in range(2):
        batches = seen[e * per_epoch:(e + 1) * per_epoch]
        torch.testing.assert_close(torch.cat(batches[1:]), audio[bs:per_epoch * bs])
        assert not torch.equal(batches[0], audio[:bs])  # a random draw (seeded: not the first rows)


def test_drawn_torch_seed_is_recorded_and_reproduces_the_run(toyset, tmp_path):
    """``torch_seed: drawn`` (AVEL's unseeded scripts): a fresh torch seed per run, recorded; a
    run given that seed (stored order, so the shuffling seed plays no part) repeats it."""
    data = toyset[0]
    runs = []
    for name in ("a", "b"):
        res = train(run_spec("toy", "fully", device="cpu", recipe_overrides={
            "epochs": 2, "torch_seed": "drawn", "shuffle": False}), data, tmp_path / name)
        runs.append((res, ckpt_io.load(tmp_path / name / "best.pt")))
    (res_a, ck_a), (res_b, ck_b) = runs
    assert ck_a["torch_seed"] != ck_b["torch_seed"] and res_a.history != res_b.history
    assert ck_a["seed"] == ck_b["seed"] == 0  # the run's seed (random, numpy, shuffling)
    again = train(run_spec("toy", "fully", device="cpu", seed=ck_a["torch_seed"], recipe_overrides={
        "epochs": 2, "torch_seed": "drawn", "shuffle": False}), data, tmp_path / "again")
    assert ckpt_io.load(tmp_path / "again" / "best.pt")["torch_seed"] == ck_a["torch_seed"]
    assert again.history == res_a.history


# The training-side differences of the released scripts, per head and setting (issue list):
AUTHORS_DIFFERENCES = {
    ("avel", "fully"): {"shuffle", "drop_last", "torch_seed"},
    ("avel", "weak"): {"shuffle", "drop_last", "torch_seed"},
    ("psp", "fully"): {"avps_target", "drop_last"},
    ("psp", "weak"): {"shuffle_scope", "drop_last"},
    ("vscg", "fully"): {"avps_target", "video_class", "drop_last"},
    ("vscg", "weak"): {"shuffle_scope", "drop_last"},
    ("cmbs", "fully"): {"video_class"},
    ("cmbs", "weak"): set(),
    ("cace", "fully"): {"video_class"},
}


@pytest.mark.parametrize("head,setting", sorted(AUTHORS_DIFFERENCES))
def test_recipe_paper_flips_every_difference_at_once(head, setting):
    authors = resolve(head, setting, recipe={"recipe": "authors"}).recipe.as_dict()
    paper = resolve(head, setting, recipe={"recipe": "paper"}).recipe.as_dict()
    assert resolve(head, setting).recipe.as_dict() == authors  # the default
    changed = {k for k in authors if authors[k] != paper[k]} - {"recipe"}
    assert changed == AUTHORS_DIFFERENCES[(head, setting)]
    for k in changed:  # paper mode: the papers' targets, all samples, reshuffled, seeded
        assert paper[k] == _registry.RECIPE_DEFAULTS[k]
    # a switch set under train.<key> overrides the mode
    if "drop_last" in changed:
        assert resolve(head, setting, recipe={"recipe": "authors", "drop_last": False}).recipe.drop_last is False


def test_recipe_key_is_validated_and_reaches_the_resolved_recipe(tmp_path):
    params = load_params(overrides={"train": {"head": "vscg", "recipe": "paper"}})
    assert params["train"].recipe_overrides()["recipe"] == "paper"
    with pytest.raises(ConfigError, match="train.recipe"):
        load_params(overrides={"train": {"recipe": "code"}})
    with pytest.raises(ConfigError, match="train.avps_target"):
        load_params(overrides={"train": {"avps_target": "stale"}})
    with pytest.raises(_registry.SpecError, match="buffer"):
        resolve("psp", "fully", recipe={"avps_target": "stale"})
