"""Localize audio-visual events in your own videos with a trained head.

    python -m pipeline.localize [--model models/best.pt] --out DIR [--] VIDEO [VIDEO ...]

The videos are checked (each exists and is readable) before the model is loaded; a name that
begins with ``-`` (e.g. ``-l3a3qenCJv.mp4``, a YouTube id) is a video when such a file exists,
and anything after ``--`` is a video.

The videos are decoded and encoded exactly as the features the head was trained on: the
checkpoint records the feature files' provenance (``features``: encoder, weights and their
sha256, frames per segment, frame sampling rule, image size, sample rate), and the encoders
are rebuilt from it with the one weights resolver; weights that are not available (e.g. the
published AVE features' Keras VGG-19) are an error naming what is missing and the option that
supplies it. The checkpoint's feature standardisation is applied as in evaluation.

Segments and windows. ``prepare``'s duration rule applies: a video shorter than
``data.min_duration`` (the value the checkpoint's training run used; prepare's default when the
checkpoint does not record it), or with no whole segment, is reported as too short and not
localized. A video of ``d`` seconds has ``n = ceil(d - 0.1)`` 1-s segments (0.1 s: the tolerance
under which ``prepare`` calls a clip short). Heads see 10 segments:

* ``n <= 10``: one window, padded as ``prepare`` / extraction pad (the last frame repeated,
  silence after the audio); only the ``n`` real segments are reported.
* ``n > 10``: windows start at 0, 10, 20, ... while a whole window fits, and the last window
  is the last 10 segments (start ``n - 10``), so it overlaps its predecessor when ``n`` is not
  a multiple of 10. A segment covered by two windows keeps the result of the earlier window.

A video is decoded whole, in a worker process with a timeout, at the encoder's frame size
(memory grows with length: 16 frames a second at 224 px are about 2.4 MB a second).
A video without an audio track is encoded with silence, as extraction does, and its output
says ``"audio": false``. Per video, ``<out>/<name>.json`` (per segment: class, its
probability, event or background; events merged into intervals of consecutive segments with
the same class, start and end in seconds; the model: path, sha256, head, setting, encoders and
weights; the head's prediction rule where it is not a per-segment argmax, e.g. CMBS weak
``weak_predict: video``) and ``<out>/<name>.png`` (the timeline), where ``<name>`` is the file
name made safe; ``<out>/index.html`` shows each video with its timeline. One summary line per
video is printed, with the decoding flags (``padded_short``, ``vfr``, ``padded_audio``, no
audio track). No DVC needed; CPU or GPU (``--device``).

Exit status: 0, or 1 when a video could not be localized (too short, undecodable); 2 with one
line ``error: <file or option>: ...`` when an input is unusable (a missing or unreadable video,
a checkpoint that is not a training checkpoint, missing encoder weights).
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from pipeline import layout
from pipeline.files import check_writable
from pipeline.cli import stage_main
from pipeline.config import ConfigError, DataConfig, InputError, Paths
from pipeline.data.ids import safe_filename
from pipeline.encoders.base import Encoder, build_encoder
from pipeline.encoders.spec import ModelSpec
from pipeline.encoders.weights import WeightsNotFoundError, file_sha256
from pipeline import heads, settings
from pipeline.runtime import NUM_SEGMENTS, atomic_path, atomic_write_json, select_device
from pipeline.training import checkpoint as ckpt_io

SHORT_TOLERANCE_S = 0.1  # = pipeline.media.decode.SHORT_TOLERANCE_S: a 9.95 s clip has 10 segments
DECODE_TIMEOUT_S = 600.0  # per video (decoding runs in a worker process: a hang costs one video)


# ------------------------------------------------------------------------------------------
# Encoders from the checkpoint
# ------------------------------------------------------------------------------------------
@dataclass
class Extractors:
    """The two encoders and the decoding parameters of the features a head was trained on."""

    visual: Encoder
    audio: Encoder
    frames_per_segment: int
    sampling: str
    image_size: tuple[int, int]
    sample_rate: int
    notes: list[str] = field(default_factory=list)


def _encoder(kind: str, meta: dict[str, Any], override: Optional[str], allow_download: bool,
             model: Path) -> tuple[Encoder, Optional[str]]:
    spec = meta.get("model_spec_json")
    if not isinstance(spec, dict) or not spec.get("encoder"):
        raise InputError(f"{model}: the {kind} feature provenance names no encoder "
                         f"(model_spec); these features cannot be recomputed from a video")
    weights = override or spec.get("weights", "")
    if weights == "published":
        raise WeightsNotFoundError(
            f"{model}: the {kind} features were imported ({meta.get('weights', 'published file')}); "
            f"their {spec['encoder']} weights are not available to this pipeline: pass "
            f"--{kind}-weights PATH, a {spec['encoder']} checkpoint of those weights in the "
            "format pipeline.encoders loads")
    fields = {k: v for k, v in spec.items() if k in ModelSpec.__dataclass_fields__}
    image = meta.get("image_size") or None if kind == "visual" else None
    enc = build_encoder(ModelSpec(**{**fields, "weights": weights}), allow_download=allow_download,
                        image_size=image)
    recorded, got = meta.get("weights_sha256") or "", enc.weights_sha256()
    note = None
    if override:
        note = (f"{kind}: weights {override} given on the command line (features were made "
                f"with {meta.get('weights')})")
    elif recorded and recorded != got:
        raise InputError(f"{model}: the {kind} encoder's weights ({enc.weights.describe()}, sha256 "
                         f"{got[:12]}) are not those the features were made with (sha256 "
                         f"{recorded[:12]}, {meta.get('weights')})")
    return enc, note


def extractors_from_checkpoint(ckpt: dict[str, Any], model: Path, device: torch.device, *,
                               visual_weights: Optional[str] = None,
                               audio_weights: Optional[str] = None,
                               allow_download: bool = False) -> Extractors:
    """Rebuild the encoders recorded in ``ckpt['features']`` on ``device``."""
    prov = ckpt.get("features")
    if not prov:
        raise InputError(f"{model}: the checkpoint records no feature provenance ('features'); "
                         "retrain it with this version of the pipeline")
    v_enc, v_note = _encoder("visual", prov["visual"], visual_weights, allow_download, model)
    a_enc, a_note = _encoder("audio", prov["audio"], audio_weights, allow_download, model)
    v_enc.channels_last = False
    return Extractors(v_enc.eval().to(device), a_enc.eval().to(device),
                      int(prov["visual"].get("frames_per_segment") or 1),
                      str(prov["visual"].get("sampling") or "timestamp"),
                      tuple(v_enc.prep.size), int(a_enc.sample_rate),
                      [n for n in (v_note, a_note) if n])


# ------------------------------------------------------------------------------------------
# Segments, windows, decoding
# ------------------------------------------------------------------------------------------
def num_segments(duration: float) -> int:
    """1-s segments of a video of ``duration`` seconds, ``ceil(d - 0.1)`` (see the module doc);
    0 for a video without a whole segment (too short to localize)."""
    return max(0, math.ceil(duration - SHORT_TOLERANCE_S))


def too_short(duration: float, min_duration: float) -> Optional[str]:
    """Why a video is too short to localize (``prepare``'s rule), or None."""
    if duration < min_duration:
        return f"{duration:.2f} s < data.min_duration {min_duration:g} s"
    if num_segments(duration) == 0:
        return f"{duration:.2f} s: no 1-s segment (at least {SHORT_TOLERANCE_S:g} s are needed)"
    return None


def min_duration_of(ckpt: dict[str, Any]) -> tuple[float, str]:
    """``data.min_duration`` of the checkpoint's training run, and where it came from."""
    value = ((ckpt.get("params") or {}).get("data") or {}).get("min_duration")
    if value is None:
        return DataConfig.min_duration, "prepare's default; the checkpoint does not record it"
    return float(value), "the checkpoint's data.min_duration"


def window_starts(n: int, window: int = NUM_SEGMENTS) -> list[int]:
    """First segment of each window (see the module doc): ``[0]`` up to ``window`` segments,
    else ``0, window, 2 window, ...`` while a window fits, then ``n - window``."""
    if n <= window:
        return [0]
    starts = list(range(0, n - window + 1, window))
    return starts if starts[-1] == n - window else starts + [n - window]


def decode_clip(path: str, frames_per_segment: int, sampling: str, size: tuple[int, int],
                sample_rate: int, min_duration: float = 0.0) -> dict[str, Any]:
    """Probe and decode a whole video (run inside a :class:`DecodePool` worker): frames
    ``(m, F, H, W, 3)`` and audio ``(m, sample_rate)`` for ``m = max(n, 10)`` segments. A video
    too short for ``prepare`` is a ``too_short`` failure, not decoded."""
    from pipeline.media.decode import DecodeFailure, decode_audio, decode_video, read_info

    info = read_info(path)
    if info.status in ("missing", "corrupt", "no_video", "unusable"):
        raise DecodeFailure(path, info.status, info.message)
    short = too_short(info.duration, min_duration)
    if short:
        raise DecodeFailure(path, "too_short", short)
    n = num_segments(info.duration)
    m = max(n, NUM_SEGMENTS)
    video = decode_video(path, frames_per_segment, sampling, size, num_segments=m)
    audio = decode_audio(path, sample_rate, num_segments=m)
    return {"duration": info.duration, "fps": info.fps, "width": info.width, "height": info.height,
            "segments": n, "frames": video.data, "samples": audio.data,
            "has_audio": info.has_audio, "flags": sorted(set(video.flags) | set(audio.flags))}


# ------------------------------------------------------------------------------------------
# Prediction
# ------------------------------------------------------------------------------------------
@torch.no_grad()
def predict_windows(head, ext: Extractors, clip: dict[str, Any], norm: Optional[dict],
                    device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Per-segment ``(classes (n,), probabilities (n, C+1))`` over the clip's windows."""
    n = clip["segments"]
    classes = np.zeros(n, np.int64)
    probs = np.zeros((n, head.num_classes + 1), np.float32)
    done = 0
    for s in window_starts(n):
        frames = torch.from_numpy(clip["frames"][s:s + NUM_SEGMENTS])[None].to(device)
        samples = torch.from_numpy(clip["samples"][s:s + NUM_SEGMENTS])[None].to(device)
        v, a = ext.visual.encode_segments(frames), ext.audio.encode_segments(samples)
        if norm:
            v = (v - norm["visual_mean"].to(device)) / norm["visual_std"].to(device)
            a = (a - norm["audio_mean"].to(device)) / norm["audio_std"].to(device)
        out = head(v.float(), a.float())
        pred, p = head.predict(out)[0].cpu().numpy(), head.probabilities(out)[0].cpu().numpy()
        keep = slice(done - s, min(NUM_SEGMENTS, n - s))  # segments no earlier window covered
        classes[s + keep.start:s + keep.stop] = pred[keep]
        probs[s + keep.start:s + keep.stop] = p[keep]
        done = s + keep.stop
    return classes, probs


def intervals(classes: np.ndarray, background: int, categories: list[str]) -> list[dict[str, Any]]:
    """Runs of consecutive event segments of one class: ``start``/``end`` in seconds."""
    out, t = [], 0
    while t < len(classes):
        c, u = int(classes[t]), t
        while u < len(classes) and classes[u] == c:
            u += 1
        if c != background:
            out.append({"start": float(t), "end": float(u), "class": categories[c], "class_index": c})
        t = u
    return out


# ------------------------------------------------------------------------------------------
# Outputs
# ------------------------------------------------------------------------------------------
# How a head turns its outputs into segment classes, where that is not a per-segment argmax of
# its scores: (head, setting, hparam condition) -> rule, stated in every result of such a head.
def prediction_rule(ckpt: dict[str, Any]) -> Optional[str]:
    """The head's prediction rule when it is not a per-segment argmax (``Head.prediction_rule``)."""
    return heads.prediction_rule(ckpt["head"], ckpt["setting"], ckpt.get("hparams") or {})


def model_record(model: Path, ckpt: dict[str, Any], ext: Extractors) -> dict[str, Any]:
    """What a result was computed with: the checkpoint (path, sha256, head, setting, epoch) and
    the encoders and weights that made its features."""
    def encoder(kind: str, enc: Encoder) -> dict[str, Any]:
        meta = (ckpt.get("features") or {}).get(kind) or {}
        return {"encoder": meta.get("encoder") or (meta.get("model_spec_json") or {}).get("encoder"),
                "weights": enc.weights.describe(), "weights_sha256": enc.weights_sha256(),
                "features_weights": meta.get("weights"),
                "features_weights_sha256": meta.get("weights_sha256")}
    return {"path": str(model), "sha256": file_sha256(model), "head": ckpt["head"],
            "setting": ckpt["setting"], "hparams": dict(ckpt.get("hparams") or {}),
            "epoch": ckpt.get("epoch"), "prediction_rule": prediction_rule(ckpt),
            "encoders": {"visual": encoder("visual", ext.visual), "audio": encoder("audio", ext.audio)}}


def video_result(path: Path, clip: dict[str, Any], classes: np.ndarray, probs: np.ndarray,
                 categories: list[str], ckpt: dict[str, Any]) -> dict[str, Any]:
    bg = len(categories)
    names = list(categories) + ["background"]
    segments = [{"index": t, "start": float(t), "end": float(t + 1), "class": names[int(c)],
                 "class_index": int(c), "probability": round(float(probs[t, c]), 4),
                 "event": bool(c != bg), "event_probability": round(float(1 - probs[t, bg]), 4)}
                for t, c in enumerate(classes)]
    return {"video": path.name, "duration": round(float(clip["duration"]), 3),
            "fps": round(float(clip["fps"]), 3), "size": [clip["width"], clip["height"]],
            "audio": bool(clip["has_audio"]), "flags": clip["flags"],
            "num_segments": int(clip["segments"]), "windows": window_starts(clip["segments"]),
            "head": ckpt["head"], "setting": ckpt["setting"], "segments": segments,
            "events": intervals(classes, bg, names)}


def summary_line(r: dict[str, Any]) -> str:
    """``<video>: <d> s, <n> segments[, no audio track (silence used)][, flags: ...]: <events>``,
    and the prediction rule's name when it is not a per-segment argmax."""
    ev = ", ".join(f"{e['class']} {e['start']:g}-{e['end']:g}s" for e in r["events"]) or "no event"
    flags = [f for f in r.get("flags", []) if f != "no_audio"]
    notes = "" if r["audio"] else ", no audio track (silence used)"
    notes += f", flags: {' '.join(flags)}" if flags else ""
    rule = r.get("prediction_rule")
    return (f"{r['video']}: {r['duration']:.2f} s, {r['num_segments']} segments{notes}: {ev}"
            + (f" (rule {rule.split(':')[0]})" if rule else ""))


def write_outputs(out_dir: Path, name: str, result: dict[str, Any], categories: list[str]) -> None:
    import matplotlib.pyplot as plt

    from pipeline.evaluation import plots

    atomic_write_json(out_dir / f"{name}.json", result)
    labels = list(categories) + ["background"]
    pred = np.array([s["class_index"] for s in result["segments"]])
    fig = plots.timeline_figure(pred, None, labels, f"{result['video']}: {result['head']} "
                                f"({result['setting']})")
    with atomic_path(out_dir / f"{name}.png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


# ------------------------------------------------------------------------------------------
# Entry points
# ------------------------------------------------------------------------------------------
def localize(videos: list[str | Path], model: str | Path, out_dir: str | Path, *,
             device: str = "auto", visual_weights: Optional[str] = None,
             audio_weights: Optional[str] = None, allow_download: bool = False,
             timeout_s: float = DECODE_TIMEOUT_S, log=print) -> list[dict[str, Any]]:
    """Localize events in ``videos``; returns one result per video (failed ones carry
    ``error``). Writes ``<out_dir>/<name>.json``, ``<name>.png`` and ``index.html``."""
    from pipeline.evaluation.html import write_localize_page
    from pipeline.media.decode import DecodeFailure
    from pipeline.media.pool import DecodePool

    model, out_dir = Path(model), Path(out_dir)
    videos = check_videos(videos)  # before anything is loaded
    check_writable(out_dir)
    try:
        dev = select_device(device, "--device", log=log)
    except (ValueError, RuntimeError) as e:
        raise ConfigError(str(e)) from None
    head, ckpt = ckpt_io.load_head(model, dev)
    if not settings.get(ckpt["setting"]).segment_labels:
        labelled = ", ".join(n for n in settings.names() if settings.get(n).segment_labels)
        raise InputError(f"{model}: a {ckpt['setting']} checkpoint gives no class per segment; "
                         f"localize needs a head trained in a setting that does ({labelled})")
    ext = extractors_from_checkpoint(ckpt, model, dev, visual_weights=visual_weights,
                                     audio_weights=audio_weights, allow_download=allow_download)
    ckpt_io.check_feature_dims(ckpt, model, {
        "visual": (ext.visual.feature_shape(), f"the visual encoder ({ext.visual.name})"),
        "audio": (ext.audio.feature_shape(), f"the audio encoder ({ext.audio.name})")})
    for note in ext.notes:
        log(f"localize: {note}")
    min_duration, source = min_duration_of(ckpt)
    log(f"localize: videos shorter than {min_duration:g} s are not localized ({source})")
    record = model_record(model, ckpt, ext)
    if record["prediction_rule"]:
        log(f"localize: {ckpt['head']} ({ckpt['setting']}) predicts by "
            f"{record['prediction_rule']}")
    categories = list(ckpt["categories"])
    out_dir.mkdir(parents=True, exist_ok=True)
    decode = functools.partial(decode_clip, frames_per_segment=ext.frames_per_segment,
                               sampling=ext.sampling, size=ext.image_size,
                               sample_rate=ext.sample_rate, min_duration=min_duration)
    results, used = [], set()
    with DecodePool(decode, workers=1, timeout_s=timeout_s) as pool:
        for path, clip in pool.imap(str(v) for v in videos):
            path = Path(path)
            name = _unique(safe_filename(path.stem), used)
            if isinstance(clip, DecodeFailure) and clip.kind == "too_short":
                r = {"video": path.name, "name": name, "status": "too_short",
                     "error": f"too short: {clip.message}"}
                log(f"{path.name}: too short ({clip.message}; prepare excludes such videos): "
                    "not localized")
            elif isinstance(clip, DecodeFailure):
                r = {"video": path.name, "name": name, "status": clip.status,
                     "error": f"{clip.kind}: {clip.message}"}
                log(f"{path.name}: FAILED ({r['error']})")
            else:
                classes, probs = predict_windows(head, ext, clip, ckpt.get("feature_norm"), dev)
                r = {**video_result(path, clip, classes, probs, categories, ckpt), "name": name,
                     "prediction_rule": record["prediction_rule"], "model": record}
                write_outputs(out_dir, name, r, categories)
                log(summary_line(r))
            r["src"] = os.path.relpath(path.resolve(), out_dir.resolve())
            results.append(r)
    write_localize_page(out_dir / layout.PAGE_FILE, results, categories, str(model))
    return results


def check_videos(videos: list[str | Path]) -> list[Path]:
    """The videos as paths; a missing, non-file or unreadable one is an error naming it (and
    how many more), raised before any model is loaded."""
    if not videos:
        raise ConfigError("VIDEO: no video given")
    paths = [Path(v) for v in videos]
    problems = []
    for p in paths:
        if not p.exists():
            problems.append((p, "no such video file"))
        elif not p.is_file():
            problems.append((p, "not a file"))
        elif not os.access(p, os.R_OK):
            problems.append((p, "not readable (permission denied)"))
    if problems:
        more = (f" (and {len(problems) - 1} more: "
                f"{', '.join(str(p) for p, _ in problems[1:4])}{' ...' if len(problems) > 4 else ''})"
                if len(problems) > 1 else "")
        raise InputError(f"{problems[0][0]}: {problems[0][1]}{more}; nothing was localized")
    return paths


def _unique(name: str, used: set[str]) -> str:
    out, k = name, 1
    while out in used:
        k += 1
        out = f"{name}-{k}"
    used.add(out)
    return out


VALUE_OPTIONS = ("--model", "--out", "--device", "--visual-weights", "--audio-weights")
FLAG_OPTIONS = ("--download", "-h", "--help")


def split_videos(argv: list[str]) -> tuple[list[str], list[str]]:
    """``(videos, options)``: everything after ``--`` is a video; before it, a known option
    (with its value) is an option, and any other word (also one beginning with ``-``, such as
    ``-l3a3qenCJv.mp4``, when that file exists) is a video. An unknown word beginning with
    ``-`` that names no file is left to argparse, which reports it."""
    videos, options, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        name = a.split("=", 1)[0]
        if a == "--":
            videos += argv[i + 1:]
            break
        if name in VALUE_OPTIONS:
            options.append(a)
            if "=" not in a and i + 1 < len(argv):
                options.append(argv[i + 1])
                i += 1
        elif name in FLAG_OPTIONS or (a.startswith("-") and a != "-" and not Path(a).exists()):
            options.append(a)
        else:
            videos.append(a)
        i += 1
    return videos, options


@stage_main
def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.localize", description=__doc__.split("\n")[0],
                                usage="%(prog)s [options] [--] VIDEO [VIDEO ...]", allow_abbrev=False,
                                epilog="VIDEO: video files (any length, frame rate, size); a name "
                                "beginning with '-' is read as a video when the file exists, and "
                                "every word after '--' is a video")
    p.add_argument("--model", default=str(layout.best_checkpoint(Paths.models)),
                   help="a train checkpoint (best.pt)")
    p.add_argument("--out", required=True, help="folder for <name>.json, <name>.png, index.html")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    for kind in ("visual", "audio"):
        p.add_argument(f"--{kind}-weights", help=f"{kind} encoder checkpoint, when the one the "
                       "features were made with is not available")
    p.add_argument("--download", action="store_true",
                   help="fetch missing pretrained encoder weights from their public location")
    videos, options = split_videos(list(sys.argv[1:] if argv is None else argv))
    args = p.parse_args(options)
    if not videos:
        p.error("no VIDEO given")
    results = localize(videos, args.model, args.out, device=args.device,
                       visual_weights=args.visual_weights, audio_weights=args.audio_weights,
                       allow_download=args.download)
    failed = sum("error" in r for r in results)
    print(f"localize: {len(results) - failed} of {len(results)} videos localized -> "
          f"{Path(args.out) / layout.PAGE_FILE}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
