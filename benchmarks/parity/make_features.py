"""A known-answer feature set in the community layout, read by the authors' scripts and ours alike.

Every video has an event class and one or two event spans (a few videos hold a second class, as
AVE's two-label videos do). An event segment carries its class in both modalities: the class's
audio prototype in the 128-d audio vector and its visual prototype at one random position of the
7x7x512 map. A background segment carries one modality only, by video: the class's sound alone
(off-screen), its object alone (silent), or neither. So an audio-only model cannot tell the
off-screen segments from the event, a visual-only model the silent ones: their ceilings are
printed (`audio-only ceiling`, `visual-only ceiling`); both modalities together reach 1.0.

Written to ``OUT`` (the community names, as the papers' repositories open them; see
docs/authors-code.md): ``visual_feature.h5``, ``audio_feature.h5`` (``avadataset``, plus
``valid`` for our store), ``labels.h5`` = ``right_labels.h5``, ``mil_labels.h5`` (the event class
alone), ``prob_label.h5`` (segment shares), ``{train,val,test}_order.h5``, the background-only
videos ``visual_feature_noisy.h5``, ``audio_feature_noisy.h5``, ``labels_noisy.h5``, and for our
pipeline ``prepared/`` (labels, orders, categories) and ``features/`` (links named ``vis``,
``aud`` and their ``_noisy`` files). ``--float64`` also writes ``f64/`` with float64 copies of the
feature files (CMBS and CACE-Net run their models in float64 on the arrays as stored).

The authors' val/test loaders read exactly 402 videos (``batch_size=402``), so val and test hold
402 each (``--eval``: fewer, for scripts that take any size, e.g. CMBS and CACE-Net).

    python benchmarks/parity/make_features.py OUT --train 600 --seed 0 [--float64]
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import h5py
import numpy as np

C, T, H, W, DV, DA = 28, 10, 7, 7, 512, 128  # the shapes the authors' code hard-codes
EVAL = 402  # the authors' val()/test(): AVE_*_Dataset(..., batch_size=402).get_batch(0)


def make(n: int, rng: np.random.Generator, protos_a: np.ndarray, protos_v: np.ndarray,
         classes: int, two_class: float, background_only: bool = False, amp: float = 1.0):
    """``(visual (n,T,H,W,DV) float16, audio (n,T,DA) float32, labels (n,T,C+1), kind (n,))``."""
    labels = np.zeros((n, T, C + 1), np.float32)
    labels[..., C] = 1
    cls = rng.integers(0, classes, n)
    if not background_only:
        for i in range(n):
            s = rng.integers(0, 6)
            e = min(T, s + rng.integers(2, 11))
            labels[i, s:e, C], labels[i, s:e, cls[i]] = 0, 1
            if rng.random() < two_class:  # a second event of another class after the first
                other = (cls[i] + 1 + rng.integers(0, classes - 1)) % classes
                free = np.where(labels[i, :, C] == 1)[0]
                if len(free):
                    seg = free[free >= e] if (free >= e).any() else free
                    labels[i, seg[:3], C], labels[i, seg[:3], other] = 0, 1
    kind = rng.integers(0, 3, n)  # background: 0 sound only (off-screen), 1 object only, 2 neither
    audio = rng.normal(0, 1.0, (n, T, DA)).astype(np.float32)
    visual = np.abs(rng.normal(0, 0.5, (n, T, H, W, DV))).astype(np.float32)
    for i in range(n):
        for t in range(T):
            c = int(labels[i, t].argmax())
            event = c < C
            cue = c if event else cls[i]  # a background segment's one modality: the video's class
            if event or kind[i] == 0:
                audio[i, t] += amp * protos_a[cue]
            if event or kind[i] == 1:
                y, x = rng.integers(0, H), rng.integers(0, W)
                visual[i, t, y, x] += amp * 3 * protos_v[cue]
    return visual.astype(np.float16), audio, labels, kind


def ceilings(labels: np.ndarray, kind: np.ndarray) -> dict[str, float]:
    """Segment accuracy of a perfect audio-only / visual-only model: a background segment
    holding that modality's cue looks like the event."""
    bg = labels[..., C] == 1
    n = labels.shape[0] * T
    return {"audio-only ceiling": 1 - float((bg & (kind[:, None] == 0)).sum()) / n,
            "visual-only ceiling": 1 - float((bg & (kind[:, None] == 1)).sum()) / n}


def write(path: Path, data: np.ndarray, valid: bool = True) -> None:
    with h5py.File(path, "w") as f:
        f["avadataset"] = data
        if valid:
            f["valid"] = np.ones(len(data), bool)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--train", type=int, default=600)
    ap.add_argument("--classes", type=int, default=10, help="event classes used (of 28)")
    ap.add_argument("--background-only", type=int, default=30)
    ap.add_argument("--two-class", type=float, default=0.1, help="share of videos with two classes")
    ap.add_argument("--amp", type=float, default=1.0, help="cue amplitude (noise sd 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval", type=int, default=EVAL, help="val and test videos each (PSP, VSCG, "
                    "AVEL scripts: 402)")
    ap.add_argument("--float64", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    protos_a = rng.normal(0, 1, (C, DA)).astype(np.float32)
    protos_v = np.abs(rng.normal(0, 1, (C, DV))).astype(np.float32)
    n = args.train + 2 * args.eval
    visual, audio, labels, kind = make(n, rng, protos_a, protos_v, args.classes, args.two_class,
                                       amp=args.amp)
    bv, ba, bl, _ = make(args.background_only, rng, protos_a, protos_v, args.classes, 0,
                         background_only=True, amp=args.amp)
    out = args.out
    (out / "prepared").mkdir(parents=True, exist_ok=True)
    (out / "features").mkdir(exist_ok=True)
    write(out / "visual_feature.h5", visual)
    write(out / "audio_feature.h5", audio)
    write(out / "visual_feature_noisy.h5", bv)
    write(out / "audio_feature_noisy.h5", ba)
    video = np.zeros((n, C + 1), np.float32)  # the event class alone (mil_labels.h5)
    video[np.arange(n), labels[..., :C].sum(1).argmax(-1)] = 1
    noisy = np.zeros((len(bl), C + 1), np.float32)
    noisy[:, C] = 1
    for name, arr in (("labels.h5", labels), ("right_labels.h5", labels), ("mil_labels.h5", video),
                      ("prob_label.h5", labels.mean(1)), ("labels_noisy.h5", noisy)):
        write(out / name, arr, valid=False)
        os.symlink(f"../{name}", out / "prepared" / name) if not (out / "prepared" / name).exists() else None
    perm = rng.permutation(n)
    splits = {"train": perm[:args.train], "val": perm[args.train:args.train + args.eval],
              "test": perm[args.train + args.eval:]}
    for split, rows in splits.items():
        with h5py.File(out / f"{split}_order.h5", "w") as f:
            f["order"] = np.sort(rows).astype(np.int64)
        os.symlink(f"../{split}_order.h5", out / "prepared" / f"{split}_order.h5")
    (out / "prepared" / "categories.json").write_text(json.dumps([f"class{i}" for i in range(C)]))
    for ours, theirs in (("vis", "visual_feature"), ("aud", "audio_feature")):
        os.symlink(f"../{theirs}.h5", out / "features" / f"{ours}.h5")
        os.symlink(f"../{theirs}_noisy.h5", out / "features" / f"{ours}_noisy.h5")
    if args.float64:
        (out / "f64").mkdir(exist_ok=True)
        for name in ("visual_feature", "audio_feature", "visual_feature_noisy", "audio_feature_noisy"):
            with h5py.File(out / f"{name}.h5", "r") as f:
                write(out / "f64" / f"{name}.h5", f["avadataset"][:].astype(np.float64))
    stats = {"videos": n, "train": args.train, "val": args.eval, "test": args.eval,
             "background_only": len(bl), "classes": args.classes,
             "two_class_videos": int(((labels[..., :C].sum(1) > 0).sum(-1) > 1).sum()),
             **{f"{k} (test)": round(v, 4) for k, v in
                ceilings(labels[splits["test"]], kind[splits["test"]]).items()}}
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
