"""Localize audio-visual events in your own videos with a trained head.

    python -m pipeline.localize VIDEO [VIDEO ...] --model models/best.pt --out DIR

The videos are decoded and encoded exactly as the features the head was trained on: the
checkpoint records the feature files' provenance (``features``: encoder, weights and their
sha256, frames per segment, frame sampling rule, image size, sample rate), and the encoders
are rebuilt from it with the one weights resolver; weights that are not available (e.g. the
published AVE features' Keras VGG-19) are an error naming what is missing and the option that
supplies it. The checkpoint's feature standardisation is applied as in evaluation.

Segments and windows. A video of ``d`` seconds has ``n = max(1, ceil(d - 0.1))`` 1-s segments
(0.1 s: the tolerance under which ``prepare`` calls a clip short). Heads see 10 segments:

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
the same class, start and end in seconds) and ``<out>/<name>.png`` (the timeline), where
``<name>`` is the file name made safe; ``<out>/index.html`` shows each video with its
timeline. One summary line per video is printed. No DVC needed; CPU or GPU (``--device``).
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

from pipeline.data.ids import safe_filename
from pipeline.encoders.base import Encoder, build_encoder
from pipeline.encoders.spec import ModelSpec
from pipeline.encoders.weights import WeightsNotFoundError
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
        raise ValueError(f"{model}: the {kind} feature provenance names no encoder "
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
        raise ValueError(f"{model}: the {kind} encoder's weights ({enc.weights.describe()}, sha256 "
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
        raise ValueError(f"{model}: the checkpoint records no feature provenance ('features'); "
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
    """1-s segments of a video of ``duration`` seconds (see the module doc)."""
    return max(1, math.ceil(duration - SHORT_TOLERANCE_S))


def window_starts(n: int, window: int = NUM_SEGMENTS) -> list[int]:
    """First segment of each window (see the module doc): ``[0]`` up to ``window`` segments,
    else ``0, window, 2 window, ...`` while a window fits, then ``n - window``."""
    if n <= window:
        return [0]
    starts = list(range(0, n - window + 1, window))
    return starts if starts[-1] == n - window else starts + [n - window]


def decode_clip(path: str, frames_per_segment: int, sampling: str, size: tuple[int, int],
                sample_rate: int) -> dict[str, Any]:
    """Probe and decode a whole video (run inside a :class:`DecodePool` worker): frames
    ``(m, F, H, W, 3)`` and audio ``(m, sample_rate)`` for ``m = max(n, 10)`` segments."""
    from pipeline.media import DecodeFailure, decode_audio, decode_video, read_info

    info = read_info(path)
    if info.status in ("missing", "corrupt", "no_video", "unusable"):
        raise DecodeFailure(path, info.status, info.message)
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
    ev = ", ".join(f"{e['class']} {e['start']:g}-{e['end']:g}s" for e in r["events"]) or "no event"
    return (f"{r['video']}: {r['duration']:.1f} s, {r['num_segments']} segments"
            f"{'' if r['audio'] else ', no audio track (silence used)'}: {ev}")


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
    from pipeline.media import DecodeFailure, DecodePool

    model, out_dir = Path(model), Path(out_dir)
    dev = select_device(device, "--device", log=log)
    head, ckpt = ckpt_io.load_head(model, dev)
    if ckpt["setting"] == "cml":
        raise ValueError(f"{model}: a cml checkpoint matches a query across modalities; "
                         "localize needs a head trained in the fully or weak setting")
    ext = extractors_from_checkpoint(ckpt, model, dev, visual_weights=visual_weights,
                                     audio_weights=audio_weights, allow_download=allow_download)
    for note in ext.notes:
        log(f"localize: {note}")
    categories = list(ckpt["categories"])
    out_dir.mkdir(parents=True, exist_ok=True)
    decode = functools.partial(decode_clip, frames_per_segment=ext.frames_per_segment,
                               sampling=ext.sampling, size=ext.image_size, sample_rate=ext.sample_rate)
    results, used = [], set()
    with DecodePool(decode, workers=1, timeout_s=timeout_s) as pool:
        for path, clip in pool.imap(str(Path(v)) for v in videos):
            path = Path(path)
            name = _unique(safe_filename(path.stem), used)
            if isinstance(clip, DecodeFailure):
                r = {"video": path.name, "name": name, "error": f"{clip.kind}: {clip.message}"}
                log(f"{path.name}: FAILED ({r['error']})")
            else:
                classes, probs = predict_windows(head, ext, clip, ckpt.get("feature_norm"), dev)
                r = {**video_result(path, clip, classes, probs, categories, ckpt), "name": name}
                write_outputs(out_dir, name, r, categories)
                log(summary_line(r))
            r["src"] = os.path.relpath(path.resolve(), out_dir.resolve())
            results.append(r)
    write_localize_page(out_dir / "index.html", results, categories, str(model))
    return results


def _unique(name: str, used: set[str]) -> str:
    out, k = name, 1
    while out in used:
        k += 1
        out = f"{name}-{k}"
    used.add(out)
    return out


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.localize", description=__doc__.split("\n")[0])
    p.add_argument("videos", nargs="+", help="video files (any length, frame rate, size)")
    p.add_argument("--model", default="models/best.pt", help="a train checkpoint (best.pt)")
    p.add_argument("--out", required=True, help="folder for <name>.json, <name>.png, index.html")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    for kind in ("visual", "audio"):
        p.add_argument(f"--{kind}-weights", help=f"{kind} encoder checkpoint, when the one the "
                       "features were made with is not available")
    p.add_argument("--download", action="store_true",
                   help="fetch missing pretrained encoder weights from their public location")
    args = p.parse_args(argv)
    try:
        results = localize(args.videos, args.model, args.out, device=args.device,
                           visual_weights=args.visual_weights, audio_weights=args.audio_weights,
                           allow_download=args.download)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"localize: error: {e}", file=sys.stderr)
        return 2
    print(f"localize: {len(results)} videos -> {Path(args.out) / 'index.html'}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
