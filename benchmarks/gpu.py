"""One command for one CUDA device: extraction, CACE fine-tuning and CMBS training at AVE scale.

    python benchmarks/gpu.py                    # one GPU, paper settings, about 5-8 min on an H100-class GPU
    python benchmarks/gpu.py --dry-run          # tiny sizes, CPU allowed (the test suite runs this)

Writes ``<out>/gpu.json`` and ``<out>/gpu.md`` (default ``reports/benchmarks``):

1. extraction at the paper's settings (16 frames a segment, 224 px, bf16, channels_last) for
   VGG-19, ResNet-50, VGGish and Cnn14 on synthetic AVE-like videos (320x240, 25 fps, 10 s):
   frames (or audio segments) per second end to end, GPU busy fraction (NVML, sampled every
   50 ms, when ``nvidia-ml-py`` is installed), peak GPU memory, engine wall over the compute
   floor (the backbone alone, best batch of a sweep), the projected time for AVE's 4143 videos,
   and the decode workers needed to keep the GPU busy (one worker's decode rate against the
   floor's rate);
2. CACE fine-tuning (ResNet-50 + Cnn14, 10 segments, 224 px) at the paper's global batch 256 with
   bf16 and micro-batching (exact gradient caching): steps/s and peak GPU memory;
3. one epoch of CMBS training on AVE-size random features (train split: 3339 x (10,7,7,512) +
   (10,128)).

Without a CUDA device it says so and exits (status 2) instead of running on the CPU.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from extract import make_videos, manifest_rows, run_floor, start_pool, sweep_floor  # noqa: E402  (benchmarks/extract.py)
from pipeline.encoders.base import build_encoder  # noqa: E402
from pipeline.encoders.spec import ModelSpec  # noqa: E402
from pipeline.features.config import ExtractConfig  # noqa: E402
from pipeline.features.engine import decoder_for, extract  # noqa: E402
from pipeline.runtime import NUM_SEGMENTS, atomic_write_json, atomic_write_text  # noqa: E402

AVE_VIDEOS = 4143
AVE_TRAIN = 3339


@dataclass(frozen=True)
class Sizes:
    videos: int = 32  # synthetic videos extracted per model
    frames_per_segment: int = 16  # paper
    image_size: int = 224  # paper
    batch_videos: int = 8  # engine batch (x 10 segments x 16 frames = 1280 frames)
    workers: int = 8  # decode workers
    ft_batch: int = 256  # CACE global batch (paper)
    ft_micro: int = 64  # micro-batch of the gradient caching
    ft_steps: int = 3  # timed steps (after one warm-up)
    ft_segments: int = 10
    cmbs_rows: int = AVE_TRAIN
    amp: str = "bf16"


DRY = Sizes(videos=1, frames_per_segment=1, image_size=64, batch_videos=1, workers=1, ft_batch=2, ft_micro=1,
            ft_steps=1, ft_segments=1, cmbs_rows=8, amp="none")


class GpuBusy:
    """Fraction of 50-ms NVML samples with the GPU busy (utilization.gpu > 0), None without NVML."""

    def __init__(self, device: torch.device):
        self.samples: list[int] = []
        self.handle = None
        if device.type == "cuda":
            try:
                import pynvml
                pynvml.nvmlInit()
                self.nvml = pynvml
                self.handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            except Exception:  # nvidia-ml-py missing or no driver access: reported as n/a
                self.handle = None
        self._stop = threading.Event()

    def __enter__(self) -> "GpuBusy":
        if self.handle is not None:
            self._t = threading.Thread(target=self._run, daemon=True)
            self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)
            time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.handle is not None:
            self._t.join()

    @property
    def fraction(self) -> Optional[float]:
        return sum(s > 0 for s in self.samples) / len(self.samples) if self.samples else None


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device: torch.device) -> Optional[float]:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


# ------------------------------------------------------------------------------------------
# 1. extraction
# ------------------------------------------------------------------------------------------
def bench_extraction(name: str, videos: list[str], sz: Sizes, device: torch.device, tmp: Path) -> dict:
    """One model end to end through the engine, its floor and one decode worker's rate."""
    cfg = ExtractConfig(device=device.type, frames_per_segment=sz.frames_per_segment, image_size=sz.image_size,
                        amp=sz.amp, batch_videos=sz.batch_videos, workers=sz.workers,
                        shard_videos=len(videos), download=False)
    enc = build_encoder(ModelSpec(name, weights="random"), image_size=sz.image_size)
    pool, _ = start_pool(enc, cfg, videos[0])
    try:
        rows = manifest_rows(videos)
        extract(name, enc.spec, rows[:sz.batch_videos], tmp / f"{name}_warm.h5", cfg, encoder=enc,
                device=device, progress=False, decode_pool=pool, log=lambda s: None)
        _peak_reset(device)
        with GpuBusy(device) as busy:
            t0 = time.perf_counter()
            extract(name, enc.spec, rows, tmp / f"{name}.h5", cfg, encoder=enc, device=device, progress=False,
                    decode_pool=pool, log=lambda s: None)
            wall = time.perf_counter() - t0
        peak = _peak_mb(device)
    finally:
        pool.close()
    floor_s = _floor_seconds(enc, cfg, device, len(videos))
    decode_vps = _one_worker_rate(enc, cfg, videos)
    per_video = sz.frames_per_segment * NUM_SEGMENTS if enc.modality == "visual" else NUM_SEGMENTS
    return {"model": name, "unit": "frames" if enc.modality == "visual" else "segments",
            "per_s": len(videos) * per_video / wall, "wall_s": wall, "gpu_busy": busy.fraction,
            "peak_gpu_mb": peak, "engine_vs_floor": wall / floor_s,
            "projected_ave_min": wall / len(videos) * AVE_VIDEOS / 60,
            "workers_needed": math.ceil(len(videos) / floor_s / decode_vps)}


def _floor_seconds(enc, cfg: ExtractConfig, device: torch.device, n_videos: int) -> float:
    """The encoder alone on in-memory inputs for ``n_videos`` (visual: best batch of a sweep)."""
    enc = enc.eval().to(device)
    if enc.modality == "visual":
        enc = enc.to(memory_format=torch.channels_last)
        frames = n_videos * NUM_SEGMENTS * cfg.frames_per_segment
        sweep = sweep_floor(frames, enc, cfg, device)
        return run_floor(frames, max(sweep, key=sweep.get), enc, cfg, device)["wall"]
    x = 0.1 * torch.randn(cfg.batch_videos, NUM_SEGMENTS, enc.sample_rate, device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp == "bf16")
    with torch.inference_mode(), amp:
        enc.encode_segments(x)
        t0 = time.perf_counter()
        for _ in range(math.ceil(n_videos / cfg.batch_videos)):
            enc.encode_segments(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _one_worker_rate(enc, cfg: ExtractConfig, videos: list[str]) -> float:
    """Videos per second one decode worker delivers (decode + resize in the worker)."""
    fn = decoder_for(enc, cfg)
    fn(videos[0])
    t0 = time.perf_counter()
    for v in videos[:4]:
        fn(v)
    return min(4, len(videos)) / (time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------
# 2. CACE fine-tuning, 3. CMBS training
# ------------------------------------------------------------------------------------------
def bench_finetune(sz: Sizes, device: torch.device) -> dict:
    """Steps/s and peak GPU memory of CACE steps at the global batch with micro-batching."""
    from pipeline.finetune.config import FinetuneConfig
    from pipeline.finetune.run import build_model
    from pipeline.finetune.train import build_optimizer, train_step

    cfg = FinetuneConfig(visual_weights="random", audio_weights="random", image_size=sz.image_size,
                         segments_per_clip=sz.ft_segments, batch_size=sz.ft_batch, micro_batch=sz.ft_micro,
                         amp=sz.amp, device=device.type, resume=False)
    core, rate = build_model(cfg, log=lambda s: None)
    core.to(device).train()
    core.visual.to(memory_format=torch.channels_last)
    opt = build_optimizer(core, cfg)
    frames = torch.randint(0, 256, (sz.ft_batch, sz.ft_segments, 1, sz.image_size, sz.image_size, 3),
                           dtype=torch.uint8, device=device)
    audio = 0.1 * torch.randn(sz.ft_batch, sz.ft_segments, rate, device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        train_step(core.encoders, core, frames, audio, cfg, None)
        opt.step()

    step()
    _peak_reset(device)
    t0 = time.perf_counter()
    for _ in range(sz.ft_steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    sec = (time.perf_counter() - t0) / sz.ft_steps
    return {"global_batch": sz.ft_batch, "micro_batch": sz.ft_micro, "steps_per_s": 1 / sec,
            "peak_gpu_mb": _peak_mb(device), "epoch_min_ave_train": sec * (AVE_TRAIN // sz.ft_batch) / 60}


def bench_cmbs(sz: Sizes, device: torch.device) -> dict:
    """One epoch of CMBS (fully) on random features of the AVE train split's size."""
    from pipeline.heads import build_head
    from pipeline.heads._registry import train_defaults

    g = torch.Generator().manual_seed(0)
    n = sz.cmbs_rows
    visual = torch.randn(n, NUM_SEGMENTS, 7, 7, 512, generator=g).half()
    audio = torch.randn(n, NUM_SEGMENTS, 128, generator=g)
    labels = torch.nn.functional.one_hot(torch.randint(0, 29, (n, NUM_SEGMENTS), generator=g), 29).float()
    head = build_head("cmbs", visual_dim=512, audio_dim=128, num_classes=28).to(device).train()
    recipe = train_defaults("cmbs", "fully")
    opt = torch.optim.Adam(head.parameters(), lr=recipe["lr"])
    perm = torch.randperm(n, generator=g)
    _peak_reset(device)
    t0 = time.perf_counter()
    for lo in range(0, n, recipe["batch_size"]):
        idx = perm[lo:lo + recipe["batch_size"]]
        batch = {"visual": visual[idx].to(device).float(), "audio": audio[idx].to(device),
                 "labels": labels[idx].to(device), "weak": labels[idx].amax(1).to(device), "epoch": 0, "epochs": 1}
        opt.zero_grad(set_to_none=True)
        loss, _ = head.loss(head(batch["visual"], batch["audio"]), batch)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {"rows": n, "batch_size": recipe["batch_size"], "epoch_s": time.perf_counter() - t0,
            "peak_gpu_mb": _peak_mb(device)}


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------
def _fmt(v, spec: str = ".1f") -> str:
    return "n/a" if v is None else format(v, spec)


def markdown(res: dict) -> str:
    s = res["settings"]
    lines = [f"Device: {res['device']}; {s['videos']} synthetic videos (320x240, 25 fps, 10 s), "
             f"{s['frames_per_segment']} frames/segment, {s['image_size']} px, amp {s['amp']}, channels_last, "
             f"{s['workers']} decode workers.", "",
             "| model | rate (/s) | GPU busy | peak GPU MB | engine / floor | AVE (4143 videos), min | decode workers needed |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in res["extraction"]:
        lines.append(f"| {r['model']} | {r['per_s']:.0f} {r['unit']} | {_fmt(r['gpu_busy'], '.0%')} | "
                     f"{_fmt(r['peak_gpu_mb'], '.0f')} | {r['engine_vs_floor']:.2f}x | "
                     f"{r['projected_ave_min']:.1f} | {r['workers_needed']} |")
    ft, cm = res["finetune"], res["cmbs"]
    lines += ["", f"CACE fine-tuning (ResNet-50 + Cnn14, global batch {ft['global_batch']}, micro-batch "
              f"{ft['micro_batch']}): {ft['steps_per_s']:.2f} steps/s, peak GPU {_fmt(ft['peak_gpu_mb'], '.0f')} MB, "
              f"one AVE train epoch ~{ft['epoch_min_ave_train']:.1f} min.",
              f"CMBS (fully), one epoch on {cm['rows']} random AVE-size rows (batch {cm['batch_size']}): "
              f"{cm['epoch_s']:.1f} s, peak GPU {_fmt(cm['peak_gpu_mb'], '.0f')} MB.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny sizes; runs on the CPU when no GPU is visible")
    p.add_argument("--out", default="reports/benchmarks", help="folder for gpu.json and gpu.md")
    p.add_argument("--models", default="vgg19,resnet50,vggish,cnn14")
    args = p.parse_args(argv)
    if not torch.cuda.is_available() and not args.dry_run:
        print("benchmarks/gpu.py: no CUDA device is visible (torch.cuda.is_available() is False); this "
              "benchmark measures one GPU and does not run on the CPU (use --dry-run for tiny CPU sizes)")
        return 2
    sz = DRY if args.dry_run else Sizes()
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)"
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    try:
        videos = make_videos(tmp / "videos", sz.videos, seed=0)
        res = {"device": name, "settings": sz.__dict__, "extraction": []}
        for m in args.models.split(","):
            res["extraction"].append(bench_extraction(m, videos, sz, device, tmp))
            print(f"extraction {m}: {json.dumps(res['extraction'][-1])}", flush=True)
        res["finetune"] = bench_finetune(sz, device)
        res["cmbs"] = bench_cmbs(sz, device)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res["seconds"] = time.perf_counter() - t0
    out = Path(args.out)
    atomic_write_json(out / "gpu.json", res)
    atomic_write_text(out / "gpu.md", markdown(res))
    print(markdown(res) + f"\nwrote {out / 'gpu.json'}, {out / 'gpu.md'} in {res['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
