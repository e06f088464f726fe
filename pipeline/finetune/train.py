"""The fine-tuning loop: DDP, global-batch sampler, exact gradient caching, checkpoints, DVCLive.

Launch with ``torchrun --nproc_per_node N`` (or plain ``python`` for one process): every rank
holds its shard of each global batch, embeddings are gathered over ranks with gradients and the
InfoNCE loss is the loss of the whole global batch (negatives = every other video of it).
"""
from __future__ import annotations

import contextlib
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from pipeline import files, layout
from pipeline.config import to_dict
from pipeline.runtime import atomic_torch_save, dist_env, select_device
from pipeline.runtime import init_distributed as runtime_init_distributed
from pipeline.finetune.config import FinetuneConfig
from pipeline.finetune.data import ClipBank, ClipStream
from pipeline.finetune.loss import gather_global, grouped_infonce, retrieval_top1, symmetric_infonce
from pipeline.finetune.model import AVContrastive, bn_stats_frozen, set_bn_mode

CHECKPOINT = layout.LAST  # file name in the checkpoint directory
# config keys that may change between a checkpoint and its resumption
RESUMABLE_CHANGES = {"epochs", "resume", "workers", "decode_timeout_s", "nproc"}


# --------------------------------------------------------------------------------------------
# Distributed
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def init_distributed(device: str, log: Optional[Callable[[str], None]] = None) -> Dist:
    """Rank/world from torchrun's environment (one process if absent), the device chosen by
    :func:`pipeline.runtime.select_device` (``cuda`` without a GPU is an error, never a silent
    move to CPU), the process group joined with the runtime's timeout (NCCL on CUDA, gloo on CPU)."""
    env = dist_env()
    dev = select_device(device, "finetune.device", env.local_rank, log=log)
    runtime_init_distributed(dev.type, env)
    return Dist(env.rank, env.world, dev)


class GlobalBatchSampler:
    """Shards videos over ranks by global batch: each epoch one permutation (seed + epoch) of
    all N videos is cut into global batches of ``global_batch`` (tail dropped); rank r gets the
    r-th contiguous slice of each, so the gathered batch (rank order) is the global batch
    itself, whatever the number of ranks."""

    def __init__(self, n: int, global_batch: int, rank: int, world: int, seed: int):
        if global_batch % world:
            raise ValueError(f"global batch {global_batch} not divisible by world size {world}")
        if n < global_batch:
            raise ValueError(f"{n} videos < global batch {global_batch}: lower finetune.batch_size")
        self.n, self.global_batch, self.rank, self.world, self.seed = n, global_batch, rank, world, seed
        self.local = global_batch // world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.global_batch

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g)
        for s in range(len(self)):
            batch = perm[s * self.global_batch:(s + 1) * self.global_batch]
            yield batch[self.rank * self.local:(self.rank + 1) * self.local].tolist()


# --------------------------------------------------------------------------------------------
# One optimisation step
# --------------------------------------------------------------------------------------------
def _rng_state(device: torch.device):
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(device: torch.device, state) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def autocast(cfg: FinetuneConfig, device: torch.device):
    if cfg.amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if cfg.amp == "bf16" else torch.float16)


def train_step(encoders: nn.Module, core: AVContrastive, frames: torch.Tensor, audio: torch.Tensor,
               cfg: FinetuneConfig, scaler: Optional[torch.amp.GradScaler]) -> float:
    """Forward + backward of one global batch (gradients left in ``.grad``); returns the loss.

    ``encoders`` is ``core.encoders``, DDP-wrapped when distributed. The clip features of the
    local shard are gathered (with gradients) into the global batch, and every rank runs the
    projection heads and the loss on that same global batch: head gradients are identical on
    all ranks without any reduction, encoder gradients are averaged by DDP.

    ``micro_batch`` < local batch: exact gradient caching (Gao et al. 2021, "GradCache"):
    (1) encode every micro-batch without a graph, (2) heads + loss on the gathered global batch,
    gradient w.r.t. the clip features, (3) re-encode each micro-batch with a graph (same RNG
    state; BatchNorm statistics untouched in pass 1) and backpropagate the cached feature
    gradients. Peak activation memory is one micro-batch; the gradient is the full-batch one
    (encoder BatchNorm in batch-statistics mode excepted: its statistics are per micro-batch
    and per rank, as in any accumulation scheme; ``bn: frozen`` removes that).
    """
    scale = (lambda t: scaler.scale(t)) if scaler is not None else (lambda t: t)
    dev = frames.device

    def loss_of(pv: torch.Tensor, pa: torch.Tensor) -> torch.Tensor:
        v = core.head_visual(gather_global(pv.float()))
        a = core.head_audio(gather_global(pa.float()))
        return symmetric_infonce(v, a, cfg.temperature)

    b = frames.shape[0]
    micro = cfg.micro_batch or b
    if micro >= b:
        with autocast(cfg, dev):
            pv, pa = encoders(frames, audio)
        loss = loss_of(pv, pa)
        scale(loss).backward()
        return float(loss.detach())

    chunks = [(lo, min(lo + micro, b)) for lo in range(0, b, micro)]
    states, pvs, pas = [], [], []
    with torch.no_grad(), bn_stats_frozen(core.encoders):
        for lo, hi in chunks:
            states.append(_rng_state(dev))
            with autocast(cfg, dev):
                pv, pa = encoders(frames[lo:hi], audio[lo:hi])
            pvs.append(pv.float())
            pas.append(pa.float())
    pv = torch.cat(pvs).requires_grad_()
    pa = torch.cat(pas).requires_grad_()
    loss = loss_of(pv, pa)
    scale(loss).backward()
    for k, (lo, hi) in enumerate(chunks):
        _set_rng_state(dev, states[k])
        sync = isinstance(encoders, DDP) and k < len(chunks) - 1
        with encoders.no_sync() if sync else contextlib.nullcontext():
            with autocast(cfg, dev):
                cv, ca = encoders(frames[lo:hi], audio[lo:hi])
            surrogate = (cv.float() * pv.grad[lo:hi]).sum() + (ca.float() * pa.grad[lo:hi]).sum()
            surrogate.backward()
    return float(loss.detach())


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def embed_all(core: AVContrastive, bank: ClipBank | ClipStream, batch: int, cfg: FinetuneConfig,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of every clip of ``bank`` in eval mode (head BatchNorm: running statistics)."""
    was = core.training
    core.eval()
    pvs, pas = [], []
    order = [list(range(lo, min(lo + batch, len(bank)))) for lo in range(0, len(bank), batch)]
    for frames, audio in bank.batches(order, device):
        with autocast(cfg, device):
            pv, pa = core.encoders(frames, audio)
        pvs.append(pv.float())
        pas.append(pa.float())
    v, a = core.head_visual(torch.cat(pvs)), core.head_audio(torch.cat(pas))
    core.train(was)
    return v.cpu(), a.cpu()


def evaluate(core: AVContrastive, bank: ClipBank | ClipStream, cfg: FinetuneConfig, device: torch.device) -> dict:
    """Held-out retrieval top-1 (audio -> visual) and InfoNCE, groups of ``eval_batch`` videos."""
    v, a = embed_all(core, bank, cfg.micro_batch or cfg.batch_size, cfg, device)
    return {"retrieval_top1": retrieval_top1(a, v, cfg.eval_batch),
            "loss": grouped_infonce(v, a, cfg.temperature, cfg.eval_batch)}


def peak_memory_mb(device: torch.device) -> float:
    """GPU: torch.cuda.max_memory_allocated; CPU: peak resident set size of this process."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# --------------------------------------------------------------------------------------------
# Optimiser, checkpoints
# --------------------------------------------------------------------------------------------
def build_optimizer(core: AVContrastive, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    enc = [p for m in (core.visual, core.audio) for p in m.parameters() if p.requires_grad]
    head = [p for m in (core.head_visual, core.head_audio) for p in m.parameters()]
    groups = [{"params": head, "lr": cfg.lr_head, "base_lr": cfg.lr_head}]
    if enc:
        groups.append({"params": enc, "lr": cfg.lr_encoder, "base_lr": cfg.lr_encoder})
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr_head, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr_head, weight_decay=cfg.weight_decay)


def set_lr(opt: torch.optim.Optimizer, cfg: FinetuneConfig, epoch: int) -> None:
    factor = cfg.lr_gamma ** sum(epoch >= m for m in cfg.lr_milestones)
    for g in opt.param_groups:
        g["lr"] = g["base_lr"] * factor


def save_checkpoint(path: Path, core: AVContrastive, opt, scaler, epoch: int, cfg: FinetuneConfig,
                    history: dict) -> None:
    """Dict of state_dicts + resolved config + completed epochs + history; atomic replace."""
    atomic_torch_save({"model": core.state_dict(), "optimizer": opt.state_dict(),
                       "scaler": scaler.state_dict() if scaler is not None else None,
                       "epoch": epoch, "config": to_dict(cfg), "history": history}, path)


def load_checkpoint(path: Path, cfg: FinetuneConfig, log: Callable[[str], None]) -> Optional[dict]:
    """The checkpoint at ``path`` if resuming applies: ``resume`` on, file present, and its
    config equal to ``cfg`` except :data:`RESUMABLE_CHANGES` (a mismatch is reported)."""
    if not cfg.resume or not path.exists():
        return None
    ckpt = files.load_checkpoint(path, "resume point")
    old, new = ckpt["config"], to_dict(cfg)
    diff = sorted(k for k in set(old) | set(new) if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k))
    if diff:
        log(f"finetune: checkpoint {path} was made with other values of {', '.join(diff)}; starting afresh")
        return None
    return ckpt


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
def log_epoch(live, epoch: int, train_loss: float, ev: Optional[dict]) -> None:
    """One DVCLive step per epoch, numbered from 1 as the log numbers it (rank 0 only: ``live``
    is None elsewhere)."""
    if live is None or ev is None:
        return
    live.step = epoch + 1
    live.log_metric("train/loss", train_loss)
    live.log_metric("val/loss", ev["loss"])
    live.log_metric("val/retrieval_top1", ev["retrieval_top1"])
    live.next_step()


@dataclass
class _Fit:
    """What the steps of :func:`fit` share."""

    core: AVContrastive
    encoders: nn.Module  # core.encoders, DDP-wrapped when distributed
    opt: torch.optim.Optimizer
    scaler: Optional[torch.amp.GradScaler]
    cfg: FinetuneConfig
    env: Dist
    ckpt_path: Path
    history: dict
    live: object = None
    log: Callable[[str], None] = print
    t0: float = 0.0


def fit(core: AVContrastive, train: ClipBank | ClipStream, held_out: ClipBank | ClipStream,
        cfg: FinetuneConfig, env: Dist, checkpoint_dir: Path, live=None, log: Callable[[str], None] = print
        ) -> dict:
    """Train ``core`` for ``cfg.epochs`` epochs (resuming from ``checkpoint_dir`` if it applies).

    ``train``/``held_out``: clips streamed from the decode workers (:class:`ClipStream`) or in
    memory (:class:`ClipBank`). ``live``: a dvclive ``Live`` on rank 0 (None elsewhere / in
    tests). Returns the history dict: ``train_loss`` per epoch, ``eval`` per epoch, ``before`` (eval of
    the starting weights).
    """
    run, start = _start(core, cfg, env, Path(checkpoint_dir) / CHECKPOINT, live, log)
    if run.history["before"] is None:
        run.history["before"] = evaluate(core, held_out, cfg, env.device) if env.main else None
        if env.main:
            log(f"finetune: before  val loss {run.history['before']['loss']:.4f}  "
                f"retrieval_top1 {run.history['before']['retrieval_top1']:.4f}")
        env.barrier()  # evaluation runs on rank 0 only
    sampler = GlobalBatchSampler(len(train), cfg.batch_size, env.rank, env.world, cfg.seed)
    for epoch in range(start, cfg.epochs):
        loss = _train_epoch(run, train, sampler, epoch)
        _end_epoch(run, held_out, epoch, loss)
    run.history["seconds"] = time.time() - run.t0
    run.history["peak_memory_mb"] = peak_memory_mb(env.device)
    return run.history


def _start(core: AVContrastive, cfg: FinetuneConfig, env: Dist, ckpt_path: Path, live,
           log: Callable[[str], None]) -> tuple[_Fit, int]:
    """Optimiser, scaler, the checkpoint to resume from (if it applies), DDP; returns the start epoch."""
    t0 = time.time()
    core.to(env.device)
    opt = build_optimizer(core, cfg)
    scaler = torch.amp.GradScaler(env.device.type) if cfg.amp == "fp16" else None
    history = {"train_loss": [], "eval": [], "before": None}
    start = 0
    ckpt = load_checkpoint(ckpt_path, cfg, log)
    if ckpt is not None:
        core.load_state_dict(ckpt["model"], strict=True)
        opt.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt["scaler"] is not None:
            scaler.load_state_dict(ckpt["scaler"])
        start, history = ckpt["epoch"], ckpt["history"]
        log(f"finetune: resumed from {ckpt_path} after epoch {start}")
    if getattr(core.visual, "channels_last", False):  # params in the layout of their grads (DDP buckets)
        core.visual.to(memory_format=torch.channels_last)
    encoders = DDP(core.encoders, device_ids=[env.device.index] if env.device.type == "cuda" else None) \
        if env.world > 1 else core.encoders
    for epoch in range(start):  # a fresh Live holds the epochs of a resumed run too
        log_epoch(live, epoch, history["train_loss"][epoch], history["eval"][epoch])
    return _Fit(core, encoders, opt, scaler, cfg, env, ckpt_path, history, live, log, t0), start


def _train_epoch(run: _Fit, train: ClipBank | ClipStream, sampler: GlobalBatchSampler, epoch: int) -> float:
    """One pass over ``sampler``'s global batches; returns the mean (global) loss."""
    cfg, core = run.cfg, run.core
    torch.manual_seed(cfg.seed * 1_000_003 + epoch * 101 + run.env.rank)  # dropout etc.: resumable
    sampler.set_epoch(epoch)
    set_lr(run.opt, cfg, epoch)
    core.train()
    set_bn_mode(core.encoders, cfg.bn)
    core.head_visual.reset_stats()
    core.head_audio.reset_stats()
    losses = []
    bar = tqdm(total=len(sampler), desc=f"finetune epoch {epoch + 1}/{cfg.epochs}", unit="batch",
               disable=not run.env.main, leave=False, dynamic_ncols=True)  # progress within an epoch
    with bar:
        for frames, audio in train.batches(sampler, run.env.device):
            run.opt.zero_grad(set_to_none=True)
            losses.append(train_step(run.encoders, core, frames, audio, cfg, run.scaler))
            _optimizer_step(run)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
            bar.update(1)
    return sum(losses) / len(losses)  # the global loss: same on every rank


def _optimizer_step(run: _Fit) -> None:
    if run.scaler is not None:
        run.scaler.unscale_(run.opt)
    if run.cfg.grad_clip > 0:
        nn.utils.clip_grad_norm_([p for p in run.core.parameters() if p.requires_grad], run.cfg.grad_clip)
    if run.scaler is not None:
        run.scaler.step(run.opt)
        run.scaler.update()
    else:
        run.opt.step()


def _end_epoch(run: _Fit, held_out: ClipBank | ClipStream, epoch: int, train_loss: float) -> None:
    """Held-out evaluation, log line, DVCLive step and checkpoint (rank 0), then a barrier."""
    env, history = run.env, run.history
    history["train_loss"].append(train_loss)
    ev = evaluate(run.core, held_out, run.cfg, env.device) if env.main else None
    history["eval"].append(ev)
    if env.main:
        run.log(f"finetune: epoch {epoch + 1}/{run.cfg.epochs}  train loss {train_loss:.4f}  "
                f"val loss {ev['loss']:.4f}  retrieval_top1 {ev['retrieval_top1']:.4f}  "
                f"({time.time() - run.t0:.0f}s)")
        log_epoch(run.live, epoch, train_loss, ev)
        save_checkpoint(run.ckpt_path, run.core, run.opt, run.scaler, epoch + 1, run.cfg, history)
    env.barrier()
