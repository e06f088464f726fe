"""The finetune stage's work: encoders from the resolver, clips from pipeline.media, the loop,
tuned weights out in the encoders' native format, metrics through DVCLive (rank 0)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Callable

import torch

from pipeline.config import to_dict
from pipeline.encoders.base import lookup
from pipeline.encoders.spec import ModelSpec
from pipeline.finetune.config import FinetuneConfig
from pipeline.finetune.data import stream_clips, videos
from pipeline.finetune.model import AVContrastive, freeze_unused, set_trainable
from pipeline.finetune.train import fit, init_distributed

CHECKPOINT_DIR = "checkpoints"  # under paths.finetune
SUMMARY_FILE = "finetune.json"  # under paths.finetune: what the weights are and how they were made


def weights_file(out_dir: str | Path, encoder: str) -> Path:
    """Where the tuned ``encoder`` is written: ``<paths.finetune>/<encoder>.pth`` (``timm/<name>``
    -> ``timm/<name>.pth``); the path an ``extract.models`` entry names in ``weights:``."""
    return Path(out_dir) / f"{encoder}.pth"


def save_encoders(core: AVContrastive, out_dir: str | Path) -> dict[str, Path]:
    """Both encoders in their native checkpoint format (``Encoder.export_state_dict``), which
    the weights resolver loads strictly from a path; atomic replace."""
    out = {}
    for role, enc in (("visual", core.visual), ("audio", core.audio)):
        path = weights_file(out_dir, enc.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(enc.export_state_dict(), tmp)
        os.replace(tmp, path)
        out[role] = path
    return out


def build_model(cfg: FinetuneConfig, log: Callable[[str], None] = print,
                distributed: bool = False) -> tuple[AVContrastive, int]:
    """Encoders through the one registry/resolver (weights ``pretrained | random | <path>``),
    trainable layers set, projection heads seeded; ``distributed``: trainable parameters the
    embeddings do not use are frozen (DDP needs every one). Returns the model and audio rate."""
    visual = lookup(cfg.visual)(ModelSpec(encoder=cfg.visual, weights=cfg.visual_weights, seed=cfg.seed),
                                cfg.download, image_size=cfg.image_size)
    audio = lookup(cfg.audio)(ModelSpec(encoder=cfg.audio, weights=cfg.audio_weights, seed=cfg.seed),
                              cfg.download)
    nv = set_trainable(visual, cfg.visual_trainable, "finetune.visual_trainable")
    na = set_trainable(audio, cfg.audio_trainable, "finetune.audio_trainable")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = AVContrastive(visual, audio, visual.feature_shape()[-1], audio.feature_shape()[-1], cfg.proj_dim,
                              cfg.proj_norm)
    rate = audio_sample_rate(audio)
    shape = (1, cfg.frames_per_segment, cfg.image_size, cfg.image_size, 3)
    unused = freeze_unused(model, shape, rate) if distributed else []
    log(f"finetune: visual {cfg.visual} ({visual.weights.describe()}), {nv:,} trainable params; "
        f"audio {cfg.audio} ({audio.weights.describe()}), {na:,} trainable params; "
        f"frozen as unused by the embeddings: {', '.join(unused) or '-'}")
    return model, rate


def audio_sample_rate(audio) -> int:
    """The audio encoder's input rate, from its weights description."""
    rate = getattr(audio, "sample_rate", None) or (audio.weights.spec.sample_rate if audio.weights.spec else None)
    if not rate:
        raise ValueError(f"audio encoder {audio.name!r} declares no sample rate")
    return int(rate)


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run(params: dict) -> dict:
    """Fine-tune as ``params['finetune']`` says; rank 0 writes weights, summary and metrics."""
    cfg: FinetuneConfig = params["finetune"]
    paths = params["paths"]
    env = init_distributed(cfg.device)
    log = (lambda s: print(s, flush=True)) if env.main else (lambda s: None)
    log(f"finetune: git {git_revision()}, rank {env.rank}/{env.world} on {env.device}\n"
        + json.dumps(to_dict(cfg), indent=1))
    from pipeline.data.prepare import load_manifest  # the prepare stage's loader

    rows = load_manifest(paths.prepared)
    torch.manual_seed(cfg.seed)
    core, sample_rate = build_model(cfg, log, distributed=env.world > 1)
    train = stream_clips(videos(rows, cfg.train_splits), cfg, sample_rate, log)
    held_out = stream_clips(videos(rows, [cfg.eval_split]), cfg, sample_rate, log)
    log(f"finetune: {len(train)} training videos ({'+'.join(cfg.train_splits)}), {len(held_out)} "
        f"held-out ({cfg.eval_split}), streamed from {cfg.workers} decode workers")

    out = Path(paths.finetune)
    live = None
    if env.main:
        from dvclive import Live
        live = Live(dir=str(Path(paths.reports) / "finetune"), dvcyaml=None, save_dvc_exp=False)
    hist = fit(core, train, held_out, cfg, env, out / CHECKPOINT_DIR, live, log)
    summary = {}
    if env.main:
        before, after = hist["before"], hist["eval"][-1]
        summary = {"retrieval_top1_before": before["retrieval_top1"],
                   "retrieval_top1_after": after["retrieval_top1"],
                   "val_loss_before": before["loss"], "val_loss_after": after["loss"],
                   "train_loss_first_epoch": hist["train_loss"][0],
                   "train_loss_last_epoch": hist["train_loss"][-1],
                   "seconds": round(hist["seconds"], 1), "peak_memory_mb": round(hist["peak_memory_mb"], 1),
                   "world_size": env.world, "videos_train": len(train) - len(train.failed),
                   "videos_held_out": len(held_out) - len(held_out.failed)}
        written = save_encoders(core, out)
        log("finetune: wrote " + ", ".join(map(str, written.values())))
        (out / SUMMARY_FILE).write_text(json.dumps(
            {"metrics": summary, "config": to_dict(cfg), "git": git_revision(),
             "weights": {role: str(p) for role, p in written.items()}}, indent=1))
        live.summary.update(summary)
        live.make_summary()
        live.end()
        log("finetune: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
    env.barrier()
    return summary
