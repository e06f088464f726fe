"""Decode in worker processes with a per-item timeout: a hang or a crash costs one item.

``DecodePool(fn, workers, timeout_s)`` keeps ``workers`` reusable processes, each fed one item
at a time over its own pipe. ``imap(items)`` yields ``(item, result)`` in input order, where
``result`` is ``fn(item)`` or a :class:`DecodeFailure` (an exception raised by ``fn``, a worker
killed after ``timeout_s`` seconds, or a worker that died). A killed or dead worker is replaced.

At most ``max_pending`` items (default ``2 * workers``) are taken from the input ahead of the
one being yielded, so memory stays bounded when a slow item holds up the order. ``imap`` is a
plain generator: drive it from a background thread to overlap decoding with model compute.

A worker whose peak resident memory has grown by more than ``max_growth_mb`` since its first
item finishes that item and is replaced by a fresh process, so a decoder that leaks cannot grow
without bound over a 4000-video run: decord 0.6.0's ``AudioReader`` never frees its decoded
buffer (about 0.64 MB per 10-s clip at 16 kHz, dmlc/decord#189), which would otherwise hold
about 1.3 GB per worker after the AVE set. Non-leaking decoders are never replaced.

Processes start with ``forkserver`` by default (safe from a threaded parent, e.g. torch, and
cheap once the server runs); ``fn`` and items must be picklable (module-level functions,
``functools.partial`` of them). Like every ``spawn``/``forkserver`` child, a worker first
imports the parent's main script (as ``__mp_main__``), so entry points keep heavy imports
(torch) inside ``main()``: the stages do, and a worker holds about 40 MB instead of 500.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Callable, Iterable, Iterator, Optional

from .decode import DecodeFailure, VideoInfo, read_info

try:
    import resource
except ImportError:  # not a Unix: workers are never replaced for their memory
    resource = None

START_TIMEOUT_S = 120.0  # a worker that is not ready by then means a broken setup: raise
MAX_START_FAILURES = 3  # consecutive workers dying before ready -> raise (e.g. fn not importable)
MAX_GROWTH_MB = 256.0  # a worker whose peak RSS grew more than this since its first item is replaced


def _peak_rss_bytes() -> int:
    """This process's peak resident memory (0 where the platform does not say)."""
    if resource is None:
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def _worker_main(conn, fn: Callable[[Any], Any], max_growth: float = 0.0) -> None:
    """Worker loop: receive ``(seq, item)``, send ``(seq, fn(item) | DecodeFailure, retiring)``;
    ``retiring``: this worker's peak memory grew more than ``max_growth`` bytes since its first
    item (0: never), and it exits after sending."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and kills us
    conn.send(("ready", os.getpid()))
    base = None
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        seq, item = msg
        try:
            result = fn(item)
        except DecodeFailure as e:
            result = e
        except Exception as e:  # any decoder error becomes this item's failure, with its reason
            result = DecodeFailure(str(item), "error", f"{type(e).__name__}: {e}")
        peak = _peak_rss_bytes()
        base = peak if base is None else base
        retiring = max_growth > 0 and peak - base > max_growth
        try:
            conn.send((seq, result, retiring))
        except Exception as e:
            conn.send((seq, DecodeFailure(str(item), "error", f"result not transferable: {e}"), retiring))
        if retiring:
            return


@dataclass
class _Worker:
    proc: Any
    conn: Any
    ready: bool = False
    started: float = 0.0
    seq: Optional[int] = None  # item being decoded, None when idle
    deadline: float = 0.0


class DecodePool:
    """Reusable worker processes running ``fn`` with a per-item timeout (see module doc)."""

    def __init__(self, fn: Callable[[Any], Any], workers: int = 2, timeout_s: float = 60.0, *,
                 start_method: str = "forkserver", max_pending: Optional[int] = None,
                 max_growth_mb: float = MAX_GROWTH_MB):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.fn, self.workers, self.timeout_s = fn, int(workers), float(timeout_s)
        self.max_pending = int(max_pending or 2 * workers)
        self.max_growth = max(float(max_growth_mb), 0.0) * 2**20  # 0: workers are never recycled
        self._ctx = mp.get_context(start_method)
        if start_method == "forkserver":
            self._ctx.set_forkserver_preload(["pipeline.media.decode"])
        self._pool: list[_Worker] = []
        self._start_failures = 0
        self.killed = 0  # workers killed or lost so far (timeouts + crashes)
        self.recycled = 0  # workers replaced because their memory grew (see module doc)

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop every worker (idle ones politely, busy ones by kill)."""
        for w in self._pool:
            if w.seq is None and w.ready:
                try:
                    w.conn.send(None)
                except OSError:
                    pass
        for w in self._pool:
            w.proc.join(timeout=1.0 if w.seq is None else 0)
            self._kill(w)
        self._pool = []

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=_worker_main, args=(child, self.fn, self.max_growth),
                                 daemon=True, name="decode-worker")
        proc.start()
        child.close()
        w = _Worker(proc, parent, started=time.monotonic())
        self._pool.append(w)
        return w

    def _kill(self, w: _Worker) -> None:
        if w.proc.is_alive():
            w.proc.kill()
        w.proc.join()
        w.conn.close()

    def _retire(self, w: _Worker) -> None:
        self._kill(w)
        self._pool.remove(w)

    # ---------------------------------------------------------------- mapping
    def map(self, items: Iterable[Any]) -> list[tuple[Any, Any]]:
        return list(self.imap(items))

    def imap(self, items: Iterable[Any], max_pending: Optional[int] = None) -> Iterator[tuple[Any, Any]]:
        """Yield ``(item, fn(item) or DecodeFailure)`` in input order; ``max_pending`` overrides
        the pool's look-ahead for this call."""
        max_pending = int(max_pending or self.max_pending)
        source = iter(items)
        todo: deque[int] = deque()
        items_by_seq: dict[int, Any] = {}
        results: dict[int, Any] = {}
        next_in = next_out = 0
        exhausted = False
        try:
            while True:
                while not exhausted and next_in - next_out < max_pending:
                    try:
                        items_by_seq[next_in] = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    todo.append(next_in)
                    next_in += 1
                if next_out in results:
                    yield items_by_seq.pop(next_out), results.pop(next_out)
                    next_out += 1
                    continue
                if exhausted and next_out == next_in:
                    return
                self._step(todo, items_by_seq, results)
        finally:
            for w in list(self._pool):  # abandoned mid-way: drop workers still busy
                if w.seq is not None:
                    self._retire(w)

    def _step(self, todo: deque, items_by_seq: dict, results: dict) -> None:
        """Dispatch queued items, wait for one event, collect results / timeouts / deaths."""
        self._dispatch(todo, items_by_seq)
        now = time.monotonic()
        deadlines = [w.deadline for w in self._pool if w.seq is not None]
        deadlines += [w.started + START_TIMEOUT_S for w in self._pool if not w.ready]
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        ready = set(wait([w.conn for w in self._pool] + [w.proc.sentinel for w in self._pool],
                         timeout))
        self._collect(ready, items_by_seq, results)

    def _dispatch(self, todo: deque, items_by_seq: dict) -> None:
        """Start workers as needed and hand each idle ready one the next queued item."""
        busy = sum(1 for w in self._pool if w.seq is not None)
        while len(self._pool) < min(self.workers, busy + len(todo)):
            self._spawn()
        for w in list(self._pool):
            if w.ready and w.seq is None and todo:
                seq = todo.popleft()
                try:
                    w.conn.send((seq, items_by_seq[seq]))
                except OSError:  # died while idle: requeue the item, replace the worker
                    todo.appendleft(seq)
                    self._retire(w)
                    self.killed += 1
                    continue
                w.seq, w.deadline = seq, time.monotonic() + self.timeout_s

    def _collect(self, ready: set, items_by_seq: dict, results: dict) -> None:
        """Results, ready messages, deaths and timeouts of the workers after a wait."""
        now = time.monotonic()
        for w in list(self._pool):
            if w.conn in ready or w.conn.poll():
                try:
                    msg = w.conn.recv()
                except (EOFError, OSError):
                    self._lost(w, items_by_seq, results, "died")
                    continue
                if not w.ready:
                    w.ready, self._start_failures = True, 0
                    continue
                seq, result, retiring = msg
                results[seq] = result
                w.seq = None
                if retiring:  # it exits by itself; the next dispatch starts a fresh one
                    w.proc.join(timeout=5.0)
                    self._retire(w)
                    self.recycled += 1
            elif w.proc.sentinel in ready or not w.proc.is_alive():
                self._lost(w, items_by_seq, results, "died")
            elif w.seq is not None and now >= w.deadline:
                self._lost(w, items_by_seq, results, "timeout")
            elif not w.ready and now >= w.started + START_TIMEOUT_S:
                self._retire(w)
                raise RuntimeError(f"decode worker not ready after {START_TIMEOUT_S:.0f} s")

    def _lost(self, w: _Worker, items_by_seq: dict, results: dict, why: str) -> None:
        seq, ready = w.seq, w.ready
        self._retire(w)
        self.killed += 1
        if not ready:
            self._start_failures += 1
            if self._start_failures >= MAX_START_FAILURES:
                raise RuntimeError(f"decode workers die at start-up (exit code "
                                   f"{w.proc.exitcode}); is fn {self.fn!r} importable?")
            return
        if seq is None:
            return
        item = items_by_seq[seq]
        if why == "timeout":
            results[seq] = DecodeFailure(str(item), "timeout",
                                         f"no result within {self.timeout_s:g} s; worker killed")
        else:
            code = w.proc.exitcode
            sig = f" (signal {-code})" if code is not None and code < 0 else ""
            results[seq] = DecodeFailure(str(item), "crash",
                                         f"decode worker died with exit code {code}{sig}")


def probe_many(paths: Iterable[str | os.PathLike], workers: int = 2,
               timeout_s: float = 30.0) -> Iterator[VideoInfo]:
    """:func:`read_info` of each path in worker processes, in input order; never raises for a
    bad file (a hang or crash gives ``status="unusable"``)."""
    with DecodePool(read_info, workers=workers, timeout_s=timeout_s) as pool:
        for path, info in pool.imap(str(p) for p in paths):
            if isinstance(info, DecodeFailure):
                info = VideoInfo(str(path), info.status, message=f"{info.kind}: {info.message}")
            yield info


def probe(path: str | os.PathLike, timeout_s: float = 30.0) -> VideoInfo:
    """Probe one file in a worker process with a timeout (see :func:`probe_many`)."""
    return next(probe_many([path], workers=1, timeout_s=timeout_s))


def threaded_prefetch(gen: Iterator[Any], maxsize: int) -> Iterator[Any]:
    """Run ``gen`` in a daemon thread behind a bounded queue of ``maxsize`` items, so producing
    (decoding) overlaps consuming (compute); re-raises the producer's exceptions."""
    q: queue.Queue = queue.Queue(maxsize=maxsize)
    done = object()
    stop = threading.Event()

    def run() -> None:
        try:
            for item in gen:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    break
        except BaseException as e:  # handed to the consumer, which re-raises it
            q.put(e)
            return
        finally:
            if stop.is_set():
                gen.close()
        q.put(done)

    t = threading.Thread(target=run, name="prefetch", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():  # unblock the producer and let it close the decode pool
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass
        t.join()
