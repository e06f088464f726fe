"""Extraction engine: manifest rows -> one feature store file per model.

Data path: decoding runs in :class:`pipeline.media.DecodePool` worker processes (frames are
resized inside the decoder); a producer thread stacks decoded videos into batches across
videos (pinned memory on CUDA) and hands them over a bounded queue; the main thread moves a
batch to the device and runs ``encoder.encode_segments`` under ``torch.inference_mode`` and
autocast, channels_last. There is no per-frame Python loop. On a CPU without a free core for
the decode workers, decoding does not overlap compute (see :func:`overlap_decode`) and the
forward chunk is calibrated (:class:`Forward`).

Resumability: the unique videos to extract (a video with two annotation lines is decoded
once and written to both rows) are cut into shards of ``shard_videos``; each finished shard
is committed atomically to ``<out>.partial/shard_XXXXX.h5`` (temporary file + rename) under a
fingerprint of everything that determines its content. A rerun skips committed shards with
the same fingerprint; when all shards exist they are merged into ``<out>`` (again through a
rename) and the partial directory is removed. Batches never span shards, so an interrupted
and resumed run computes exactly the batches an uninterrupted run does and writes a
byte-identical file.

Distributed (``torchrun``): shard ``k`` belongs to rank ``k % world_size``; ranks write their
shards into the same partial directory (a shared filesystem across nodes), meet at a barrier,
and rank 0 merges. The merged file does not depend on the number of ranks.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import h5py
import numpy as np
import torch

from pipeline import layout
from pipeline.config import to_dict
from pipeline.data.manifest import EXCLUDED
from pipeline.encoders.audio import AudioEncoder
from pipeline.encoders.base import Encoder, build_encoder
from pipeline.encoders.spec import ModelSpec
from pipeline.features.config import ExtractConfig
from pipeline.features.store import StoreWriter
from pipeline.media.decode import decoder_name
from pipeline.media.pool import threaded_prefetch
from pipeline.runtime import NUM_SEGMENTS, atomic_path, select_device, source_digest

CODE_DIRS = ("pipeline/encoders", "pipeline/features", "pipeline/media")  # hashed into code_version
DIST_TIMEOUT_S = 6 * 3600  # collective timeout of extraction: ranks wait this long for each other at the merge barrier


# ------------------------------------------------------------------------------------------
# Precision, provenance
# ------------------------------------------------------------------------------------------
def pick_amp(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """Autocast dtype: ``auto`` is bf16 on CUDA and off on CPU."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


@functools.lru_cache(maxsize=1)
def code_version(root: Optional[str] = None) -> str:
    """sha256 (12 hex) over the source of the encoders, the engine and the decoders."""
    return "src-" + source_digest(*CODE_DIRS, root=root)[:12]


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


# ------------------------------------------------------------------------------------------
# Work list
# ------------------------------------------------------------------------------------------
@dataclass
class WorkList:
    """Rows of the output file and the unique videos that fill them."""

    num_rows: int
    videos: list[str]  # unique video paths, first-appearance order
    rows_of: dict[str, list[int]]  # video path -> output rows
    skipped: dict[int, str] = field(default_factory=dict)  # row -> reason (never decoded)
    flags: dict[int, tuple[str, ...]] = field(default_factory=dict)  # row -> manifest flags


def _flags(row: dict) -> tuple[str, ...]:
    """A manifest row's flags as the one in-memory form, a tuple (``load_manifest`` gives one;
    the CSV text ``a;b`` is read too)."""
    f = row.get("flags") or ()
    return tuple(x for x in f.split(";") if x) if isinstance(f, str) else tuple(f)


def usable(row: dict) -> Optional[str]:
    """None when the row's video is decoded, else why not (the manifest policy of
    :mod:`pipeline.data.manifest`: statuses in ``EXCLUDED`` get no features; ``short`` videos
    are padded, ``no_audio`` ones get silence, both flagged in the output)."""

    status = str(row.get("status", "ok"))
    if status in EXCLUDED:
        msg = row.get("message") or ""
        return f"{status}{': ' + msg if msg else ''}"
    if not row.get("path"):
        return "no video path"
    return None


def plan(rows: Iterable[dict], num_rows: Optional[int] = None) -> WorkList:
    """Group manifest rows (``index``, ``path``, ``status``, ...) into unique videos."""
    rows = sorted(rows, key=lambda r: int(r["index"]))
    n = num_rows if num_rows is not None else (int(rows[-1]["index"]) + 1 if rows else 0)
    work = WorkList(n, [], {})
    seen = set()
    for r in rows:
        i = int(r["index"])
        if _flags(r):
            work.flags[i] = _flags(r)
        reason = usable(r)
        if reason is not None:
            work.skipped[i] = reason
            continue
        path = str(r["path"])
        if path not in seen:
            seen.add(path)
            work.videos.append(path)
            work.rows_of[path] = []
        work.rows_of[path].append(i)
    covered = {i for rs in work.rows_of.values() for i in rs} | set(work.skipped)
    for i in range(n):
        if i not in covered:
            work.skipped[i] = "not in manifest"
    return work


# ------------------------------------------------------------------------------------------
# Decoding (in DecodePool worker processes; the callables import no torch)
# ------------------------------------------------------------------------------------------
def decoder_for(encoder: Encoder, cfg: ExtractConfig) -> Callable[[str], Any]:
    """``path -> Decoded``: frames squashed to the encoder's input size inside the decoder, or
    the mono track at the encoder's sample rate."""
    from pipeline.media.decode import decode_audio, decode_video

    if isinstance(encoder, AudioEncoder):
        return functools.partial(decode_audio, sample_rate=encoder.sample_rate)
    return functools.partial(decode_video, frames_per_segment=cfg.frames_per_segment,
                             rule=cfg.sampling, size=tuple(encoder.prep.size))


def _decoded_stream(fn: Callable[[str], Any], items: list[str], workers: int,
                    timeout_s: float, pool: Any = None,
                    max_pending: Optional[int] = None) -> Iterator[tuple[str, Any]]:
    """(path, Decoded | DecodeFailure) in input order; workers=0 decodes in this thread;
    ``pool``: an already running :class:`DecodePool` over ``fn`` (left open); ``max_pending``:
    videos decoded ahead of the one consumed (default: the pool's, twice its workers)."""
    from pipeline.media.decode import DecodeFailure
    from pipeline.media.pool import DecodePool

    if pool is not None:
        yield from pool.imap(items, max_pending)
        return
    if workers == 0:
        for item in items:
            try:
                yield item, fn(item)
            except DecodeFailure as e:
                yield item, e
            except Exception as e:  # same contract as the pool: the item fails, with its reason
                yield item, DecodeFailure(item, "error", f"{type(e).__name__}: {e}")
        return
    with DecodePool(fn, workers=workers, timeout_s=timeout_s, max_pending=max_pending) as pool:
        yield from pool.imap(items)


@dataclass
class Batch:
    shard: int
    positions: list[int]  # positions (within the shard) of the videos in ``data``
    data: Optional[torch.Tensor]  # (b, T, ...) stacked decoded clips, or None
    extras: list[Any]  # per video: timestamps or None
    flags: list[tuple[str, ...]]
    failures: dict[int, str]  # shard position -> reason
    last: bool  # last batch of its shard


def _failure_reason(result: Any) -> Optional[str]:
    from pipeline.media.decode import DecodeFailure

    if isinstance(result, DecodeFailure):
        return f"{result.status}: {result.kind}: {result.message}"
    return None


def produce_batches(stream: Iterator[tuple[str, Any]], shards: list[tuple[int, list[str]]],
                    batch_videos: int, pin: bool) -> Iterator[Batch]:
    """Stack decoded clips into batches; batches never span shards (deterministic batching)."""
    for shard_id, videos in shards:
        pending: list[tuple[int, Any]] = []
        failures: dict[int, str] = {}
        for pos, path in enumerate(videos):
            item, result = next(stream)
            assert item == path, (item, path)
            reason = _failure_reason(result)
            if reason is not None:
                failures[pos] = reason
            else:
                pending.append((pos, result))
            end = pos == len(videos) - 1
            if len(pending) == batch_videos or end:
                data = None
                if pending:
                    data = torch.from_numpy(np.stack([r.data for _, r in pending]))
                    if pin:
                        data = data.pin_memory()
                yield Batch(shard_id, [p for p, _ in pending], data,
                            [getattr(r, "timestamps", None) for _, r in pending],
                            [tuple(r.flags) for _, r in pending], failures, end)
                pending, failures = [], {}


# ------------------------------------------------------------------------------------------
# Shards
# ------------------------------------------------------------------------------------------
def _shard_path(partial: Path, k: int) -> Path:
    return partial / layout.SHARD_FILE.format(index=k)


def _read_shard_fingerprint(path: Path) -> Optional[str]:
    try:
        with h5py.File(path, "r") as f:
            return str(f.attrs["fingerprint"])
    except Exception:  # unreadable / foreign file: treated as absent and recomputed
        return None


def _write_shard(path: Path, fingerprint: str, videos: list[str], data: np.ndarray,
                 ok: np.ndarray, messages: dict[int, str], flags: dict[int, tuple[str, ...]],
                 timestamps: Optional[np.ndarray]) -> None:
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("data", data=data)
        f.create_dataset("ok", data=ok)
        if timestamps is not None:
            f.create_dataset("timestamps", data=timestamps)
        f.attrs["fingerprint"] = fingerprint
        f.attrs["videos_json"] = json.dumps(videos)
        f.attrs["messages_json"] = json.dumps({str(k): v for k, v in messages.items()})
        f.attrs["flags_json"] = json.dumps({str(k): list(v) for k, v in flags.items()})


# ------------------------------------------------------------------------------------------
# The engine
# ------------------------------------------------------------------------------------------
@dataclass
class ExtractResult:
    path: Optional[Path]  # the merged file (rank 0), None on other ranks
    videos: int  # unique videos planned
    computed: int  # videos computed in this call (this rank)
    resumed: int  # videos whose shards were already committed
    invalid: int  # rows marked invalid in the output
    seconds: float


@dataclass
class _Extraction:
    """What one ``extract`` call carries through its steps."""

    name: str
    encoder: Encoder
    cfg: ExtractConfig
    device: torch.device
    amp: Optional[torch.dtype]
    work: WorkList
    shards: list[list[str]]  # unique videos of each shard
    shard_fp: list[str]  # fingerprint of each shard
    partial: Path  # <out>.partial: committed shards
    log: Callable[[str], None]
    decode_pool: Any = None
    progress: bool = True


def extract(name: str, spec: ModelSpec, rows: list[dict], out_path: str | Path, cfg: ExtractConfig, *,
            num_rows: Optional[int] = None, encoder: Optional[Encoder] = None,
            device: Optional[torch.device] = None, rank: int = 0, world_size: int = 1,
            progress: bool = True, decode_pool: Any = None, log: Callable[[str], None] = print) -> ExtractResult:
    """Extract ``name`` (model ``spec``) for manifest ``rows`` into ``out_path``.

    ``encoder``: a ready encoder (e.g. fine-tuned in memory) instead of building one from
    ``spec``. ``decode_pool``: a running :class:`pipeline.media.DecodePool` over
    ``decoder_for(encoder, cfg)`` to reuse (e.g. across models with the same frame size);
    by default one is started and closed here. Returns an :class:`ExtractResult`.
    """
    t0 = time.monotonic()
    out_path = Path(out_path)
    device = device or select_device(cfg.device, "extract.common.device", log=log)
    encoder = _ready_encoder(encoder, spec, cfg, device)
    run, meta = _plan_run(name, spec, encoder, cfg, device, plan(rows, num_rows), out_path, log)
    run.decode_pool, run.progress = decode_pool, progress and rank == 0
    _remove_stale(out_path, run.partial, rank, world_size)
    mine = [k for k in range(len(run.shards)) if k % world_size == rank]
    todo = [k for k in mine if _read_shard_fingerprint(_shard_path(run.partial, k)) != run.shard_fp[k]]
    resumed = sum(len(run.shards[k]) for k in mine if k not in todo)
    if resumed:
        log(f"extract[{name}]: resuming, {len(mine) - len(todo)}/{len(mine)} shards "
            f"({resumed} videos) already committed in {run.partial}")
    log(f"extract[{name}]: {len(run.work.videos)} videos -> {run.work.num_rows} rows, {len(run.shards)} "
        f"shards; device={device} amp={run.amp} batch={cfg.batch_videos} videos, workers={cfg.workers}, "
        f"decode {'overlaps compute' if overlap_decode(device, cfg.workers) else 'between batches (no free core)'}"
        + (f", rank {rank}/{world_size}" if world_size > 1 else ""))
    computed = _run_shards(run, todo, initial=resumed, total=sum(len(run.shards[k]) for k in mine))
    _barrier(world_size)
    result_path, invalid = None, -1
    if rank == 0:
        result_path, invalid = _merge(out_path, run.partial, run.work, run.shards, run.shard_fp, encoder,
                                      cfg, meta)
        shutil.rmtree(run.partial, ignore_errors=True)
        log(f"extract[{name}]: wrote {out_path} ({run.work.num_rows} rows, {invalid} invalid) "
            f"in {time.monotonic() - t0:.1f} s")
    _barrier(world_size)
    return ExtractResult(result_path, len(run.work.videos), computed, resumed, invalid, time.monotonic() - t0)


def _ready_encoder(encoder: Optional[Encoder], spec: ModelSpec, cfg: ExtractConfig,
                   device: torch.device) -> Encoder:
    """The given encoder or one built from ``spec``, in eval mode on ``device`` (channels_last)."""
    if encoder is None:
        encoder = build_encoder(spec, allow_download=cfg.download, image_size=cfg.image_size)
    encoder = encoder.eval().to(device)
    if encoder.modality == "visual":
        encoder.channels_last = cfg.channels_last
        if cfg.channels_last:
            encoder = encoder.to(memory_format=torch.channels_last)
    return encoder


def _plan_run(name: str, spec: ModelSpec, encoder: Encoder, cfg: ExtractConfig, device: torch.device,
              work: WorkList, out_path: Path, log: Callable[[str], None]) -> tuple[_Extraction, dict[str, Any]]:
    """Shards of the work list and their fingerprints (everything that determines their content)."""
    amp = pick_amp(cfg.amp, device)
    meta = _metadata(name, spec, encoder, cfg, amp, device)
    fingerprint = _sha({k: v for k, v in meta.items() if k != "created_by"} | {"batch_videos": cfg.batch_videos})
    shards = [work.videos[i:i + cfg.shard_videos] for i in range(0, len(work.videos), cfg.shard_videos)]
    partial = out_path.with_name(out_path.name + layout.PARTIAL_SUFFIX)
    partial.mkdir(parents=True, exist_ok=True)
    run = _Extraction(name, encoder, cfg, device, amp, work, shards, [_sha([fingerprint, s]) for s in shards],
               partial, log)
    return run, meta


def _remove_stale(out_path: Path, partial: Path, rank: int, world_size: int) -> None:
    """Temporary files of a run killed while writing (never complete files); rank 0 only."""
    if rank != 0:
        return
    stale = list(out_path.parent.glob(f".{out_path.name}.tmp-*"))
    if world_size == 1:  # other ranks may be writing their shards right now
        stale += partial.glob(".shard_*.tmp-*")
    for path in stale:
        path.unlink(missing_ok=True)


def _barrier(world_size: int) -> None:
    if world_size > 1:
        import torch.distributed as dist
        dist.barrier()


def _metadata(name: str, spec: ModelSpec, encoder: Encoder, cfg: ExtractConfig,
              amp: Optional[torch.dtype], device: torch.device) -> dict[str, Any]:
    visual = encoder.modality == "visual"
    enc_meta = encoder.metadata()
    meta = {
        "model": name,
        "kind": encoder.modality,
        "frames_per_segment": cfg.frames_per_segment if visual else 0,
        "sampling": cfg.sampling if visual else "1 s segments [s, s+1) of the mono track",
        "image_size": enc_meta.get("image_size", 0),
        "sample_rate": enc_meta.get("sample_rate", 0),
        "num_segments": NUM_SEGMENTS,
        "segment_seconds": 1.0,
        "dtype": cfg.dtype,
        "amp": str(amp).replace("torch.", "") if amp else "none",
        "device_type": device.type,
        "decoder": decoder_name(),  # decord | pyav (pipeline.media.decode)
        "code_version": code_version(),
        "created_by": f"pipeline.features.engine.extract ({torch.__version__})",
        "model_spec": to_dict(spec),
        **enc_meta,
    }
    return meta


def _run_shards(run: _Extraction, todo: list[int], initial: int, total: int) -> int:
    """Decode, encode and commit the shards ``todo``; returns the videos done."""
    from tqdm import tqdm

    if not todo:
        return 0
    cfg = run.cfg
    items = [v for k in todo for v in run.shards[k]]
    overlap = overlap_decode(run.device, cfg.workers)
    stream = _decoded_stream(decoder_for(run.encoder, cfg), items, cfg.workers, cfg.decode_timeout_s,
                             run.decode_pool, None if overlap else max(cfg.batch_videos, cfg.workers))
    batches = produce_batches(stream, [(k, run.shards[k]) for k in todo], cfg.batch_videos,
                              pin=run.device.type == "cuda")
    if overlap:
        batches = threaded_prefetch(batches, cfg.queue_batches)
    bar = tqdm(total=total, initial=initial, unit="video", desc=f"extract {run.name}",
               disable=not run.progress, dynamic_ncols=True, smoothing=0.1)
    forward = Forward(run.encoder, run.device, run.amp, run.name, run.log)
    computed, buf = 0, None
    try:
        for b in batches:
            buf = buf or _ShardBuffer.empty(len(run.shards[b.shard]), run.encoder, cfg)
            buf.add(b, forward(b.data) if b.data is not None else None, cfg.dtype)
            done = len(b.positions) + len(b.failures)
            computed += done
            bar.update(done)
            if b.last:
                buf.commit(_shard_path(run.partial, b.shard), run.shard_fp[b.shard], run.shards[b.shard])
                buf = None
    finally:
        bar.close()
    return computed


@dataclass
class _ShardBuffer:
    """The features of one shard while its batches arrive."""

    data: np.ndarray
    ok: np.ndarray
    timestamps: Optional[np.ndarray]
    messages: dict[int, str] = field(default_factory=dict)
    flags: dict[int, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def empty(cls, n: int, encoder: Encoder, cfg: ExtractConfig) -> "_ShardBuffer":
        ts = (np.zeros((n, NUM_SEGMENTS, cfg.frames_per_segment), np.float32)
              if encoder.modality == "visual" else None)
        return cls(np.zeros((n, NUM_SEGMENTS, *encoder.feature_shape()), np.dtype(cfg.dtype)),
                   np.zeros(n, bool), ts)

    def add(self, b: Batch, out: Optional[np.ndarray], dtype: str) -> None:
        self.messages.update(b.failures)
        if out is None:
            return
        pos = np.asarray(b.positions)
        self.data[pos] = out.astype(self.data.dtype)
        self.ok[pos] = np.isfinite(self.data[pos]).reshape(len(pos), -1).all(axis=1)
        for p, ok, ts, fl in zip(b.positions, self.ok[pos], b.extras, b.flags):
            if not ok:
                self.messages[p] = f"non-finite features in {dtype}"
            if ts is not None and self.timestamps is not None:
                self.timestamps[p] = ts
            if fl:
                self.flags[p] = tuple(fl)

    def commit(self, path: Path, fingerprint: str, videos: list[str]) -> None:
        _write_shard(path, fingerprint, videos, self.data, self.ok, self.messages, self.flags, self.timestamps)


def overlap_decode(device: torch.device, workers: int) -> bool:
    """Whether decoding runs ahead of the model while it computes (a producer thread and a
    bounded queue of ``queue_batches`` batches) or the model waits for each batch.

    On CUDA, and on a CPU with a core free for every decode worker beside the model's intra-op
    threads, decoding overlaps compute. Otherwise the workers would take cores from the
    backbone's threads, which then wait for each other at every operator: on the 2-core
    reference machine that made ResNet-50 at 64 px about 8% slower than decoding each batch
    (both workers in parallel, about 25 ms a video) while the model waits
    (``benchmarks/extract.py``)."""
    if device.type != "cpu":
        return True
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return torch.get_num_threads() + max(workers, 1) <= cores


# ------------------------------------------------------------------------------------------
# The forward pass and its chunk
# ------------------------------------------------------------------------------------------
CHUNK_FRAMES = (16, 32, 64, 128, 256)  # forward chunks (frames, rounded to whole segments) tried on CPU
_CHUNK_CACHE: dict[tuple, int] = {}  # (model, device, segment shape, threads) -> segments per forward


class Forward:
    """``encoder.encode_segments`` on a batch, in chunks of whole segments.

    On CUDA a chunk is the whole batch (larger is faster). On CPU the best chunk depends on the
    model, the frame size and the machine (a large batch leaves the caches, a small one leaves
    the intra-op threads waiting for each other), so it is calibrated once per process on the
    first batch: chunks of about ``CHUNK_FRAMES`` frames (whole segments, at most the batch), two
    interleaved rounds of one timed forward each, the fastest per frame kept and logged. On
    this project's 2-core reference machine the best chunk was 64 frames for ResNet-50 and 16 to
    32 for VGG-19 at 64 px (``benchmarks/extract.py`` prints the sweep). Audio batches are never
    chunked. A frame's features do not depend on the chunk it is computed in (eval mode)."""

    def __init__(self, encoder: Encoder, device: torch.device, amp: Optional[torch.dtype], name: str,
                 log: Callable[[str], None] = print):
        self.encoder, self.device, self.amp, self.name, self.log = encoder, device, amp, name, log
        self.chunk: Optional[int] = None  # segments per forward; None: not chosen yet

    def __call__(self, data: torch.Tensor) -> np.ndarray:
        x = data.to(self.device, non_blocking=True)
        if self.encoder.modality != "visual" or self.device.type != "cpu":
            return self._encode(x).float().cpu().numpy()
        b, t = x.shape[:2]
        segs = x.reshape(b * t, 1, *x.shape[2:])
        if self.chunk is None:
            self.chunk = self._choose(segs)
        c = self.chunk
        out = torch.cat([self._encode(segs[i:i + c]) for i in range(0, b * t, c)])
        return out.reshape(b, t, *out.shape[2:]).float().cpu().numpy()

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.amp,
                                                    enabled=self.amp is not None):
            return self.encoder.encode_segments(x)

    def _choose(self, segs: torch.Tensor) -> int:
        """Segments per forward: the fastest candidate on ``segs`` (cached per process and shape)."""
        n, f = segs.shape[0], segs.shape[2]
        key = (self.name, str(self.device), tuple(segs.shape[2:]), torch.get_num_threads())
        if key not in _CHUNK_CACHE:
            cands = sorted({min(n, max(1, round(frames / f))) for frames in CHUNK_FRAMES})
            rates: dict[int, float] = {}
            for _ in range(2):  # the first round includes each shape's warm-up; best kept
                for c in cands:
                    t0 = time.perf_counter()
                    self._encode(segs[:c])
                    rates[c] = max(rates.get(c, 0.0), c * f / (time.perf_counter() - t0))
            _CHUNK_CACHE[key] = best = max(rates, key=rates.get)
            self.log(f"extract[{self.name}]: forward chunk {best * f} frames (calibrated on cpu, "
                     f"frames/s: " + ", ".join(f"{c * f}: {r:.0f}" for c, r in rates.items()) + ")")
        return _CHUNK_CACHE[key]


def _merge(out_path: Path, partial: Path, work: WorkList, shards: list[list[str]], shard_fp: list[str],
           encoder: Encoder, cfg: ExtractConfig, meta: dict[str, Any]) -> tuple[Path, int]:
    """Committed shards -> the store file at ``out_path`` (rename into place)."""
    problems = {str(i): r for i, r in work.skipped.items()}
    row_flags = {str(i): list(f) for i, f in work.flags.items()}  # flags: a list per row
    visual = encoder.modality == "visual"
    with StoreWriter(out_path, work.num_rows, encoder.feature_shape(), cfg.dtype, meta,
                     extras={"timestamps": ((NUM_SEGMENTS, cfg.frames_per_segment), "float32")} if visual else None) as w:
        for k, videos in enumerate(shards):
            path = _shard_path(partial, k)
            if _read_shard_fingerprint(path) != shard_fp[k]:
                raise RuntimeError(f"{path}: shard missing or from another run; rerun to complete it")
            with h5py.File(path, "r") as f:
                data, ok = f["data"][()], f["ok"][()]
                ts = f["timestamps"][()] if "timestamps" in f else None
                messages = json.loads(f.attrs["messages_json"])
                flags = json.loads(f.attrs["flags_json"])
            rows, src = [], []
            for pos, video in enumerate(videos):
                for r in work.rows_of[video]:
                    rows.append(r)
                    src.append(pos)
                    if str(pos) in messages:
                        problems[str(r)] = messages[str(pos)]
                    if str(pos) in flags:
                        row_flags[str(r)] = list(dict.fromkeys([*row_flags.get(str(r), []),
                                                                *flags[str(pos)]]))
            src = np.asarray(src, dtype=np.int64)
            w.write(np.asarray(rows, dtype=np.int64), data[src], ok[src],
                    extras={"timestamps": ts[src]} if ts is not None else None)
        w.set_meta({"problems_json": dict(sorted(problems.items(), key=lambda kv: int(kv[0]))),
                    "row_flags_json": dict(sorted(row_flags.items(), key=lambda kv: int(kv[0])))})
        invalid = int((~w.valid_mask).sum())
    return out_path, invalid
