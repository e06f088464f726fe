"""Synthetic AVE-format demo set: real AVE category names, generated audio-visual events.

Real AVE videos cannot be downloaded here, so the default pipeline run and the tests use a set
written in AVE's exact layout (``<root>/AVE/<VideoID>.mp4``, ``Annotations.txt`` with a header
line, ``trainSet.txt`` / ``valSet.txt`` / ``testSet.txt``) plus ``synth.json`` (what was drawn:
class signatures and the kind of every segment; nothing in the pipeline reads it).

Content (chosen so that random-initialised CNN features, averaged over frames, separate classes):

* each category has a visual signature, a large striped shape of a distinct hue (shape,
  stripe count and angle differ per class too) moving slowly on a plain grey background with
  static pixel noise, and an audio signature, an amplitude-modulated tone at a distinct pitch
  (log-spaced 250..6000 Hz, in clearly different mel bands, below 8 kHz);
* event segments show the object *and* play the sound; background segments hold neither
  (``empty``), the object only (``silent_object``) or the sound only
  (``offscreen_sound``), so localisation needs both modalities; a share
  ``single_modality`` of the background segments is one of the last two (half each);
* about ``full_fraction`` of the events span all ten segments (AVE: ~2/3), the others have
  uniformly drawn length (1..9 s) and position;
* ``two_label`` videos carry a second annotation line with another category (as some AVE
  videos do): two smaller objects side by side and two tones, each with its own interval.
  ``train``/``val``/``test`` count videos; both lines of a video are in its split.
* a cross-modality localization split in ``cml/`` (the AVE reference code's
  ``*_order_match.h5`` partition, written like the standard split files): the same sizes in
  annotation lines, another partition, val and test drawn from the partial events only;
* ``background_only``: extra background-only training videos (no event; their segments hold
  nothing, a silent object or an off-screen sound), a share of the annotation lines (AVE's
  weak-setting reference adds 178 to 4143), listed by video id in ``backgroundSet.txt`` and
  absent from ``Annotations.txt`` and the splits.

Everything is drawn from ``seed``: the same seed gives the same annotation files and the same
decoded content (encoders run single-threaded). The set is written to a temporary directory
and renamed into place, so an interrupted run leaves no half set.

CLI: ``python -m pipeline.data.synth [ROOT] [--train 96 --val 24 --num-classes 6 ...]``: one
option per :class:`pipeline.config.SynthConfig` field, with its defaults (the demo profile).
"""
from __future__ import annotations

import argparse
import colorsys
import json
import os
import shutil
import time
import typing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from pipeline import layout
from pipeline.cli import stage_main
from pipeline.config import SynthConfig, from_dict
from pipeline.data._fs import replace_dir
from pipeline.data.ave import (ANNOTATIONS_FILE, BACKGROUND_FILE, CML_DIR, HEADER_PREFIX,
                               SPLIT_FILES, SPLITS, VIDEO_DIR)
from pipeline.media.write import write_mp4
from pipeline.runtime import NUM_SEGMENTS

# AVE's 28 categories in Annotations.txt first-appearance order (= label index order).
AVE_CATEGORIES = (
    "Church bell", "Male speech, man speaking", "Bark", "Fixed-wing aircraft, airplane",
    "Race car, auto racing", "Female speech, woman speaking", "Helicopter", "Violin, fiddle",
    "Flute", "Ukulele", "Frying (food)", "Truck", "Shofar", "Motorcycle", "Acoustic guitar",
    "Train horn", "Clock", "Banjo", "Goat", "Baby cry, infant cry", "Bus", "Chainsaw", "Cat",
    "Horse", "Toilet flush", "Rodents, rats, mice", "Accordion", "Mandolin",
)
HEADER = "Category&VideoID&Quality&StartTime&EndTime"
SEGMENT_KINDS = ("event", "empty", "silent_object", "offscreen_sound")
SHAPES = ("disc", "square", "triangle", "ring", "cross", "diamond")
ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"  # YouTube id alphabet
F_LOW, F_HIGH = 250.0, 6000.0  # tone pitch range (Hz), log-spaced over the classes
BG_LEVEL = 96  # background grey level
OBJECT_SIZE = 0.7  # object bounding box, fraction of the frame height
STRIPE_AMP = 28.0  # luma amplitude of the object's stripe texture
TONE_AMP = 0.4  # peak amplitude of a category tone
RAMP_S = 0.01  # tone fade in/out inside its segments (avoids clicks at boundaries)


@dataclass(frozen=True)
class ClassSignature:
    """The audio and visual signature of one category."""

    index: int
    name: str
    rgb: tuple[int, int, int]  # object colour
    shape: str  # one of SHAPES
    stripes: int  # stripe cycles across the object (luma texture)
    stripe_deg: float  # stripe orientation
    freq_hz: float  # tone pitch
    am_hz: float  # amplitude-modulation rate of the tone


@dataclass(frozen=True)
class EventSpec:
    """One annotation line of a video: a category, its interval, and per segment what of that
    category's signature is present."""

    category: int  # class index
    start: int  # event segments start..end-1
    end: int
    segments: tuple[str, ...]  # SEGMENT_KINDS, one per segment


@dataclass(frozen=True)
class VideoSpec:
    """One generated video: its split and its events (AVE: a few videos carry two)."""

    video_id: str
    split: str
    events: tuple[EventSpec, ...]
    seed: int  # rendering seed (noise, motion, jitter)

    @property
    def category(self) -> int:  # the first event's category
        return self.events[0].category


def class_signatures(num_classes: int) -> list[ClassSignature]:
    """Signatures of the first ``num_classes`` AVE categories (distinct hue, shape, pitch)."""
    if not 1 <= num_classes <= len(AVE_CATEGORIES):
        raise ValueError(f"num_classes must be in 1..{len(AVE_CATEGORIES)}, got {num_classes}")
    out = []
    for c in range(num_classes):
        hue = c / num_classes
        if num_classes > 6:  # interleave neighbours so that adjacent indices differ more
            hue = (hue + 0.5 * (c % 2) / num_classes) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.9, 0.95 if c % 3 else 0.75)
        freq = F_LOW * (F_HIGH / F_LOW) ** (c / max(1, num_classes - 1))
        out.append(ClassSignature(c, AVE_CATEGORIES[c], (int(r * 255), int(g * 255), int(b * 255)),
                                  SHAPES[c % len(SHAPES)], 2 + c % 4, (c * 47.0) % 180,
                                  round(freq, 1), 2.0 + 2.0 * (c % 3)))
    return out


# --------------------------------------------------------------------------------------------
# Drawing the annotations
# --------------------------------------------------------------------------------------------
def _video_id(rng: np.random.Generator, taken: set[str]) -> str:
    while True:
        vid = "".join(ID_CHARS[i] for i in rng.integers(0, len(ID_CHARS), 11))
        if vid not in taken:
            taken.add(vid)
            return vid


def _draw_event(rng: np.random.Generator, category: int, full_fraction: float,
                single_modality: float, background_only: bool = False) -> EventSpec:
    if background_only:  # no event segment: the category only shows in single-modality ones
        start = end = 0
    elif rng.random() < full_fraction:
        start, end = 0, NUM_SEGMENTS
    else:
        length = int(rng.integers(1, NUM_SEGMENTS))
        start = int(rng.integers(0, NUM_SEGMENTS - length + 1))
        end = start + length
    kinds = ["empty", "silent_object", "offscreen_sound"]
    probs = [1.0 - single_modality, single_modality / 2, single_modality / 2]
    segs = tuple("event" if start <= s < end else kinds[rng.choice(len(kinds), p=probs)]
                 for s in range(NUM_SEGMENTS))
    return EventSpec(int(category), start, end, segs)


def draw_specs(cfg: SynthConfig) -> list[VideoSpec]:
    """Every video of the set, drawn from ``cfg.seed``: first categories balanced within each
    split, then ``cfg.two_label`` videos get a second event of another category."""
    rng = np.random.default_rng(cfg.seed)
    draw = partial(_draw_event, rng, full_fraction=cfg.full_fraction,
                   single_modality=cfg.single_modality)
    taken: set[str] = set()
    specs = []
    for split in SPLITS:
        n = getattr(cfg, split)
        for c in rng.permutation(np.arange(n) % cfg.num_classes):
            specs.append(VideoSpec(_video_id(rng, taken), split, (draw(c),),
                                   int(rng.integers(0, 2**31 - 1))))
    if cfg.num_classes > 1:
        for i in sorted(rng.choice(len(specs), min(cfg.two_label, len(specs)), replace=False)):
            first = specs[i].category
            other = (first + 1 + int(rng.integers(0, cfg.num_classes - 1))) % cfg.num_classes
            specs[i] = replace(specs[i], events=specs[i].events + (draw(other),))
    lines = sum(len(s.events) for s in specs)
    for c in rng.integers(0, cfg.num_classes, int(round(cfg.background_only * lines))):
        specs.append(VideoSpec(_video_id(rng, taken), "background",
                               (draw(c, background_only=True),), int(rng.integers(0, 2**31 - 1))))
    return specs


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------
def _shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean ``(size, size)`` sprite of ``shape``."""
    y, x = np.mgrid[0:size, 0:size]
    u, v = (x + 0.5) / size * 2 - 1, (y + 0.5) / size * 2 - 1  # -1..1
    r = np.hypot(u, v)
    if shape == "disc":
        return r <= 1
    if shape == "square":
        return (np.abs(u) <= 0.85) & (np.abs(v) <= 0.85)
    if shape == "triangle":
        return (v <= 0.9) & (v >= -0.9 + 1.8 * np.abs(u))
    if shape == "ring":
        return (r <= 1) & (r >= 0.55)
    if shape == "cross":
        return ((np.abs(u) <= 0.3) | (np.abs(v) <= 0.3)) & (np.abs(u) <= 1) & (np.abs(v) <= 1)
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1
    raise ValueError(f"unknown shape {shape!r}; allowed: {', '.join(SHAPES)}")


def rgb_to_yuv(rgb) -> np.ndarray:
    """BT.601 limited-range Y, Cb, Cr of RGB values ``(..., 3)`` (what decoders invert)."""
    m = np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0],
                  [112.0, -93.786, -18.214]]) / 255.0
    return np.asarray(rgb, np.float64) @ m.T + np.array([16.0, 128.0, 128.0])


def render_frames(spec: VideoSpec, sigs: list[ClassSignature], cfg: SynthConfig) -> np.ndarray:
    """Video as planar yuv420p ``uint8 (N, H*3/2, W)``, N = 10 s x fps (the encoder's own
    format: no colour conversion). Each event's object is visible in its event / silent_object
    segments (two events: two smaller objects, left and right)."""
    rng = np.random.default_rng([spec.seed, 1])
    h, w, n = cfg.height, cfg.width, int(round(NUM_SEGMENTS * cfg.fps))
    sigma = cfg.noise * 150.0  # pixel noise std (noise=0.1 -> 15 grey levels)
    level = BG_LEVEL + rng.integers(-12, 13)
    rgb_level = np.full(3, level, np.float64)
    bg = np.empty((h * 3 // 2, w), np.uint8)  # static noisy grey background
    bg[:h] = np.clip(rgb_to_yuv(rgb_level)[0] + rng.normal(0, sigma * 0.86, (h, w)), 0, 255)
    bg[h:] = 128
    frames = np.empty((n, h * 3 // 2, w), np.uint8)
    frames[:] = bg
    k = len(spec.events)
    for j, ev in enumerate(spec.events):
        _draw_object(frames, ev, sigs[ev.category], cfg, rng, slot=(j, k), sigma=sigma)
    return frames


def _draw_object(frames: np.ndarray, ev: EventSpec, sig: ClassSignature, cfg: SynthConfig,
                 rng: np.random.Generator, slot: tuple[int, int], sigma: float) -> None:
    """Paste ``sig``'s object into ``frames`` (yuv420p) where ``ev`` makes it visible; ``slot``
    ``(j, k)``: object j of k shares the frame width."""
    n, h, w = frames.shape[0], cfg.height, cfg.width
    j, k = slot
    size = max(4, int(OBJECT_SIZE * min(h, w / k) * (1.0 if k == 1 else 0.8))) // 2 * 2
    cx0 = w * (2 * j + 1) / (2 * k)  # slot centre
    mask = _shape_mask(sig.shape, size)
    cmask = mask[::2, ::2]
    y_obj, u_obj, v_obj = rgb_to_yuv(sig.rgb)
    yy, xx = np.mgrid[0:size, 0:size] / size
    theta = np.deg2rad(sig.stripe_deg)
    stripes = np.sign(np.sin(2 * np.pi * sig.stripes * (xx * np.cos(theta) + yy * np.sin(theta))))
    sprite_y = y_obj + STRIPE_AMP * stripes + rng.normal(0, sigma * 0.5, (size, size))
    sprite_y = np.clip(sprite_y, 0, 255).astype(np.uint8)
    # slow elliptical motion around the centre, random phase / direction per video
    phase, turns = rng.uniform(0, 2 * np.pi), rng.choice([-1, 1]) * rng.uniform(0.3, 0.8)
    ax, ay = max(0, int(w / (2 * k) - size / 2) - 2), max(0, (h - size) // 2 - 2)
    visible = np.array([kind in ("event", "silent_object") for kind in ev.segments])
    for i in range(n):
        t = i / cfg.fps
        if not visible[min(int(t + 1e-9), NUM_SEGMENTS - 1)]:
            continue
        a = phase + 2 * np.pi * turns * t / NUM_SEGMENTS
        x0 = int(round((cx0 - size / 2 + ax * np.cos(a)) / 2)) * 2  # even: chroma aligned
        x0 = min(max(x0, 0), w - size)
        y0 = int(round(((h - size) / 2 + ay * np.sin(a)) / 2)) * 2
        luma = frames[i, y0 : y0 + size, x0 : x0 + size]
        luma[mask] = sprite_y[mask]
        # chroma planes: U then V, each (h/2, w/2), packed after the luma rows
        chroma = frames[i, h:].reshape(2, h // 2, w // 2)
        u, v = chroma[0], chroma[1]
        cy, cx = y0 // 2, x0 // 2
        u[cy : cy + size // 2, cx : cx + size // 2][cmask] = int(round(u_obj))
        v[cy : cy + size // 2, cx : cx + size // 2][cmask] = int(round(v_obj))


def render_audio(spec: VideoSpec, sigs: list[ClassSignature], cfg: SynthConfig) -> np.ndarray:
    """Mono ``float32 (10 * sample_rate,)``: each event's class tone in its event / offscreen_sound
    segments, over white noise."""
    rng = np.random.default_rng([spec.seed, 2])
    sr = cfg.sample_rate
    t = np.arange(NUM_SEGMENTS * sr) / sr
    out = rng.normal(0, cfg.noise * 0.3, t.shape)  # noise=0.1 -> std 0.03
    ramp = max(1, int(RAMP_S * sr))
    for ev in spec.events:
        sig = sigs[ev.category]
        freq = sig.freq_hz * rng.uniform(0.98, 1.02)
        amp = TONE_AMP * rng.uniform(0.75, 1.0) / len(spec.events)
        tone = np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
        tone *= 0.65 + 0.35 * np.sin(2 * np.pi * sig.am_hz * t)
        audible = [k in ("event", "offscreen_sound") for k in ev.segments]
        out += amp * tone * _gate(audible, sr, ramp)
    return out.astype(np.float32)


def _gate(audible: list[bool], sr: int, ramp: int) -> np.ndarray:
    """1 in audible segments, 0 elsewhere, with ``ramp``-sample fades kept inside the audible
    segments (no sound leaks into a silent one)."""
    gate = np.repeat(np.asarray(audible, np.float64), sr)
    fade = np.linspace(0.0, 1.0, ramp, endpoint=False)
    for s, on in enumerate(audible):
        if not on:
            continue
        if s == 0 or not audible[s - 1]:
            gate[s * sr : s * sr + ramp] *= fade
        if s == len(audible) - 1 or not audible[s + 1]:
            gate[(s + 1) * sr - ramp : (s + 1) * sr] *= fade[::-1]
    return gate


def write_video(spec: VideoSpec, cfg: SynthConfig, path: str | os.PathLike) -> None:
    """Render and encode one video (H.264 + AAC) to ``path``."""

    sigs = class_signatures(cfg.num_classes)
    write_mp4(path, render_frames(spec, sigs, cfg), cfg.fps, render_audio(spec, sigs, cfg),
              cfg.sample_rate, frame_format="yuv420p")


def _write_one(args: tuple[VideoSpec, SynthConfig, str]) -> str:
    spec, cfg, path = args
    write_video(spec, cfg, path)
    return spec.video_id


# --------------------------------------------------------------------------------------------
# The set
# --------------------------------------------------------------------------------------------
def annotation_line(video_id: str, ev: EventSpec, sigs: list[ClassSignature]) -> str:
    return f"{sigs[ev.category].name}&{video_id}&good&{ev.start}&{ev.end}"


def write_annotations(root: Path, specs: list[VideoSpec], cfg: SynthConfig, seed: int) -> None:
    """``Annotations.txt`` (header, then grouped by category like AVE), the split files, and
    ``synth.json``."""
    sigs = class_signatures(cfg.num_classes)
    pairs = [(s, ev) for s in specs if s.split in SPLITS for ev in s.events]
    pairs.sort(key=lambda p: p[1].category)  # stable: category blocks as in AVE
    assert HEADER.startswith(HEADER_PREFIX)
    lines = [HEADER] + [annotation_line(s.video_id, ev, sigs) for s, ev in pairs]
    (root / ANNOTATIONS_FILE).write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng([seed, 3])
    for split in SPLITS:
        members = [annotation_line(s.video_id, ev, sigs) for s in specs if s.split == split
                   for ev in s.events]
        members = [members[i] for i in rng.permutation(len(members))]
        (root / SPLIT_FILES[split]).write_text("".join(m + "\n" for m in members))
    (root / CML_DIR).mkdir(exist_ok=True)
    for split, members in cml_split(specs, sigs, np.random.default_rng([seed, 4])).items():
        (root / CML_DIR / SPLIT_FILES[split]).write_text("".join(m + "\n" for m in members))
    background = [s.video_id for s in specs if s.split == "background"]
    (root / BACKGROUND_FILE).write_text("".join(v + "\n" for v in background))
    meta = {"config": asdict(cfg), "classes": [asdict(s) for s in sigs],
            "videos": [asdict(s) for s in specs]}
    (root / layout.SYNTH_FILE).write_text(json.dumps(meta, indent=1))


def cml_split(specs: list[VideoSpec], sigs: list[ClassSignature],
              rng: np.random.Generator) -> dict[str, list[str]]:
    """The cml partition of the annotation lines: test, then val, take as many partial events
    (1..9 segments) as the standard split has lines (fewer if there are not enough); train
    takes every other line, full-length events included."""
    lines = [(annotation_line(s.video_id, ev, sigs), 0 < ev.end - ev.start < NUM_SEGMENTS)
             for s in specs if s.split in SPLITS for ev in s.events]
    order = [lines[i] for i in rng.permutation(len(lines))]
    partial = [line for line, ok in order if ok]
    sizes = {split: sum(len(s.events) for s in specs if s.split == split) for split in SPLITS}
    out = {"test": partial[:sizes["test"]]}
    out["val"] = partial[sizes["test"]:sizes["test"] + sizes["val"]]
    taken = set(out["test"]) | set(out["val"])
    out["train"] = [line for line, _ in order if line not in taken]
    return {split: out[split] for split in SPLITS}


def generate(cfg: SynthConfig, root: str | os.PathLike | None = None,
             workers: int | None = None) -> Path:
    """Write the whole set to ``root`` (default ``cfg.root``) atomically; returns the root."""
    root = Path(root if root is not None else cfg.root)
    workers = cfg.workers if workers is None else workers
    specs = draw_specs(cfg)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / VIDEO_DIR).mkdir(parents=True)
    try:
        jobs = [(s, cfg, str(tmp / VIDEO_DIR / f"{s.video_id}{layout.VIDEO_SUFFIX}")) for s in specs]
        if workers > 1 and len(jobs) > 1:
            ctx = get_context("forkserver")
            with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx) as ex:
                list(ex.map(_write_one, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
        else:
            for job in jobs:
                _write_one(job)
        write_annotations(tmp, specs, cfg, cfg.seed)
        replace_dir(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def load_synth_meta(root: str | os.PathLike) -> dict:
    """``synth.json`` of a generated set (classes, and per video its segment kinds)."""
    return json.loads((Path(root) / layout.SYNTH_FILE).read_text())


def cli_parser() -> argparse.ArgumentParser:
    """Options built from :class:`SynthConfig`: one ``--<field>`` per field (``_`` -> ``-``),
    its type and default (the demo profile of params.yaml); the output folder is ``root``."""
    p = argparse.ArgumentParser(prog="python -m pipeline.data.synth",
                                description=__doc__.split("\n")[0])
    hints = typing.get_type_hints(SynthConfig)
    for f in fields(SynthConfig):
        if f.name == "root":
            p.add_argument("root", nargs="?", default=f.default, help=f"output folder (default: {f.default})")
            continue
        p.add_argument(f"--{f.name.replace('_', '-')}", type=hints[f.name], default=f.default,
                       help=f"synth.{f.name} (default: {f.default})")
    return p


@stage_main
def main(argv: list[str] | None = None) -> None:
    cfg = from_dict(SynthConfig, vars(cli_parser().parse_args(argv)), "synth")
    t0 = time.time()
    root = generate(cfg)
    print(f"wrote {cfg.train + cfg.val + cfg.test} videos, {cfg.num_classes} classes to {root} "
          f"in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
