"""Clips for fine-tuning: manifest rows -> frames and 1-s audio segments, streamed per batch.

Decoding is pipeline.media's (the same calls, frame rule and resize the extraction engine
uses), run in its DecodePool. :class:`ClipStream` decodes the clips of each batch as the
training loop asks for them (a background thread keeps ``prefetch`` batches ready), so a rank
holds a few batches of clips whatever the number of videos (the AVE train split decoded into
memory at 224 px would be about 11 GB per rank). A video that hangs or fails is reported and
left out of that batch and of later epochs, never silently replaced. :class:`ClipBank` is the
same interface over clips already in memory (tests, tiny sets).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from pipeline.data.manifest import EXCLUDED
from pipeline.media.decode import DecodeFailure, decode_audio, decode_video
from pipeline.media.pool import DecodePool
from pipeline.media.pool import threaded_prefetch
from pipeline.runtime import NUM_SEGMENTS

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

    def batches(self, index_batches: Iterable[list[int]], device: torch.device
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx in index_batches:
            yield self.batch(idx, device)


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


def clip_decoder(cfg, sample_rate: int) -> Callable[[str], tuple[np.ndarray, np.ndarray]]:
    """``path -> (frames, audio)`` with ``cfg``'s frame and segment settings (picklable)."""
    return functools.partial(decode_clip, frames_per_segment=cfg.frames_per_segment, rule=cfg.sampling,
                             image_size=cfg.image_size, sample_rate=sample_rate,
                             segments=tuple(segment_choice(cfg.segments_per_clip).tolist()))


@dataclass
class ClipStream:
    """Clips decoded on demand: ``batches(index lists)`` yields ``(frames, audio)`` per list,
    decoded by ``workers`` processes while the previous batches train (at most ``prefetch``
    batches wait). ``failed``: videos that failed to decode, left out from then on."""
    video_ids: list[str]
    paths: list[str]
    decode: Callable[[str], tuple[np.ndarray, np.ndarray]]
    workers: int = 2
    timeout_s: float = 120.0
    prefetch: int = 2
    log: Callable[[str], None] = print
    cache_bytes: int = 0  # decoded clips kept in memory up to this size (later epochs skip them)
    failed: set[int] = field(default_factory=set)
    _cache: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)
    _cached_bytes: int = 0

    def __len__(self) -> int:
        return len(self.video_ids)

    def batches(self, index_batches: Iterable[list[int]], device: torch.device
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for frames, audio in threaded_prefetch(self._decoded(index_batches), self.prefetch):
            yield frames.to(device, non_blocking=True), audio.to(device, non_blocking=True)

    def _decoded(self, index_batches: Iterable[list[int]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = [[i for i in idx if i not in self.failed] for idx in index_batches]
        order = iter([(i, self.paths[i]) for idx in batches for i in idx if i not in self._cache])
        with DecodePool(self.decode, max(self.workers, 1), self.timeout_s) as pool:
            results = self._imap(pool, order)
            for idx in batches:
                clips = [c for c in (self._clip(i, results) for i in idx) if c is not None]
                if clips:
                    yield (torch.from_numpy(np.stack([c[0] for c in clips])),
                           torch.from_numpy(np.stack([c[1] for c in clips])))

    def _clip(self, i: int, results: Iterator) -> tuple[np.ndarray, np.ndarray] | None:
        """Clip ``i`` from the cache, else the next decoded result (kept while the cache has room)."""
        if i in self._cache:
            return self._cache[i]
        clip = next(results)
        if clip is not None and self._cached_bytes + clip[0].nbytes + clip[1].nbytes <= self.cache_bytes:
            self._cache[i] = clip
            self._cached_bytes += clip[0].nbytes + clip[1].nbytes
        return clip

    def _imap(self, pool: DecodePool, order: Iterator[tuple[int, str]]) -> Iterator:
        """Decoded clips in order; a failure is logged, remembered and yields None."""
        pending = []

        def paths():
            for i, path in order:
                pending.append(i)
                yield path
        for path, res in pool.imap(paths()):
            i = pending.pop(0)
            if isinstance(res, DecodeFailure):
                self.failed.add(i)
                self.log(f"finetune: left out {self.video_ids[i]}: {res.kind}: {res.message}")
                yield None
            else:
                yield res


def stream_clips(items: list[tuple[str, str]], cfg, sample_rate: int,
                 log: Callable[[str], None] = print) -> ClipStream:
    """A :class:`ClipStream` over ``items`` ((video_id, path)) with ``cfg``'s settings."""
    if not items:
        raise RuntimeError("finetune: no usable video in the requested splits")
    return ClipStream([v for v, _ in items], [p for _, p in items], clip_decoder(cfg, sample_rate),
                      cfg.workers, cfg.decode_timeout_s, log=log,
                      cache_bytes=cfg.clip_cache_mb << 20)
