"""The finetune stage's work: encoders from the resolver, clips from pipeline.media, the loop,
tuned weights out in the encoders' native format, metrics through DVCLive (rank 0)."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Callable

from dvclive import Live

from pipeline import layout
from pipeline.files import check_writable
from pipeline.config import recorded
from pipeline.data.manifest import load_manifest
from pipeline.encoders.base import lookup
from pipeline.encoders.spec import ModelSpec, weights_inside
from pipeline.encoders.weights import seeded
from pipeline.finetune.config import FinetuneConfig
from pipeline.finetune.data import stream_clips, videos
from pipeline.finetune.model import AVContrastive, freeze_unused, set_trainable
from pipeline.finetune.train import Dist, fit
from pipeline.runtime import (atomic_torch_save, atomic_write_json, dist_env, file_identity,
                              git_revision, init_distributed, seed_everything, select_device,
                              source_digest)

DOWNLOAD_KEY = "runtime.finetune.download"  # named when a pretrained file is missing and downloads are off

CODE_DIRS = ("pipeline/finetune", "pipeline/encoders", "pipeline/media")  # the stage's code deps


def save_encoders(core: AVContrastive, out_dir: str | Path) -> dict[str, Path]:
    """Both encoders in their native checkpoint format (``Encoder.export_state_dict``), which
    the weights resolver loads strictly from a path; atomic replace."""
    out = {}
    for role, enc in (("visual", core.visual), ("audio", core.audio)):
        path = layout.tuned_weights(out_dir, enc.name)
        atomic_torch_save(enc.export_state_dict(), path)
        out[role] = path
    return out


def resume_dir(resume_root: str | Path, cfg: FinetuneConfig, rows: list[dict],
               clean: bool = True) -> Path:
    """``<paths.resume>/finetune/<fingerprint>``: the resume point of this run's code and inputs
    (the stage's code folders; id, path, size and mtime of every video of the splits used;
    weight files given by path); the checkpoint inside is used only when its config also
    matches (:func:`pipeline.finetune.train.load_checkpoint`). ``clean`` (rank 0) removes the
    resume points of other fingerprints: this code and data can never continue them."""
    h = hashlib.sha256(source_digest(*CODE_DIRS).encode())
    for vid, path in videos(rows, [*cfg.train_splits, cfg.eval_split]):
        st = Path(path).stat()
        h.update(f"{vid}:{path}:{st.st_size}:{st.st_mtime_ns}".encode())
    for w in (cfg.visual_weights, cfg.audio_weights):
        if Path(w).is_file():
            h.update(file_identity(w).encode())
    base = Path(resume_root) / layout.FINETUNE_RESUME_DIR
    mine = base / h.hexdigest()[:16]
    for old in base.glob("*") if clean else ():
        if old != mine and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return mine


def build_model(cfg: FinetuneConfig, log: Callable[[str], None] = print,
                distributed: bool = False) -> tuple[AVContrastive, int]:
    """Encoders through the one registry/resolver (weights ``pretrained | random | <path>``),
    trainable layers set, projection heads seeded; ``distributed``: trainable parameters the
    embeddings do not use are frozen (DDP needs every one). Returns the model and audio rate."""
    visual = lookup(cfg.visual)(ModelSpec(encoder=cfg.visual, weights=cfg.visual_weights, seed=cfg.seed),
                                cfg.download, image_size=cfg.image_size, download_key=DOWNLOAD_KEY)
    audio = lookup(cfg.audio)(ModelSpec(encoder=cfg.audio, weights=cfg.audio_weights, seed=cfg.seed),
                              cfg.download, download_key=DOWNLOAD_KEY)
    nv = set_trainable(visual, cfg.visual_trainable, "finetune.visual_trainable")
    na = set_trainable(audio, cfg.audio_trainable, "finetune.audio_trainable")
    with seeded(cfg.seed):
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


def start(device: str) -> Dist:
    """Rank and device (its choice logged by rank 0), the process group joined with a timeout."""
    env = dist_env()
    dev = select_device(device, "finetune.device", env.local_rank,
                        log=print if env.main else None)
    init_distributed(dev.type, env)
    return Dist(env.rank, env.world, dev)


def run(params: dict) -> dict:
    """Fine-tune as ``params['finetune']`` says; rank 0 writes weights, summary and metrics."""
    cfg: FinetuneConfig = params["finetune"]
    paths = params["paths"]
    check_writable(paths.finetune, Path(paths.reports) / "finetune", paths.resume)
    for role in ("visual", "audio"):  # DVC runs the stage in the project folder
        weights_inside(getattr(cfg, f"{role}_weights"), f"finetune.{role}_weights", Path.cwd())
    env = start(cfg.device)
    log = (lambda s: print(s, flush=True)) if env.main else (lambda s: None)
    log(f"finetune: git {git_revision()}, rank {env.rank}/{env.world} on {env.device}\n"
        + json.dumps(recorded("finetune", cfg), indent=1))
    rows = load_manifest(paths.prepared)
    seed_everything(cfg.seed, deterministic=False)
    core, sample_rate = build_model(cfg, log, distributed=env.world > 1)
    train = stream_clips(videos(rows, cfg.train_splits), cfg, sample_rate, log)
    held_out = stream_clips(videos(rows, [cfg.eval_split]), cfg, sample_rate, log)
    log(f"finetune: {len(train)} training videos ({'+'.join(cfg.train_splits)}), {len(held_out)} "
        f"held-out ({cfg.eval_split}), streamed from {cfg.workers} decode workers")
    out = Path(paths.finetune)
    live = Live(dir=str(Path(paths.reports) / "finetune"), dvcyaml=None, save_dvc_exp=False) \
        if env.main else None
    hist = fit(core, train, held_out, cfg, env, resume_dir(paths.resume, cfg, rows, env.main),
               live, log)
    summary = {}
    if env.main:
        summary = {**summarize(hist), "world_size": env.world,
                   "videos_train": len(train) - len(train.failed),
                   "videos_held_out": len(held_out) - len(held_out.failed)}
        publish(core, cfg, out, summary, live, log)
    env.barrier()
    return summary


def summarize(hist: dict) -> dict:
    """The stage's metrics from ``fit``'s history."""
    before, after = hist["before"], hist["eval"][-1]
    return {"retrieval_top1_before": before["retrieval_top1"],
            "retrieval_top1_after": after["retrieval_top1"],
            "val_loss_before": before["loss"], "val_loss_after": after["loss"],
            "train_loss_first_epoch": hist["train_loss"][0],
            "train_loss_last_epoch": hist["train_loss"][-1],
            "seconds": round(hist["seconds"], 1), "peak_memory_mb": round(hist["peak_memory_mb"], 1)}


def publish(core: AVContrastive, cfg: FinetuneConfig, out: Path, summary: dict, live: Live,
            log: Callable[[str], None]) -> None:
    """Rank 0: the tuned encoders, ``finetune.json`` and the DVCLive summary, each atomically."""
    written = save_encoders(core, out)
    log("finetune: wrote " + ", ".join(map(str, written.values())))
    atomic_write_json(out / layout.FINETUNE_SUMMARY,
                      {"metrics": summary, "config": recorded("finetune", cfg), "git": git_revision(),
                       "weights": {role: str(p) for role, p in written.items()}}, indent=1)
    live.summary.update(summary)
    live.make_summary()
    live.end()
    log("finetune: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
