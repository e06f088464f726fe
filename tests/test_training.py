"""Training loop behaviour on tiny synthetic features whose answer is known (CPU, fast)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import h5py
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pipeline.config import ConfigError, validate
from pipeline.heads import Head, Schedule, _registry, get_head_class, register_head
from pipeline.training import checkpoint as ckpt_io
from pipeline.training.data import load_dataset
from pipeline.training.loop import Training, run_spec, train

C, T = 3, 10  # event classes, segments
RECIPE = {"optimizer": "adam", "lr": 0.05, "weight_decay": 0.0, "batch_size": 16, "epochs": 6,
          "lr_step": 3, "lr_milestones": [], "lr_gamma": 0.5, "clip_grad": 1.0}


def interrupted(spec, data, out, epochs: int):
    """A run stopped after ``epochs`` epochs of this call, as a kill between epochs leaves it."""
    run = Training(spec, data, out)
    for _ in zip(range(epochs), run.epochs()):
        pass
    return run


class _ToyHead(Head):
    """Linear classifier of the audio vector per segment (+ dropout, to exercise the RNG)."""
    @dataclass(frozen=True)
    class Config:
        dropout: float = 0.1

    TRAIN_DEFAULTS = {"fully": dict(RECIPE), "weak": dict(RECIPE)}
    SELECTION = {"fully": Schedule(), "weak": Schedule()}  # every epoch on test
    seen_keys: list = []

    def __init__(self, cfg, visual_dim, audio_dim, num_classes, setting="fully"):
        super().__init__(cfg, visual_dim, audio_dim, num_classes, setting)
        self.fc = nn.Linear(audio_dim + visual_dim, num_classes + 1)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, visual, audio):
        x = torch.cat([audio, visual.mean(dim=(2, 3))], -1)
        return {"logits": self.fc(self.drop(x))}

    def loss(self, out, batch):
        type(self).seen_keys.append(sorted(batch))
        if self.setting == "fully":
            t = batch["labels"].argmax(-1)
            return F.cross_entropy(out["logits"].reshape(-1, C + 1), t.reshape(-1)), {"ce": 0.0}
        video = out["logits"].softmax(-1).mean(1).clamp(1e-6, 1 - 1e-6)
        return F.binary_cross_entropy(video, batch["weak"]), {}

    def predict(self, out):
        return out["logits"].argmax(-1)


if "toy" not in _registry._HEADS:
    register_head("toy")(_ToyHead)


def write_set(root, n_per_split=(48, 16, 16), invalid=(), seed=0, vdim=4, adim=6, av=False,
              full_length=()):
    """Contract layout: prepared/{labels,mil_labels,*_order,*_order_match}.h5, categories.json;
    features/{v,a}.h5. The audio feature is the one-hot segment label plus noise (the answer is
    known). Rows in ``full_length`` get an event over all segments (others are partial).

    ``av``: an event is audible *and* visible instead: its class one-hot is in the audio and in
    the visual feature; the background segments of half the videos hold the video's sound only
    (off-screen), those of the other half its object only (silent): one modality cannot localise."""
    rng = np.random.default_rng(seed)
    n = sum(n_per_split)
    cls = rng.integers(0, C, n)
    start = rng.integers(0, 5, n)
    end = start + rng.integers(1, 6, n)
    labels = np.zeros((n, T, C + 1), np.float32)
    labels[:, :, C] = 1
    start[list(full_length)], end[list(full_length)] = 0, T
    for i in range(n):
        labels[i, start[i]:end[i], C] = 0
        labels[i, start[i]:end[i], cls[i]] = 1
    if av:
        kind = rng.integers(1, 3, (n, 1))  # a video's background: 1 sound only, 2 object only
        cue = 3 * np.eye(C, dtype=np.float32)[cls][:, None]  # (n, 1, C): the video's class
        event = labels[..., C] == 0  # (n, T)
        audio = rng.normal(0, 0.3, (n, T, adim)).astype(np.float32)
        audio[..., :C] += cue * (event | (kind == 1))[..., None]
        visual = rng.normal(0, 0.3, (n, T, 2, 2, vdim)).astype(np.float32)
        visual[..., :C] += (cue * (event | (kind == 2))[..., None])[:, :, None, None]
        visual = visual.astype(np.float16)
    else:
        audio = np.concatenate([labels, np.zeros((n, T, adim - C - 1), np.float32)], -1)
        audio = audio * 3 + rng.normal(0, 0.3, audio.shape).astype(np.float32)
        visual = rng.normal(0, 1, (n, T, 2, 2, vdim)).astype(np.float16)
    prepared, feats = root / "prepared", root / "features"
    prepared.mkdir(parents=True, exist_ok=True)
    feats.mkdir(parents=True, exist_ok=True)
    with h5py.File(prepared / "labels.h5", "w") as f:
        f["avadataset"] = labels
    with h5py.File(prepared / "mil_labels.h5", "w") as f:  # the event class alone
        f["avadataset"] = np.eye(C + 1, dtype=np.float32)[cls]
    perm = rng.permutation(n)
    perm_cml = np.random.default_rng(seed + 1).permutation(n)  # the cml split: another partition
    a = 0
    for split, k in zip(("train", "val", "test"), n_per_split):
        for name, order in (("order", perm), ("order_match", perm_cml)):
            with h5py.File(prepared / f"{split}_{name}.h5", "w") as f:
                f["order"] = np.sort(order[a:a + k]).astype(np.int64)
        a += k
    (prepared / "categories.json").write_text(json.dumps([f"cat{i}" for i in range(C)]))
    valid = np.ones(n, bool)
    valid[list(invalid)] = False
    for name, data in (("vis", visual), ("aud", audio.astype(np.float16))):
        with h5py.File(feats / f"{name}.h5", "w") as f:
            f["avadataset"] = data
            f["valid"] = valid
    return prepared, feats


@pytest.fixture(scope="module")
def toyset(tmp_path_factory):
    root = tmp_path_factory.mktemp("toyset")
    prepared, feats = write_set(root, invalid=(0, 1, 2))
    return load_dataset(prepared, feats, "vis", "aud", verbose=False), prepared, feats


def _state(path):
    return ckpt_io.load(path)["model"]


def test_learns_known_answer_and_writes_rebuildable_checkpoints(toyset, tmp_path):
    data = toyset[0]
    res = train(run_spec("toy", "fully", device="cpu"), data, tmp_path, live_dir=tmp_path / "live")
    assert res.best_val_accuracy > 0.9
    assert res.num_parameters == (6 + 4 + 1) * (C + 1)
    head, ck = ckpt_io.load_head(tmp_path / "best.pt")
    assert ck["head"] == "toy" and ck["hparams"] == {"dropout": 0.1} and ck["setting"] == "fully"
    assert ck["recipe"]["lr"] == 0.05 and ck["epoch"] == res.best_epoch
    assert (tmp_path / "live" / "metrics.json").is_file()
    for name in ("accuracy", "event_f1", "loss"):
        history = (tmp_path / "live" / "plots" / "metrics" / "val" / f"{name}.tsv").read_text()
        assert len(history.strip().splitlines()) == 1 + RECIPE["epochs"]
    assert all(math.isfinite(r["val_loss"]) and r["val_loss"] > 0 for r in res.history)


@pytest.mark.parametrize("setting", ["fully", "weak"])
def test_validation_loss_is_the_heads_loss_on_val_in_eval_mode(toyset, tmp_path, setting):
    from pipeline.training.loop import validation_loss
    from pipeline import settings
    data = toyset[0]
    res = train(run_spec("toy", setting, device="cpu", recipe_overrides={"epochs": 2}), data,
                tmp_path)
    head = ckpt_io.build_from(ckpt_io.load(tmp_path / "last.pt")).eval()  # the last epoch's weights
    val = data.splits["val"]
    with torch.no_grad():
        logits = head(val.visual.float(), val.audio.float())["logits"]
    if setting == "fully":
        expect = F.cross_entropy(logits.reshape(-1, C + 1), val.targets.reshape(-1))
    else:  # video labels only, as in training
        expect = F.binary_cross_entropy(logits.softmax(-1).mean(1).clamp(1e-6, 1 - 1e-6), val.weak)
    assert res.history[-1]["val_loss"] == pytest.approx(expect.item(), rel=1e-5)
    # Batched: videos weight the batch means (every toy video has T segments).
    small = validation_loss(head, val, settings.get(setting), torch.device("cpu"), 1, 2, batch_size=5)
    assert small == pytest.approx(expect.item(), rel=1e-5) and not head.training


def test_invalid_rows_are_excluded_and_counted(toyset):
    data = toyset[0]
    all_rows = np.concatenate([data.splits[s].rows for s in data.splits])
    excluded = np.concatenate([data.splits[s].excluded for s in data.splits])
    assert sorted(excluded.tolist()) == [0, 1, 2] and not set(all_rows) & {0, 1, 2}
    assert sum(len(data.splits[s]) for s in data.splits) == 80 - 3


def test_same_seed_same_result_and_resume_equals_uninterrupted(toyset, tmp_path):
    data = toyset[0]
    spec = run_spec("toy", "fully", device="cpu", recipe_overrides={"epochs": 4})
    a = train(spec, data, tmp_path / "a")
    b = train(spec, data, tmp_path / "b")
    assert a.history == [dict(r) for r in b.history]
    for k, v in _state(tmp_path / "a" / "last.pt").items():
        assert torch.equal(v, _state(tmp_path / "b" / "last.pt")[k])
    # Interrupted after 2 epochs, then resumed: same weights and history as run a.
    interrupted(spec, data, tmp_path / "c", 2)
    assert ckpt_io.load(tmp_path / "c" / "last.pt")["epoch"] == 1
    c = train(spec, data, tmp_path / "c")
    assert c.resumed_from == 1
    assert [r["val_accuracy"] for r in c.history] == [r["val_accuracy"] for r in a.history]
    for k, v in _state(tmp_path / "a" / "last.pt").items():
        assert torch.equal(v, _state(tmp_path / "c" / "last.pt")[k])
    # A different run's last.pt is not resumed.
    d = train(run_spec("toy", "fully", device="cpu", seed=1, recipe_overrides={"epochs": 4}),
              data, tmp_path / "c")
    assert d.resumed_from is None


def test_best_checkpoint_is_the_best_validation_epoch(toyset, tmp_path):
    res = train(run_spec("toy", "fully", device="cpu"), toyset[0], tmp_path)
    accs = [r["val_accuracy"] for r in res.history]
    best = ckpt_io.load(tmp_path / "best.pt")
    assert best["epoch"] == int(np.argmax(accs)) and best["val_accuracy"] == max(accs)
    last = ckpt_io.load(tmp_path / "last.pt")
    assert last["best"]["epoch"] == best["epoch"]
    for k, v in best["model"].items():
        assert torch.equal(v, last["best"]["model"][k])


def test_weak_setting_never_sees_segment_labels(toyset, tmp_path):
    _ToyHead.seen_keys.clear()
    res = train(run_spec("toy", "weak", device="cpu", recipe_overrides={"epochs": 2}),
                toyset[0], tmp_path)
    assert _ToyHead.seen_keys and all("labels" not in k and "weak" in k for k in _ToyHead.seen_keys)
    assert res.epochs == 2
    _ToyHead.seen_keys.clear()
    train(run_spec("toy", "fully", device="cpu", recipe_overrides={"epochs": 1}), toyset[0],
          tmp_path / "f")
    assert all("labels" in k for k in _ToyHead.seen_keys)


def test_config_errors_name_the_key(toyset, tmp_path):
    data = toyset[0]
    with pytest.raises(ConfigError, match=r"train\.head.*'nope'.*registered heads:.*toy"):
        train(run_spec("nope", "fully", device="cpu"), data, tmp_path)
    with pytest.raises(ConfigError, match=r"heads\.toy\.tau"):
        train(run_spec("toy", "fully", device="cpu", hparam_overrides={"tau": 1}), data, tmp_path)
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        validate({"train": {"batch_size": 0}})
    with pytest.raises(ConfigError, match=r"unknown key train\.lrr"):
        validate({"train": {"lrr": 0.1}})
    with pytest.raises(ConfigError, match=r"unknown key heads\.foo"):
        validate({"heads": {"foo": {"a": 1}}})
    with pytest.raises(ConfigError, match=r"train\.setting"):
        validate({"train": {"setting": "semi"}})
    # cml is a valid setting, but only for heads whose paper defines it.
    assert validate({"train": {"head": "m2n", "setting": "cml"}})["train"].setting == "cml"
    with pytest.raises(ConfigError, match=r"train\.setting: head 'toy' has no 'cml' setting; "
                                          r"it supports: fully, weak"):
        train(run_spec("toy", "cml", device="cpu"), data, tmp_path)
    with pytest.raises(ConfigError, match=r"report\.settings\[1\]: 'semi' is not allowed; "
                                          r"allowed: 'fully', 'weak', 'cml'"):
        validate({"report": {"settings": ["cml", "semi"]}})


def test_config_settings_are_the_registry_settings():
    from pipeline import settings
    assert settings.names() == ["fully", "weak", "cml"]
    assert validate({})["report"].settings == settings.names()


def test_params_override_recipe_and_hparams(toyset, tmp_path):
    from pipeline.training.run import spec_from_params
    params = validate({"train": {"head": "toy", "epochs": 1, "lr": 0.01, "device": "cpu"},
                       "heads": {}})
    spec = spec_from_params(params)
    assert (spec.head.recipe.lr, spec.head.recipe.epochs, spec.head.recipe.recipe) == (0.01, 1, "authors")
    assert spec.head.config == get_head_class("toy").Config()  # no heads.toy overrides
    spec = spec_from_params(params, setting="weak", epochs=2)
    assert spec.head.setting.name == "weak" and spec.head.recipe.epochs == 2
    train(spec, toyset[0], tmp_path)
    ck = ckpt_io.load(tmp_path / "best.pt")
    assert ck["recipe"]["lr"] == 0.01 and ck["recipe"]["epochs"] == 2


def test_baseline_heads_train(toyset, tmp_path):
    import pipeline.heads  # noqa: F401  (registers the baselines)
    data = toyset[0]
    small = {"hidden_dim": 8}
    for name in ("majority", "audio_only", "visual_only"):
        for setting in ("fully", "weak"):
            res = train(run_spec(name, setting, device="cpu", recipe_overrides={"epochs": 1},
                                hparam_overrides={} if name == "majority" else small),
                        data, tmp_path / f"{name}-{setting}")
            assert res.num_parameters > 0 and 0.0 <= res.best_val_accuracy <= 1.0
    maj = train(run_spec("majority", "fully", device="cpu", recipe_overrides={"epochs": 20,
                                                                            "lr": 0.1}),
                data, tmp_path / "maj")
    bg_share = float((data.splits["val"].targets == C).float().mean())
    assert maj.num_parameters == C + 1 and maj.best_val_accuracy == pytest.approx(bg_share)
    res = train(run_spec("audio_only", "fully", device="cpu", hparam_overrides=small,
                        recipe_overrides={"epochs": 8, "lr": 0.03, "batch_size": 8}),
                data, tmp_path / "ao")
    assert res.best_val_accuracy > 0.9  # the audio feature encodes the label


def test_fusion_head_beats_single_modality_baselines(tmp_path):
    """Events are audible and visible; the background of half the videos is the sound only, of
    the other half the object only. A single-modality baseline cannot tell those from events in
    half the videos (ceiling about 1 - background share / 2 = 0.85); PSP, which fuses both
    modalities, localises them. (PSP, not AVEL: AVEL's loss as its authors wrote it, a
    multi-label soft margin on the softmax, saturates on this background-heavy toy set.)"""
    import pipeline.heads  # noqa: F401  (registers the heads)
    prepared, feats = write_set(tmp_path / "set", n_per_split=(96, 48, 8), av=True)
    data = load_dataset(prepared, feats, "vis", "aud", verbose=False)
    recipe = {"epochs": 25, "lr": 3e-3, "batch_size": 16}
    tiny_psp = dict.fromkeys(["att_hidden", "embed_hidden", "embed_dim", "lstm_hidden",
                              "psp_hidden", "fc_hidden"], 16) | {"att_dim": 4}  # 2x2 maps
    heads = {"audio_only": {"hidden_dim": 16}, "visual_only": {"hidden_dim": 16}, "psp": tiny_psp}
    acc = {name: train(run_spec(name, "fully", device="cpu", hparam_overrides=hp,
                               recipe_overrides=recipe), data, tmp_path / name).best_val_accuracy
           for name, hp in heads.items()}
    targets = data.splits["val"].targets
    assert 0.6 < float((targets == C).float().mean()) < 0.8, "background share"
    single = max(acc["audio_only"], acc["visual_only"])
    assert single < 0.9, acc
    assert acc["psp"] > 0.97 and acc["psp"] > single + 0.1, acc


M2N_TINY = {"d_model": 16, "att_hidden": 16, "att_dim": 8}


def test_cml_trains_m2n_and_selects_the_best_window_accuracy(toyset, tmp_path):
    """M2N's cross-modality localization: A2V and V2A trained together (Eq. 18), best.pt by the
    mean of their val window accuracies. The toy audio encodes the event segments, so V2A (the
    audio is searched) is learnable; the visual is noise, so A2V stays near chance."""
    from pipeline.settings.cml import cml_evaluate
    with pytest.raises(ValueError, match="setting='cml'"):  # cml runs on the cml split only
        train(run_spec("m2n", "cml", device="cpu", hparam_overrides=M2N_TINY), toyset[0], tmp_path)
    data = load_dataset(*toyset[1:], "vis", "aud", verbose=False, setting="cml")
    res = train(run_spec("m2n", "cml", device="cpu", hparam_overrides=M2N_TINY,
                        recipe_overrides={"epochs": 5, "lr": 3e-3, "batch_size": 16}),
                data, tmp_path, live_dir=tmp_path / "live")
    h = res.history
    assert len(h) == 5 and all(math.isfinite(r["val_loss"]) for r in h)
    assert all(r["val_accuracy"] == pytest.approx((r["val_a2v"] + r["val_v2a"]) / 2) for r in h)
    assert "val_event_f1" not in h[0] and "train_relevance" in h[0]
    assert max(r["val_v2a"] for r in h) > 0.8  # chance: about 1 / (T - l + 1)
    best = ckpt_io.load(tmp_path / "best.pt")
    accs = [r["val_accuracy"] for r in h]
    assert best["setting"] == "cml" and best["epoch"] == int(np.argmax(accs))
    assert best["val_accuracy"] == max(accs)
    head = ckpt_io.build_from(best).eval()
    val = data.splits["val"]
    acc, _ = cml_evaluate(head, val.visual, val.audio, val.labels, torch.device("cpu"))
    assert acc["average"] == pytest.approx(best["val_accuracy"])
    for name in ("a2v", "v2a", "loss"):
        assert (tmp_path / "live" / "plots" / "metrics" / "val" / f"{name}.tsv").is_file()


class _MilestoneToyHead(_ToyHead):
    """The toy head with a milestone schedule: lr 0.05, x0.5 at epochs 2 and 4."""
    TRAIN_DEFAULTS = {s: {**RECIPE, "lr_step": 0, "lr_milestones": [2, 4]} for s in ("fully", "weak")}


if "toy_milestones" not in _registry._HEADS:
    register_head("toy_milestones")(_MilestoneToyHead)


def test_lr_follows_milestones_exactly_and_params_override_them(toyset, tmp_path):
    from pipeline.training.run import spec_from_params
    data = toyset[0]
    spec = run_spec("toy_milestones", "fully", device="cpu")
    res = train(spec, data, tmp_path / "a")
    assert [r["lr"] for r in res.history] == [0.05, 0.05, 0.025, 0.025, 0.0125, 0.0125]
    # Interrupted inside the schedule and resumed: the scheduler state continues exactly.
    interrupted(spec, data, tmp_path / "b", 3)
    resumed = train(spec, data, tmp_path / "b")
    assert resumed.resumed_from == 2 and resumed.history == res.history
    # train.lr_milestones replaces the head's milestones.
    params = validate({"train": {"head": "toy_milestones", "device": "cpu", "lr_milestones": [1, 5]},
                       "heads": {}})
    spec = spec_from_params(params)
    assert spec.head.recipe.lr_milestones == (1, 5)
    res = train(spec, data, tmp_path / "c")
    assert [r["lr"] for r in res.history] == [0.05, 0.025, 0.025, 0.025, 0.025, 0.0125]
    assert ckpt_io.load(tmp_path / "c" / "best.pt")["recipe"]["lr_milestones"] == [1, 5]
    # train.lr_milestones: [] = constant lr.
    res = train(run_spec("toy_milestones", "fully", device="cpu",
                        recipe_overrides={"lr_milestones": []}), data, tmp_path / "d")
    assert [r["lr"] for r in res.history] == [0.05] * 6


def test_lr_step_is_periodic_and_excludes_milestones(toyset, tmp_path):
    data = toyset[0]
    res = train(run_spec("toy", "fully", device="cpu"), data, tmp_path / "a")  # lr_step 3
    assert [r["lr"] for r in res.history] == [0.05] * 3 + [0.025] * 3
    with pytest.raises(ConfigError, match=r"lr_step.*lr_milestones.*both"):
        train(run_spec("toy_milestones", "fully", device="cpu", recipe_overrides={"lr_step": 3}),
              data, tmp_path / "b")
    res = train(run_spec("toy_milestones", "fully", device="cpu",
                        recipe_overrides={"lr_step": 5, "lr_milestones": []}), data, tmp_path / "c")
    assert [r["lr"] for r in res.history] == [0.05] * 5 + [0.025]
    for bad in ([3, 2], [0, 2], [2, 2]):
        with pytest.raises(ConfigError, match=r"train\.lr_milestones"):
            validate({"train": {"lr_milestones": bad}})


def test_every_head_recipe_resolves_to_one_schedule():
    import pipeline.heads  # noqa: F401
    from pipeline.heads import get_head_class, list_heads
    from pipeline.heads import resolve
    from pipeline.training.loop import lr_milestones

    def resolve_recipe(name, setting, overrides):
        return resolve(name, setting, recipe=overrides).recipe
    for name in list_heads():
        for setting in get_head_class(name).settings:
            recipe = resolve_recipe(name, setting, {})
            ms = lr_milestones(recipe)
            assert all(0 < m < recipe.epochs for m in ms), (name, setting, ms)
    assert lr_milestones(resolve_recipe("cmbs", "fully", {})) == [10, 20, 30]
    assert lr_milestones(resolve_recipe("psp", "weak", {})) == [80, 160]
    assert lr_milestones(resolve_recipe("vscg", "fully", {})) == [60, 120, 240]
    assert lr_milestones(resolve_recipe("avel", "fully", {})) == [288]
    assert lr_milestones(resolve_recipe("avel", "weak", {})) == []


def test_standardize_uses_train_statistics_and_travels_with_the_checkpoint(tmp_path):
    from pipeline.evaluation.evaluate import evaluate
    from pipeline.training.data import feature_stats

    prepared, feats = write_set(tmp_path)
    # Shift and shrink the audio far off unit scale (as random-init encoders do).
    with h5py.File(feats / "aud.h5", "r+") as f:
        a = f["avadataset"][()].astype(np.float32)
        del f["avadataset"]
        f["avadataset"] = (a * 1e-3 + 5.0).astype(np.float32)
    data = load_dataset(prepared, feats, "vis", "aud", verbose=False)
    stats = feature_stats(data.splits["train"])
    z = data.splits["train"].normalized(stats).audio.float()
    assert torch.allclose(z.mean(dim=(0, 1)), torch.zeros(z.shape[-1]), atol=2e-3)
    assert torch.allclose(z.std(dim=(0, 1), unbiased=False), torch.ones(z.shape[-1]), atol=2e-3)
    # Val/test are standardized with the train split's numbers, not their own.
    val = data.splits["val"].normalized(stats).audio.float()
    expected = (data.splits["val"].audio.float() - stats["audio_mean"]) / stats["audio_std"]
    assert torch.allclose(val, expected)

    res = train(run_spec("toy", "fully", device="cpu", feature_norm="standardize"), data,
                tmp_path / "std")
    ck = ckpt_io.load(tmp_path / "std" / "best.pt")
    assert torch.equal(ck["feature_norm"]["audio_mean"], stats["audio_mean"])
    metrics = evaluate(tmp_path / "std" / "best.pt", prepared, feats, "vis", "aud", None)
    assert res.best_val_accuracy > 0.9 and metrics["accuracy"] > 0.9
    raw = train(run_spec("toy", "fully", device="cpu"), data, tmp_path / "raw")
    assert ckpt_io.load(tmp_path / "raw" / "best.pt")["feature_norm"] is None
    assert raw.best_val_accuracy < res.best_val_accuracy


def test_cml_reads_the_cml_split_and_excludes_full_length_events(tmp_path):
    prepared, feats = write_set(tmp_path, n_per_split=(20, 8, 8), full_length=range(0, 36, 3))
    with h5py.File(prepared / "test_order_match.h5") as f:
        cml_test = f["order"][()]
    with h5py.File(prepared / "labels.h5") as f:
        labels = f["avadataset"][()]
    full = set(range(0, 36, 3))
    data = load_dataset(prepared, feats, "vis", "aud", verbose=False, setting="cml")
    test = data.splits["test"]
    assert data.setting == "cml"
    assert test.rows.tolist() == [r for r in cml_test if r not in full]
    assert test.setting_excluded["full_length"].tolist() == [r for r in cml_test if r in full]
    assert len(test.setting_excluded["no_event"]) == 0 and len(test.setting_excluded["full_length"]) > 0
    torch.testing.assert_close(test.labels, torch.from_numpy(labels[test.rows]))
    # training keeps the full-length events (AVE-ECCV18 cmm_train.py trains on every row with
    # an event): cml training rows = every cml training row with an event
    with h5py.File(prepared / "train_order_match.h5") as f:
        cml_train = f["order"][()]
    with_event = [r for r in cml_train if (labels[r, :, -1] == 0).any()]
    assert data.splits["train"].rows.tolist() == with_event and set(with_event) & full
    assert len(data.splits["train"].setting_excluded["full_length"]) == 0
    standard = load_dataset(prepared, feats, "vis", "aud", verbose=False)
    assert standard.splits["test"].setting_excluded == {}
    assert standard.splits["test"].rows.tolist() != test.rows.tolist()


def _write_background_only(prepared, feats, n=5, vdim=4, adim=6):
    rng = np.random.default_rng(3)
    for name, shape in (("vis", (n, T, 2, 2, vdim)), ("aud", (n, T, adim))):
        with h5py.File(feats / f"{name}_noisy.h5", "w") as f:
            f["avadataset"] = rng.normal(0, 1, shape).astype(np.float16)
            f["valid"] = np.ones(n, bool)
    with h5py.File(prepared / "labels_noisy.h5", "w") as f:
        f["avadataset"] = np.eye(C + 1, dtype=np.float32)[[C] * n]  # background alone


def test_weak_targets_are_mil_labels_plus_background_only_samples(tmp_path, capsys):
    prepared, feats = write_set(tmp_path, n_per_split=(20, 8, 8))
    with h5py.File(prepared / "mil_labels.h5") as f:
        mil = f["avadataset"][()]
    data = load_dataset(prepared, feats, "vis", "aud", setting="weak", background_only=True)
    assert "background-only samples: not used (absent:" in capsys.readouterr().out
    train_split = data.splits["train"]
    assert train_split.background_only == 0
    torch.testing.assert_close(train_split.weak, torch.from_numpy(mil[train_split.rows]))
    assert train_split.weak[:, C].sum() == 0  # as published: background = 0 in every row
    _write_background_only(prepared, feats)
    data = load_dataset(prepared, feats, "vis", "aud", verbose=False, setting="weak",
                        background_only=True)
    grown = data.splits["train"]
    assert len(grown) == 25 and grown.background_only == 5 and grown.rows[-5:].tolist() == [-1] * 5
    assert grown.weak[-5:].argmax(-1).tolist() == [C] * 5 and grown.weak[-5:].sum() == 5
    assert (grown.targets[-5:] == C).all()
    assert len(data.splits["val"]) == 8  # only train grows
    off = load_dataset(prepared, feats, "vis", "aud", verbose=False, setting="weak")
    assert len(off.splits["train"]) == 20
    fully = load_dataset(prepared, feats, "vis", "aud", verbose=False, background_only=True)
    assert len(fully.splits["train"]) == 20  # the weak setting's samples only
    batch_keys = []
    _ToyHead.seen_keys = batch_keys
    res = train(run_spec("toy", "weak", device="cpu", recipe_overrides={"epochs": 1}), data,
                tmp_path / "m")
    assert res.epochs == 1 and all("labels" not in k for k in batch_keys)


def test_one_run_records_the_val_and_the_script_selected_checkpoints(toyset, tmp_path,
                                                                     monkeypatch):
    """best_val.pt: the best val epoch; best_test.pt: the best test accuracy at the released
    script's checks (here: every 2nd epoch from epoch 2, ties to the later); best.pt: the one
    train.select names."""
    from pipeline.heads import Schedule

    monkeypatch.setitem(_ToyHead.SELECTION, "fully",
                        Schedule("test", every=2, skip_first=True, later_wins_ties=True))
    data = toyset[0]
    res = {}
    for select in ("val", "test"):
        out = tmp_path / select
        res[select] = train(run_spec("toy", "fully", device="cpu", select=select), data, out)
        assert ckpt_io.load(out / "best.pt")["selected_by"] == select
        assert torch.equal(_state(out / "best.pt")["fc.weight"],
                           _state(out / f"best_{select}.pt")["fc.weight"])
    h = res["test"].history
    checked = {r["epoch"]: r["script_test_accuracy"] for r in h if "script_test_accuracy" in r}
    assert sorted(checked) == [2, 4]
    best_epoch = max(sorted(checked), key=lambda e: (checked[e], e))
    test_ckpt = ckpt_io.load(tmp_path / "test" / "best_test.pt")
    assert test_ckpt["epoch"] == best_epoch and test_ckpt["selection"]["checks"] == 2
    assert test_ckpt["selection"]["accuracy"] == checked[best_epoch]
    val_ckpt = ckpt_io.load(tmp_path / "test" / "best_val.pt")
    assert val_ckpt["epoch"] == int(np.argmax([r["val_accuracy"] for r in h]))
    # the released check is scored on the test split: evaluating best_test.pt gives that number
    head = ckpt_io.build_from(test_ckpt).eval()
    from pipeline.settings import accuracy, predict
    test = data.splits["test"]
    acc = accuracy(predict(head, test, torch.device("cpu")), test.targets)
    assert acc == pytest.approx(checked[best_epoch])


def test_released_schedules():
    from pipeline.heads import schedule

    def checks(head, setting, n=60):
        return [e for e in range(n) if schedule(head, setting).checks(e)]
    assert checks("psp", "fully")[:3] == [5, 10, 15] and schedule("psp", "weak").split == "test"
    assert checks("avel", "weak")[:3] == [0, 5, 10] and schedule("avel", "fully").split == "val"
    assert checks("vscg", "fully")[:2] == [5, 10] and checks("vscg", "weak")[:2] == [51, 52]
    assert checks("cmbs", "weak", 3) == checks("cace", "fully", 3) == [0, 1, 2]
    assert checks("m2n", "cml", 3) == [0, 1, 2]  # no released code: every epoch


def test_att_dim_follows_the_visual_maps_unless_set():
    """AVEL / PSP / VSCG add the audio term per position: att_dim = H*W of the maps trained on
    (49 for 7x7, the DEFAULTS); a value set in heads.<head> is kept; other heads are untouched."""
    from pipeline.heads import resolve, resolve_hparams

    def fit_map_size(name, hp, overrides, map_hw):  # att_dim as the one resolution sets it
        defaults = resolve_hparams(name)
        fixed = {k: v for k, v in hp.items() if v != defaults.get(k)}
        return resolve(name, overrides={**fixed, **overrides}, map_hw=map_hw).hparams

    for name in ("avel", "psp", "vscg"):
        hp = resolve_hparams(name)
        assert fit_map_size(name, hp, {}, (7, 7))["att_dim"] == 49
        assert fit_map_size(name, hp, {}, (2, 2))["att_dim"] == 4
        assert fit_map_size(name, {**hp, "att_dim": 9}, {"att_dim": 9}, (2, 2))["att_dim"] == 9
        broadcast = {**hp, "audio_term": "broadcast"}
        assert fit_map_size(name, broadcast, {}, (2, 2)) == broadcast
    cmbs = resolve_hparams("cmbs")
    assert fit_map_size("cmbs", cmbs, {}, (2, 2)) == cmbs


def test_each_head_defaults_to_its_authors_seed_and_the_run_records_it(toyset, tmp_path,
                                                                       monkeypatch):
    from pipeline.heads import resolve
    authors = {("avel", "fully"): 3344, ("avel", "weak"): 3344, ("psp", "fully"): 123,
               ("psp", "weak"): 123, ("vscg", "fully"): 123, ("vscg", "weak"): 123,
               ("cmbs", "fully"): 43, ("cmbs", "weak"): 666, ("cace", "fully"): 3917,
               ("m2n", "fully"): 0, ("majority", "fully"): 0}  # no released code: 0
    for (head, setting), seed in authors.items():
        assert resolve(head, setting).seed == seed, (head, setting)
        assert resolve(head, setting, seed=5).seed == 5
    monkeypatch.setattr(_ToyHead, "SEEDS", {"fully": 11})
    data = toyset[0]
    default = train(run_spec("toy", "fully", device="cpu", recipe_overrides={"epochs": 1}), data,
                    tmp_path / "default")
    given = train(run_spec("toy", "fully", device="cpu", seed=11, recipe_overrides={"epochs": 1}),
                  data, tmp_path / "given")
    assert ckpt_io.load(tmp_path / "default" / "best.pt")["seed"] == 11
    assert default.history == given.history


def test_avel_walks_the_train_split_in_order_without_the_last_partial_batch(toyset, tmp_path):
    """AVEL's scripts: no shuffling, whole batches only (``shuffle: false, drop_last: true``);
    CMBS's: shuffled batches, the last partial one kept."""
    from pipeline.heads import resolve
    assert {k: getattr(resolve("avel", s).recipe, k) for s in ("fully", "weak")
            for k in ("shuffle", "drop_last")} == {"shuffle": False, "drop_last": True}
    assert resolve("cmbs").recipe.shuffle and not resolve("cmbs").recipe.drop_last
    data = toyset[0]
    train_audio = data.splits["train"].audio.float()
    seen = []

    class Recording(_ToyHead):
        def loss(self, out, batch):
            if self.training:
                seen.append(batch["audio"].clone())
            return super().loss(out, batch)
    if "toy_recording" not in _registry._HEADS:
        register_head("toy_recording")(Recording)
    else:
        _registry._HEADS["toy_recording"].loss = Recording.loss
    n, bs = len(train_audio), 7
    train(run_spec("toy_recording", "fully", device="cpu", recipe_overrides={
        "epochs": 1, "batch_size": bs, "shuffle": False, "drop_last": True}), data, tmp_path / "a")
    assert [len(b) for b in seen] == [bs] * (n // bs)
    torch.testing.assert_close(torch.cat(seen), train_audio[:n // bs * bs])
    seen.clear()
    train(run_spec("toy_recording", "fully", device="cpu", recipe_overrides={
        "epochs": 1, "batch_size": bs}), data, tmp_path / "b")
    assert sum(len(b) for b in seen) == n and not torch.equal(torch.cat(seen), train_audio)


def test_standardize_centres_a_channel_constant_on_train_and_stays_finite_in_float16():
    """A channel constant on the train split (a dead unit of a random-init encoder) is centred,
    not divided by ~0 (scikit-learn's rule); a val value far from it stays finite in float16."""
    from pipeline.training.data import SplitData, feature_stats

    def split(name, visual, audio):
        n = len(visual)
        return SplitData(name, np.arange(n), np.array([], dtype=int), visual, audio,
                         torch.zeros(n, 10, 3), torch.zeros(n, 3))
    visual = (torch.randn(4, 10, 1, 1, 2) * 0.01).half()  # channel 0: std about 0.01
    visual[..., 1] = 3.0  # channel 1: constant on train
    train_split = split("train", visual, torch.randn(4, 10, 2).half())
    stats = feature_stats(train_split)
    assert float(stats["visual_std"][1]) == 1.0 and float(stats["visual_mean"][1]) == 3.0
    val_visual = torch.randn(2, 10, 1, 1, 2).half()
    val_visual[..., 1] = 40000.0
    val = split("val", val_visual, torch.randn(2, 10, 2).half()).normalized(stats)
    assert torch.isfinite(val.visual).all() and val.visual.dtype == torch.float16
    assert torch.allclose(val.visual[..., 1].float(), torch.full((2, 10, 1, 1), 39997.0), rtol=1e-3)
    huge = split("val", torch.full((1, 10, 1, 1, 2), 60000.0).half(), torch.zeros(1, 10, 2).half())
    z = huge.normalized(stats).visual  # channel 0: 60000 / 0.01 is beyond float16's 65504
    assert torch.isfinite(z).all() and float(z[..., 0].max()) == 65504.0
