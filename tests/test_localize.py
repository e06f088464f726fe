"""pipeline.localize: a head trained on a small synthetic set (features from the real extractors,
random-initialised) finds events planted at known times in new videos of any length."""
from __future__ import annotations

import hashlib
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import SynthConfig
from pipeline.data.ids import safe_filename as safe_name
from pipeline.localize import intervals, localize, main, num_segments, window_starts

pytestmark = pytest.mark.usefixtures("torch_single_thread")

CFG = SynthConfig(root="", seed=3, num_classes=2, train=24, val=6, test=2, width=96, height=64,
                  fps=10.0, sample_rate=16000, full_fraction=0.2, single_modality=0.0, noise=0.05,
                  two_label=0, workers=2)
VISUAL = {"encoder": "vgg19", "weights": "random", "seed": 0}
AUDIO = {"encoder": "vggish", "weights": "random", "seed": 0}


# ------------------------------------------------------------------------------------------
# Pure rules
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,starts", [(1, [0]), (10, [0]), (11, [0, 1]), (20, [0, 10]),
                                      (25, [0, 10, 15]), (30, [0, 10, 20])])
def test_windows_cover_every_segment_and_the_last_one_ends_the_clip(n, starts):
    assert window_starts(n) == starts
    covered = set().union(*(range(s, s + 10) for s in starts))
    assert covered >= set(range(n)) and max(starts) + 10 == max(n, 10)


@pytest.mark.parametrize("duration,n", [(10.0, 10), (9.95, 10), (10.04, 10), (25.0, 25), (3.2, 4),
                                        (0.5, 1), (10.3, 11), (0.1, 0), (0.04, 0)])
def test_segments_of_a_duration(duration, n):
    assert num_segments(duration) == n


def test_intervals_merge_runs_of_one_class():
    names = ["bell", "dog", "background"]
    ev = intervals(np.array([2, 0, 0, 2, 1, 1, 1, 0, 2, 2]), 2, names)
    assert [(e["class"], e["start"], e["end"]) for e in ev] == [
        ("bell", 1, 3), ("dog", 4, 7), ("bell", 7, 8)]


def test_names_from_data_stay_one_file_name():
    for raw in ("../../etc/passwd", ".hidden", "a/b", "ok_name-1.x"):
        name = safe_name(raw)
        assert "/" not in name and not name.startswith(".") and name
    assert safe_name("ok_name-1.x") == "ok_name-1.x"
    assert safe_name("a/b") != safe_name("a_b")


@pytest.mark.parametrize("head,setting", [("avel", "fully"), ("avel", "weak"), ("psp", "fully"),
                                          ("psp", "weak"), ("cmbs", "fully"), ("cmbs", "weak"),
                                          ("cace", "fully"), ("m2n", "fully"), ("vscg", "fully"),
                                          ("vscg", "weak"), ("majority", "fully"),
                                          ("audio_only", "weak")])
def test_probabilities_agree_with_predict(head, setting):
    from pipeline.heads import build_head, get_head_class

    torch.manual_seed(0)
    per_position = get_head_class(head).DEFAULTS.get("audio_term") == "position"
    h = build_head(head, visual_dim=16, audio_dim=8, num_classes=3, setting=setting,
                   **({"att_dim": 4} if per_position else {})).eval()  # 2x2 maps
    with torch.no_grad():
        out = h(torch.randn(4, 10, 2, 2, 16), torch.randn(4, 10, 8))
        p, pred = h.probabilities(out), h.predict(out)
    assert p.shape == (4, 10, 4) and (p >= 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(4, 10))
    event = pred != 3  # an event segment's class is the most probable event class
    assert (pred[event] == p[..., :3].argmax(-1)[event]).all()


# ------------------------------------------------------------------------------------------
# A trained model and new videos
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """psp trained (fully) on the synthetic set's features; returns best.pt."""
    from pipeline.data.manifest import load_manifest
    from pipeline.data.prepare import prepare
    from pipeline.data.synth import generate
    from pipeline.encoders.spec import ModelSpec
    from pipeline.features.config import ExtractConfig
    from pipeline.features.engine import extract
    from pipeline.training.data import load_dataset
    from pipeline.training.loop import run_spec, train

    base = tmp_path_factory.mktemp("localize")
    root = generate(CFG, base / "raw")
    prepare(root, base / "prepared", workers=2)
    rows = load_manifest(base / "prepared")
    cfg = ExtractConfig(device="cpu", frames_per_segment=2, image_size=64, dtype="float32",
                        amp="none", channels_last=False, batch_videos=8, workers=2, shard_videos=64)
    for name, spec in (("vgg19", VISUAL), ("vggish", AUDIO)):
        extract(name, ModelSpec(**spec), rows, base / "features" / f"{name}.h5", cfg, progress=False)
    data = load_dataset(base / "prepared", base / "features", "vgg19", "vggish", splits=("train", "val"))
    spec = run_spec("psp", "fully", recipe_overrides={"epochs": 6, "batch_size": 8, "lr": 1e-3},
                   device="cpu", resume=False, feature_norm="standardize")
    res = train(spec, data, base / "models")
    assert res.best_val_accuracy > 0.8, res.best_val_accuracy  # the head learned the set
    return base / "models" / "best.pt"


def _clip(events: list[tuple[int, int, int]], seconds: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """yuv420p frames and audio of ``seconds`` s with ``(class, start, end)`` events (seconds),
    rendered 10 s at a time by the synthetic set's renderer; elsewhere an empty scene."""
    from pipeline.data.synth import EventSpec, VideoSpec, class_signatures, render_audio, render_frames

    sigs = class_signatures(CFG.num_classes)
    frames, audio = [], []
    for k, t0 in enumerate(range(0, seconds, 10)):
        inside = [(c, max(s, t0) - t0, min(e, t0 + 10) - t0) for c, s, e in events if s < t0 + 10 and e > t0]
        cat = inside[0][0] if inside else 0
        kinds = tuple("event" if any(s <= t < e for _, s, e in inside) else "empty" for t in range(10))
        ev = EventSpec(cat, *(inside[0][1:] if inside else (0, 0)), kinds)
        spec = VideoSpec(f"planted{k}", "test", (ev,), seed * 100 + k)
        frames.append(render_frames(spec, sigs, CFG))
        audio.append(render_audio(spec, sigs, CFG))
    n = int(round(seconds * CFG.fps))
    return np.concatenate(frames)[:n], np.concatenate(audio)[:seconds * CFG.sample_rate]


def _write(path: Path, events, seconds: int, seed: int, audio: bool = True) -> Path:
    from pipeline.media.write import write_mp4

    frames, samples = _clip(events, seconds, seed)
    write_mp4(path, frames, CFG.fps, samples if audio else None, CFG.sample_rate, frame_format="yuv420p")
    return path


PLANTED = {  # name: (seconds, [(class, start s, end s)], has audio)
    "long 25s": (25, [(0, 2, 6), (1, 13, 18), (0, 21, 24)], True),
    "clip10": (10, [(1, 3, 8)], True),
    "short6": (6, [(0, 1, 4)], True),
    "silent": (10, [(0, 2, 7)], False),
}


@pytest.fixture(scope="module")
def localized(model, tmp_path_factory):
    base = tmp_path_factory.mktemp("videos")
    (base / "in").mkdir()
    paths = [_write(base / "in" / f"{name}.mp4", ev, secs, seed=i, audio=has_audio)
             for i, (name, (secs, ev, has_audio)) in enumerate(PLANTED.items())]
    lines: list[str] = []
    results = localize(paths, model, base / "out", device="cpu", log=lines.append)
    return base, results, lines


def test_recovers_planted_intervals_within_one_segment(localized):
    _, results, _ = localized
    by_video = {r["video"]: r for r in results}
    for name, (secs, planted, has_audio) in PLANTED.items():
        r = by_video[f"{name}.mp4"]
        assert r["num_segments"] == secs and len(r["segments"]) == secs and r["audio"] is has_audio
        if not has_audio:
            continue
        found = [(e["class_index"], e["start"], e["end"]) for e in r["events"]]
        print(f"{name}: planted {planted}, found {found}")
        assert len(found) == len(planted), (name, found, planted)
        for (c, s, e), (fc, fs, fe) in zip(planted, found):
            assert fc == c and abs(fs - s) <= 1 and abs(fe - e) <= 1, (name, found, planted)


def test_outputs_per_video_and_summary_lines(localized):
    base, results, lines = localized
    out = base / "out"
    assert len(lines) >= len(PLANTED)
    for r in results:
        doc = json.loads((out / f"{r['name']}.json").read_text())
        assert doc["segments"][0].keys() >= {"start", "end", "class", "probability", "event"}
        assert (out / f"{r['name']}.png").stat().st_size > 1000
        assert all(0.0 <= s["probability"] <= 1.0 for s in doc["segments"])
    assert "long_25s" in results[0]["name"] and results[0]["windows"] == [0, 10, 15]
    silent = next(line for line in lines if line.startswith("silent.mp4"))
    assert "no audio track" in silent
    assert any(line.startswith("long 25s.mp4") and "-" in line for line in lines)


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_page_plays_each_video_with_its_timeline(localized):
    base, results, _ = localized
    page = _Page()
    page.feed((base / "out" / "index.html").read_text())
    videos = [a for t, a in page.tags if t == "video"]
    assert len(videos) == len(PLANTED)
    for v in videos:
        assert not v["src"].startswith(("/", "http")) and (base / "out" / _unquote(v["src"])).is_file()
    segs = [a for t, a in page.tags if t == "div" and "seg" in a.get("class", "")]
    assert len(segs) == sum(secs for secs, _, _ in PLANTED.values())
    assert not any(t in ("script", "link") for t, _ in page.tags)  # self-contained


def _unquote(src: str) -> str:
    from urllib.parse import unquote
    return unquote(src)


def test_missing_encoder_weights_are_named(model, tmp_path):
    from pipeline.training import checkpoint as ckpt_io

    ckpt = ckpt_io.load(model)
    ckpt["features"]["visual"]["model_spec_json"] = {**ckpt["features"]["visual"]["model_spec_json"],
                                                     "weights": str(tmp_path / "gone.pth")}
    ckpt_io.save(ckpt, tmp_path / "moved.pt")
    (tmp_path / "x.mp4").write_bytes(b"\0")  # videos are checked before the model is read
    with pytest.raises(FileNotFoundError, match="gone.pth"):
        localize([tmp_path / "x.mp4"], tmp_path / "moved.pt", tmp_path / "out", device="cpu")
    ckpt["features"]["visual"]["model_spec_json"]["weights"] = "published"
    ckpt["features"]["visual"]["weights"] = "published AVE features: Keras VGG-19"
    ckpt_io.save(ckpt, tmp_path / "published.pt")
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "x.mp4"), "--model", str(tmp_path / "published.pt"), "--out",
              str(tmp_path / "o")])
    assert e.value.code == 2
    with pytest.raises(FileNotFoundError, match="--visual-weights"):
        localize([tmp_path / "x.mp4"], tmp_path / "published.pt", tmp_path / "out", device="cpu")
    del ckpt["features"]
    ckpt_io.save(ckpt, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="no feature provenance"):
        localize([tmp_path / "x.mp4"], tmp_path / "old.pt", tmp_path / "out", device="cpu")


def test_videos_are_checked_before_the_model_is_read(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # the model does not exist either: videos come first
        main(["--model", str(tmp_path / "absent.pt"), "--out", str(tmp_path / "o"),
              str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {tmp_path / 'a.mp4'}: no such video file (and 1 more: {tmp_path / 'b.mp4'}); "
        "nothing was localized"]
    assert not (tmp_path / "o").exists()


def test_too_short_video_dash_names_model_record_and_flags(model, tmp_path, monkeypatch, capsys):
    """A 0.04-s video is reported too short (prepare's rule), not localized; a video whose name
    begins with '-' is a video; each JSON records the model; flags are on the printed line."""
    from pipeline.media.write import write_mp4

    monkeypatch.chdir(tmp_path)
    frames, samples = _clip([(1, 1, 3)], 10, seed=7)
    write_mp4(tmp_path / "tiny.mp4", frames[:1], 25.0, samples[:640], CFG.sample_rate,
              frame_format="yuv420p")  # one frame at 25 fps: 0.04 s
    _write(tmp_path / "-l3a3qenCJv.mp4", [(1, 1, 3)], 5, seed=8)  # 5 s: padded to 10 segments
    code = main(["-l3a3qenCJv.mp4", "--model", str(model), "--out", "out", "--device", "cpu",
                 "--", "tiny.mp4"])
    assert code == 1  # one video was not localized (python -m pipeline.localize exits with it)
    lines = capsys.readouterr().out.splitlines()
    tiny = next(line for line in lines if line.startswith("tiny.mp4"))
    assert re.fullmatch(r"tiny\.mp4: too short \(0\.0\d s < data\.min_duration 1 s; prepare "
                        r"excludes such videos\): not localized", tiny), tiny
    assert not (tmp_path / "out" / "tiny.json").exists()
    dash = next(line for line in lines if line.startswith("-l3a3qenCJv.mp4"))
    assert re.match(r"-l3a3qenCJv\.mp4: 5\.\d\d s, 5 segments, flags: [a-z_ ]*padded_short", dash), dash
    doc = json.loads(next((tmp_path / "out").glob("*l3a3qenCJv*.json")).read_text())
    assert doc["num_segments"] == 5 and "padded_short" in doc["flags"]
    rec = doc["model"]
    assert rec["path"] == str(model) and rec["head"] == "psp" and rec["setting"] == "fully"
    assert rec["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert rec["encoders"]["visual"]["encoder"] == "vgg19"
    assert rec["encoders"]["audio"]["weights"] == "random(seed=0)"
    assert doc["prediction_rule"] is None  # psp: the argmax of each segment's scores


def test_prediction_rule_is_stated_where_it_is_not_a_segment_argmax():
    from pipeline.localize import prediction_rule

    assert prediction_rule({"head": "cmbs", "setting": "weak", "hparams": {"weak_predict": "video"}}
                           ).startswith("weak_predict: video: every segment gets the video's class")
    assert prediction_rule({"head": "cmbs", "setting": "weak",
                            "hparams": {"weak_predict": "segment"}}) is None
    assert prediction_rule({"head": "cmbs", "setting": "fully", "hparams": {}}).startswith("relevance")
    assert prediction_rule({"head": "psp", "setting": "weak", "hparams": {}}) is None
