"""pipeline.data.synth: AVE layout, decodability, determinism, labels agree with content."""
from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest

from pipeline.config import ConfigError, SynthConfig, from_dict
from pipeline.data.ave import load_annotations
from pipeline.data.synth import (AVE_CATEGORIES, class_signatures, draw_specs, generate,
                                 load_synth_meta)
from pipeline.media.decode import decode_audio, decode_video, read_info

SPLIT_VIDEOS = {"train": 6, "val": 3, "test": 3}


def test_layout_and_annotations(ave_root, tiny_synth_config):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any AnnotationWarning fails the test
        ann = load_annotations(ave_root)
    assert ann.problems == []
    assert ann.categories == list(AVE_CATEGORIES[:3])
    assert ann.num_lines == len(ann.samples) == 13  # 12 videos, one with two lines
    all_idx = sorted(i for v in ann.splits.values() for i in v)
    assert all_idx == list(range(13))  # splits are disjoint and cover every line
    for split, idx in ann.splits.items():  # videos per split; every class in every split
        assert len({ann.samples[i].video_id for i in idx}) == SPLIT_VIDEOS[split]
        assert {ann.samples[i].category for i in idx} == set(ann.categories)
    ids = ann.video_ids()
    assert len(ids) == 12 and all(len(v) == 11 for v in ids)
    assert all(ann.video_path(v).is_file() for v in ids)
    lines_of = {v: [s for s in ann.samples if s.video_id == v] for v in ids}
    (two,) = [v for v, ss in lines_of.items() if len(ss) == 2]
    assert lines_of[two][0].category != lines_of[two][1].category
    split_of = {i: k for k, v in ann.splits.items() for i in v}
    assert len({split_of[s.index] for s in lines_of[two]}) == 1  # both lines in one split
    assert (ave_root / "Annotations.txt").read_text().startswith("Category&VideoID&Quality")
    labels = ann.labels()
    assert labels.shape == (13, 10, 4) and np.all(labels.sum(-1) == 1)


def test_videos_decode_at_the_right_rate(ave_root, tiny_synth_config):
    ann = load_annotations(ave_root)
    for vid in ann.video_ids()[:4]:
        info = read_info(ann.video_path(vid))
        assert info.status == "ok", info
        assert info.num_frames == 250 and info.fps == pytest.approx(25.0)
        assert info.duration == pytest.approx(10.0, abs=0.05)
        assert (info.width, info.height) == (64, 48) and not info.vfr
        assert 10.0 <= info.audio_duration < 10.1
        assert decode_audio(ann.video_path(vid), 16000).flags == ()


def test_same_seed_same_set_other_seed_differs(ave_root, tiny_synth_config, tmp_path):
    cfg = replace(tiny_synth_config, train=2, val=1, test=1)
    a, b = generate(cfg, tmp_path / "a"), generate(cfg, tmp_path / "b")
    for name in ("Annotations.txt", "trainSet.txt", "valSet.txt", "testSet.txt"):
        assert (a / name).read_text() == (b / name).read_text()
    for vid in load_annotations(a).video_ids():
        pa, pb = a / "AVE" / f"{vid}.mp4", b / "AVE" / f"{vid}.mp4"
        np.testing.assert_array_equal(decode_video(pa, 4).frames, decode_video(pb, 4).frames)
        np.testing.assert_array_equal(decode_audio(pa, 16000).samples,
                                      decode_audio(pb, 16000).samples)
    c = generate(replace(cfg, seed=cfg.seed + 1), tmp_path / "c")
    assert (c / "Annotations.txt").read_text() != (a / "Annotations.txt").read_text()
    # regenerating in place replaces the set atomically, leaving no temporary directory
    generate(cfg, tmp_path / "a")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]


def _band_snr(x: np.ndarray, sr: int, freq: float) -> float:
    """Mean power within +-5% of ``freq`` over the median power of the spectrum (the noise
    floor, robust to another tone; white noise alone: ~1.4)."""
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(x.shape[-1], 1 / sr)
    band = (f > freq * 0.95) & (f < freq * 1.05)
    return float(spec[band].mean() / np.median(spec))


def test_labels_agree_with_content(ave_root):
    """Each event's object (its class colour) is visible exactly in its event / silent_object
    segments, its tone audible exactly in its event / offscreen_sound segments, and its event
    segments are the labelled ones."""
    meta = load_synth_meta(ave_root)
    classes = meta["classes"]
    ann = load_annotations(ave_root)
    by_key = {(s.video_id, ann.categories.index(s.category)): s for s in ann.samples}
    colours = np.array([c["rgb"] for c in classes], np.float64)
    kinds_seen = set()
    for v in meta["videos"]:
        path = ave_root / "AVE" / f"{v['video_id']}.mp4"
        px = decode_video(path, 2).frames.reshape(10, -1, 3).astype(np.float64)
        saturated = (px.max(-1) - px.min(-1)) > 80  # object pixels; the background is grey
        nearest = np.argmin(((px[..., None, :] - colours) ** 2).sum(-1), -1)  # (10, P)
        audio = decode_audio(path, 16000).samples
        for ev in v["events"]:
            if v["split"] == "background":  # background-only: in no annotation line
                assert (v["video_id"], ev["category"]) not in by_key
                labelled = [False] * 10
            else:
                s = by_key[(v["video_id"], ev["category"])]
                labelled = [s.start <= t < s.end for t in range(10)]
            assert labelled == [k == "event" for k in ev["segments"]]
            freq = classes[ev["category"]]["freq_hz"]
            for t, kind in enumerate(ev["segments"]):
                kinds_seen.add(kind)
                share_px = np.mean(saturated[t] & (nearest[t] == ev["category"]))
                assert (share_px > 0.03) == (kind in ("event", "silent_object")), (v, t, share_px)
                snr = _band_snr(audio[t], 16000, freq)
                assert (snr > 20) == (kind in ("event", "offscreen_sound")), (v, t, snr)
                assert snr > 20 or snr < 3
    assert kinds_seen >= {"event", "empty"}


def test_draw_distribution():
    cfg = SynthConfig(num_classes=6, train=600, val=0, test=0)
    specs = [s for s in draw_specs(cfg) if s.split != "background"]
    events = [s.events[0] for s in specs]
    full = np.mean([(e.start, e.end) == (0, 10) for e in events])
    assert abs(full - cfg.full_fraction) < 0.06
    partial = [e for e in events if (e.start, e.end) != (0, 10)]
    assert {s.end - s.start for s in partial} == set(range(1, 10))
    assert {k for e in partial for k in e.segments} == {"event", "empty", "silent_object",
                                                         "offscreen_sound"}
    assert np.bincount([s.category for s in specs]).tolist() == [100] * 6


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_single_modality_share(share):
    specs = draw_specs(SynthConfig(num_classes=6, train=600, val=0, test=0, full_fraction=0.0,
                                   single_modality=share))
    kinds = [k for s in specs if s.split != "background"
             for k in s.events[0].segments if k != "event"]
    counts = {k: kinds.count(k) / len(kinds) for k in ("empty", "silent_object", "offscreen_sound")}
    assert abs(counts["empty"] - (1 - share)) < 0.03
    assert abs(counts["silent_object"] - share / 2) < 0.03
    assert abs(counts["offscreen_sound"] - share / 2) < 0.03


def test_signatures_are_distinct():
    sigs = class_signatures(28)
    assert len({s.rgb + (s.shape,) for s in sigs}) == 28
    freqs = sorted(s.freq_hz for s in sigs)
    assert freqs[-1] < 8000 and min(np.diff(freqs) / freqs[:-1]) > 0.1


def test_config_validation():
    with pytest.raises(ConfigError, match="even"):
        from_dict(SynthConfig, {"width": 161}, "synth")
    with pytest.raises(ConfigError, match="num_classes"):
        from_dict(SynthConfig, {"num_classes": 29}, "synth")
    with pytest.raises(ConfigError, match=r"synth\.single_modality: must be in 0\.\.1"):
        from_dict(SynthConfig, {"single_modality": 1.5}, "synth")


def test_dataclass_defaults_are_the_demo_profile():
    """params.yaml's synth section is the dataclass's defaults, and the CLI's."""
    import dataclasses
    from pathlib import Path

    import yaml

    from pipeline.data.synth import cli_parser

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    demo = {**raw["synth"], **raw["runtime"]["synth"]}  # runtime knobs are read into their section
    defaults = dataclasses.asdict(SynthConfig())
    assert defaults == demo
    args = vars(cli_parser().parse_args([]))
    assert args == defaults
    args = vars(cli_parser().parse_args(["out", "--num-classes", "3", "--single-modality", "0.5"]))
    assert (args["root"], args["num_classes"], args["single_modality"]) == ("out", 3, 0.5)


def test_cli_errors_are_one_line(tmp_path, capsys):
    from pipeline.data.synth import main

    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "x"), "--width", "161"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: synth.width/height: even and >= 16 (H.264 4:2:0), got 161x120"]
    assert not (tmp_path / "x").exists()


def test_cml_split_partitions_the_lines_with_partial_events_in_val_and_test(ave_root):
    ann = load_annotations(ave_root)
    by_index = ann.by_index()
    cml = ann.cml_splits
    assert sorted(i for v in cml.values() for i in v) == list(range(ann.num_lines))
    assert {s: len(v) for s, v in cml.items()} == {s: len(v) for s, v in ann.splits.items()} \
        or len(cml["train"]) > len(ann.splits["train"])  # too few partial events: train keeps them
    for split in ("val", "test"):
        assert cml[split], split
        assert all(0 < by_index[i].end - by_index[i].start < 10 for i in cml[split])


def test_background_only_videos_are_listed_and_eventless(tmp_path):
    cfg = SynthConfig(num_classes=3, train=40, val=5, test=5, background_only=0.1, two_label=0)
    specs = draw_specs(cfg)
    bg = [s for s in specs if s.split == "background"]
    assert len(bg) == 5  # round(0.1 x 50 annotation lines)
    assert all(e.start == e.end == 0 and "event" not in e.segments for s in bg for e in s.events)
    assert len(draw_specs(replace(cfg, background_only=0.0))) == 50
    small = replace(cfg, root="", train=2, val=1, test=1, width=32, height=32, background_only=0.5,
                    workers=1)
    root = generate(small, tmp_path / "set")
    ids = (root / "backgroundSet.txt").read_text().split()
    assert len(ids) == 2 and all((root / "AVE" / f"{v}.mp4").is_file() for v in ids)
    ann = load_annotations(root)
    assert not set(ids) & set(ann.video_ids())
