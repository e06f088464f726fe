"""Clips for fine-tuning: manifest rows -> frames and 1-s audio segments decoded once into memory.

Decoding is pipeline.media's (the same calls, frame rule and resize the extraction engine
uses), run in its DecodePool: a video that hangs or fails is reported and left out, never
silently replaced. Clips are held in memory as uint8 frames + float32 audio (the AVE train
split at 224 px, 10 frames and 10 s of 32 kHz audio per video: about 6 GB + 5 GB per rank).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch

from pipeline.data.prepare import EXCLUDED
from pipeline.media import DecodeFailure, DecodePool, decode_audio, decode_video

NUM_SEGMENTS = 10
SKIPPED = EXCLUDED | {"no_audio"}  # manifest statuses left out (no_audio: no positive pair)


@dataclass
class ClipBank:
    """Decoded clips in memory: frames uint8 (N, S, F, H, W, 3), audio float32 (N, S, L)."""
    video_ids: list[str]
    frames: torch.Tensor
    audio: torch.Tensor

    def __len__(self) -> int:
        return len(self.video_ids)

    def batch(self, idx: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        i = torch.as_tensor(idx, dtype=torch.long)
        return self.frames[i].to(device, non_blocking=True), self.audio[i].to(device, non_blocking=True)


def segment_choice(segments_per_clip: int) -> np.ndarray:
    """Evenly spaced segment indices (centres of ``segments_per_clip`` equal parts of the clip);
    the paper pools over all segments (10), fewer is a cost setting for the demo profile."""
    return ((np.arange(segments_per_clip) + 0.5) * NUM_SEGMENTS / segments_per_clip).astype(np.int64)


def videos(rows: Iterable[dict], splits: Iterable[str]) -> list[tuple[str, str]]:
    """Unique ``(video_id, path)`` of usable manifest rows in ``splits``, in manifest order
    (a video with two annotation lines is one contrastive sample)."""
    splits = set(splits)
    out: dict[str, str] = {}
    for r in rows:
        if r["split"] in splits and r["status"] not in SKIPPED:
            out.setdefault(r["video_id"], str(r["path"]))
    return list(out.items())


def decode_clip(path: str, frames_per_segment: int, rule: str, image_size: int, sample_rate: int,
                segments: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """One clip: frames uint8 (S, F, H, W, 3) and audio float32 (S, sample_rate)."""
    seg = list(segments)
    v = decode_video(path, frames_per_segment, rule, size=(image_size, image_size))
    a = decode_audio(path, sample_rate)
    return v.frames[seg], a.samples[seg]


def load_clips(items: list[tuple[str, str]], cfg, sample_rate: int,
               log: Callable[[str], None] = print) -> ClipBank:
    """Decode ``items`` ((video_id, path)) with ``cfg``'s frame/segment settings."""
    fn = functools.partial(decode_clip, frames_per_segment=cfg.frames_per_segment, rule=cfg.sampling,
                           image_size=cfg.image_size, sample_rate=sample_rate,
                           segments=tuple(segment_choice(cfg.segments_per_clip).tolist()))
    paths = {p: vid for vid, p in items}
    ids, frames, audio = [], [], []
    with DecodePool(fn, max(cfg.workers, 1), cfg.decode_timeout_s) as pool:
        for path, res in pool.imap([p for _, p in items]):
            if isinstance(res, DecodeFailure):
                log(f"finetune: left out {paths[path]}: {res.kind}: {res.message}")
                continue
            ids.append(paths[path])
            frames.append(torch.from_numpy(res[0]))
            audio.append(torch.from_numpy(res[1]))
    if not ids:
        raise RuntimeError("finetune: no clip could be decoded")
    return ClipBank(ids, torch.stack(frames), torch.stack(audio))
