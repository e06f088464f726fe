"""CACE contrastive fine-tuning: loss, retrieval, sampler, DDP equivalence, gradient caching,
resumption. Tiny stand-in encoders keep the whole file at a few seconds per test."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from pipeline.config import ConfigError, from_dict
from pipeline.finetune.config import FinetuneConfig
from pipeline.finetune.loss import group_bounds, retrieval_top1, symmetric_infonce
from pipeline.finetune.model import AVContrastive, freeze_unused, set_trainable
from pipeline.finetune.data import ClipBank
from pipeline.finetune.train import Dist, GlobalBatchSampler, fit

N, S, F_, H, L = 16, 2, 1, 16, 64  # videos, segments, frames per segment, image size, audio samples


class Frames(nn.Sequential):
    """Stand-in visual encoder: (N,H,W,3) uint8 -> prepare -> (N,8,h,w) maps."""

    def prepare(self, x):
        return (x.permute(0, 3, 1, 2).float() - 128.0) / 64.0


class Wave(nn.Sequential):
    """Stand-in audio encoder: (N,L) -> (N,12)."""

    def prepare(self, x):
        return x.unsqueeze(1)


def standin(seed: int = 0, dropout: float = 0.0, norm: str = "batch") -> AVContrastive:
    """Tiny encoders with the pipeline.encoders interface; no BatchNorm (exactness)."""
    torch.manual_seed(seed)
    visual = Frames(nn.Conv2d(3, 6, 3, stride=2), nn.ReLU(), nn.Conv2d(6, 8, 3))
    audio = Wave(nn.Conv1d(1, 6, 8, stride=4), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                 nn.Dropout(dropout), nn.Linear(6, 12))
    return AVContrastive(visual, audio, 8, 12, 5, norm)


def bank(n: int = N, seed: int = 1) -> ClipBank:
    """Paired clips: audio is a fixed random projection of the frames' colour plus noise."""
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (n, S, F_, H, H, 3), generator=g, dtype=torch.uint8)
    mix = torch.randn(3, L, generator=g)
    audio = frames.float().mean(dim=(2, 3, 4)) / 255 @ mix + 0.1 * torch.randn(n, S, L, generator=g)
    return ClipBank([f"v{i}" for i in range(n)], frames, audio)


def cfg(**kw) -> FinetuneConfig:
    base = dict(batch_size=8, epochs=2, optimizer="sgd", lr_encoder=0.05, lr_head=0.05,  # sgd: no Adam
                # amplification of float noise in gradients that are zero in exact arithmetic
                lr_milestones=[], weight_decay=0.0, temperature=0.5, seed=3, segments_per_clip=S)
    base.update(kw)
    return FinetuneConfig(**base)


CPU1 = Dist(0, 1, torch.device("cpu"))


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.state_dict().values()])


# ---------------------------------------------------------------------------------------------
def test_infonce_matches_hand_computation():
    v = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    a = torch.tensor([[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]])
    tau = 0.5
    sim = [[sum(x * y for x, y in zip(vi, aj)) / tau for aj in a.tolist()] for vi in v.tolist()]
    v2a = -sum(sim[i][i] - math.log(sum(math.exp(s) for s in sim[i])) for i in range(3)) / 3
    a2v = -sum(sim[i][i] - math.log(sum(math.exp(sim[j][i]) for j in range(3))) for i in range(3)) / 3
    assert symmetric_infonce(v, a, tau).item() == pytest.approx((v2a + a2v) / 2, rel=1e-6)
    # two vectors, perfect and orthogonal pairs: log(1 + e^{-1/tau}) in each direction
    e = torch.eye(2)
    assert symmetric_infonce(e, e, 0.5).item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)


def test_retrieval_top1_known_case():
    v = torch.eye(4)
    a = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    assert retrieval_top1(a, v) == 0.75  # audio 1 retrieves visual 2
    assert retrieval_top1(a, v, group=2) == 0.75  # groups {0,1}, {2,3}: audio 1 -> its group's row 0 or 1
    assert group_bounds(10, 4) == [0, 4, 10]  # short tail joins the previous group
    assert group_bounds(5, 0) == [0, 5]


def test_sampler_shards_the_global_batch():
    one = list(GlobalBatchSampler(20, 8, 0, 1, seed=0))
    two = [list(GlobalBatchSampler(20, 8, r, 2, seed=0)) for r in range(2)]
    assert len(one) == 2 and all(len(b) == 8 for b in one)
    assert [two[0][s] + two[1][s] for s in range(2)] == one  # rank order = global batch order
    s = GlobalBatchSampler(20, 8, 0, 1, seed=0)
    s.set_epoch(1)
    assert list(s) != one


def test_config_validation():
    with pytest.raises(ConfigError, match="batch_size: 10 is not divisible by nproc=4"):
        from_dict(FinetuneConfig, {"batch_size": 10, "nproc": 4}, "finetune")
    with pytest.raises(ConfigError, match=r"unknown key finetune\.lr"):
        from_dict(FinetuneConfig, {"lr": 1.0}, "finetune")


def test_set_trainable_prefixes():
    m = standin()
    n = set_trainable(m.visual, ["2"], "visual")
    assert n == sum(p.numel() for p in m.visual[2].parameters())
    assert not any(p.requires_grad for p in m.visual[0].parameters())
    with pytest.raises(ValueError, match="no parameters under 'layer9'"):
        set_trainable(m.visual, ["layer9"], "visual")


def test_unused_parameters_are_frozen():
    """DDP needs every trainable parameter used: e.g. Cnn14's AudioSet classifier is not."""
    m = standin()
    m.encoders.classifier = nn.Linear(12, 3)  # registered, never called
    assert freeze_unused(m, (S, F_, H, H, 3), L) == ["encoders.classifier.weight", "encoders.classifier.bias"]
    assert all(p.grad is None for p in m.parameters())


def test_gradient_caching_is_exact(tmp_path):
    """micro_batch < batch gives the same run as the full batch (dropout replayed)."""
    runs = []
    for micro in (0, 3):
        model = standin(dropout=0.3)
        h = fit(model, bank(), bank(8, seed=2), cfg(micro_batch=micro), CPU1, tmp_path / f"m{micro}", log=lambda s: None)
        runs.append((h["train_loss"], flat(model)))
    assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-5)
    torch.testing.assert_close(runs[0][1], runs[1][1], rtol=1e-4, atol=1e-5)


def test_resume_continues_the_same_run(tmp_path):
    c = cfg(epochs=3)
    full = standin()
    h_full = fit(full, bank(), bank(8, seed=2), c, CPU1, tmp_path / "full", log=lambda s: None)
    part = standin()
    class Killed(Exception):
        pass

    def kill_in_epoch_2(msg):  # killed during epoch 2: epoch 1's checkpoint is the last written
        if msg.startswith("finetune: epoch 2/"):
            raise Killed
    with pytest.raises(Killed):
        fit(part, bank(), bank(8, seed=2), c, CPU1, tmp_path / "part", log=kill_in_epoch_2)
    resumed = standin(seed=99)  # different init: everything must come from the checkpoint
    h_res = fit(resumed, bank(), bank(8, seed=2), c, CPU1, tmp_path / "part", log=lambda s: None)
    assert h_res["train_loss"] == pytest.approx(h_full["train_loss"], rel=1e-6)
    torch.testing.assert_close(flat(resumed), flat(full))
    assert h_full["train_loss"][-1] < h_full["train_loss"][0]
    # another config does not resume
    msgs = []
    fit(standin(), bank(), bank(8, seed=2), replace(c, temperature=0.3), CPU1, tmp_path / "part", log=msgs.append)
    assert any("starting afresh" in m for m in msgs)


def _ddp_worker(rank: int, world: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        model = standin()
        h = fit(model, bank(), bank(8, seed=2), cfg(micro_batch=2), Dist(rank, world, torch.device("cpu")),
                Path(out) / "ckpt", log=lambda s: None)
        if rank == 0:
            torch.save({"loss": h["train_loss"], "weights": flat(model)}, Path(out) / "ddp.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_equals_single_process(tmp_path):
    """2 ranks x 4 videos == 1 process x 8 videos: same losses, same weights after 4 steps."""
    mp.start_processes(_ddp_worker, args=(2, f"file://{tmp_path}/pg", str(tmp_path)), nprocs=2,
                       join=True, start_method="spawn")
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    model = standin()
    h = fit(model, bank(), bank(8, seed=2), cfg(), CPU1, tmp_path / "single", log=lambda s: None)
    assert ddp["loss"] == pytest.approx(h["train_loss"], rel=1e-5)
    torch.testing.assert_close(ddp["weights"], flat(model), rtol=1e-4, atol=1e-5)


def test_tuned_weights_load_through_the_resolver(tmp_path):
    """What the stage writes is what ``weights: <path>`` of an extract model spec loads."""
    from pipeline.encoders.base import lookup
    from pipeline.encoders.spec import ModelSpec
    from pipeline.finetune.run import save_encoders

    spec = ModelSpec("timm/resnet10t", weights="random", seed=0)
    visual = lookup(spec.encoder)(spec, False, image_size=64)
    audio = standin().audio
    audio.name, audio.export_state_dict = "wave", audio.state_dict
    core = AVContrastive(visual, audio, visual.feature_shape()[-1], 12, 5)
    assert set_trainable(core.visual, ["layer4"], "visual") > 0
    with torch.no_grad():
        for name, p in core.visual.named_parameters():
            if p.requires_grad:
                p.add_(1.0)  # "tuned"
    written = save_encoders(core, tmp_path)
    assert written["visual"] == tmp_path / "timm" / "resnet10t.pth"
    tuned = lookup(spec.encoder)(ModelSpec(spec.encoder, weights=str(written["visual"])), False, image_size=64)
    assert tuned.weights.source == "path"
    torch.testing.assert_close(tuned.state_dict(), core.visual.state_dict())


def test_clip_stream_cache_serves_later_epochs_without_decoding(ave_root, tmp_path):
    """Decoded clips are kept up to ``clip_cache_mb``: a later pass needs no file (paths are
    broken on purpose) and gives the same clips; with no cache every pass decodes again."""
    from pipeline.finetune.data import stream_clips

    vids = sorted((ave_root / "AVE").glob("*.mp4"))[:3]
    items = [(p.stem, str(p)) for p in vids]
    for cache_mb, served in ((64, True), (0, False)):
        c = cfg(image_size=32, frames_per_segment=1, segments_per_clip=2, workers=1,
                clip_cache_mb=cache_mb)
        stream = stream_clips(items, c, 16000, log=lambda s: None)
        first = list(stream.batches([[0, 1], [2]], torch.device("cpu")))
        stream.paths = [str(tmp_path / "gone.mp4")] * len(vids)
        second = list(stream.batches([[0, 1], [2]], torch.device("cpu")))
        if served:
            assert not stream.failed
            for (f1, a1), (f2, a2) in zip(first, second):
                assert torch.equal(f1, f2) and torch.equal(a1, a2)
        else:
            assert stream.failed == {0, 1, 2} and second == []
