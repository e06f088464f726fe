"""The one training loop for every registered head.

* Recipe: the head's ``TRAIN_DEFAULTS[setting]`` (the paper's optimizer, lr, schedule, batch
  size, epochs, clipping) with the non-null ``train.*`` params merged over it.
* Supervision: the setting (:mod:`pipeline.settings`) builds each batch for
  ``Head.forward_batch`` and ``Head.loss`` (``weak``: no segment labels reach the loss).
* Validation each epoch: the head's loss on the val split (eval mode, the setting's batches) and
  ``val_accuracy``, the setting's selection metric (segment accuracy; ``cml``: the mean of A2V and
  V2A window accuracy, M2N Table 1 "Average"). The best epoch by
  ``val_accuracy`` is ``best_val.pt``; the epoch the head's released script would report (its
  schedule of checks, mostly on test: :mod:`pipeline.training.selection`) is ``best_test.pt``;
  ``best.pt`` is the one ``select`` names.
* Reproducible: one seed for init, shuffling (own generator) and dropout (global RNG); both RNG
  states are in ``last.pt`` so a resumed run equals an uninterrupted one. Under the recipe
  switch ``torch_seed: drawn`` (AVEL's scripts, which never seed torch) with ``train.seed``
  empty, torch's seed is drawn afresh and recorded (``torch_seed`` in every checkpoint).
* Recipe switches (``train.recipe``: authors | paper, :data:`pipeline.heads._registry.SWITCH_VALUES`):
  the batch order of an epoch (``shuffle``, ``shuffle_scope``: :func:`batch_order`), ``drop_last``,
  the AVPS target (``avps_target: buffer``: the authors' never-reset loader buffer,
  :class:`pipeline.heads.psp.AVPSBuffer`, passed as ``batch["avps_target"]``; its state is in
  ``last.pt``) and the ``L_c`` class rule (``batch["video_class"]``).
* Resume: ``last.pt`` (in ``resume_dir``: the stage keeps it in the git-ignored
  ``<paths.resume>/train``, never a stage output) is written every epoch and is resumed only when
  its fingerprint equals this run's: head, setting, hyperparameters, recipe, seed, feature
  normalisation, device type, torch version, every source file under ``pipeline/heads`` and
  ``pipeline/training`` (and the head's own file), and a content hash of the data in memory.
  Otherwise training starts fresh and says why. The DVCLive curves are rebuilt from the history
  in ``last.pt`` on every start, so a resumed run's curves equal an uninterrupted run's and a
  file truncated by a killed run is never read.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

from pipeline import layout, runtime, settings
from pipeline.settings import Setting
from pipeline.config import ConfigError, InputError
from pipeline.heads import count_parameters, instantiate
from pipeline.heads._registry import HeadSpec, Recipe
from pipeline.heads.psp import AVPSBuffer
from pipeline.training import checkpoint as ckpt_io
from pipeline.training.config import resolve_train
from pipeline.training.data import Dataset, SplitData, feature_stats
from pipeline.training.selection import ScriptSelection

CODE_DIRS = ("pipeline/heads", "pipeline/training")  # hashed into the resume fingerprint


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSpec:
    """Everything one training run needs besides data: the head resolved once (head class,
    typed config, setting, typed recipe, seed) and the run's options (:func:`run_spec`)."""
    head: HeadSpec
    device: str = "auto"  # auto | cpu | cuda
    resume: bool = True
    feature_norm: str = "none"  # none | standardize (train-split statistics, kept in checkpoints)
    select: str = "val"  # best.pt: val (best val epoch) | test (the released script's protocol)


def run_spec(head: str, setting: str = "fully", hparam_overrides: Optional[dict[str, Any]] = None,
             recipe_overrides: Optional[dict[str, Any]] = None, seed: Optional[int] = None,
             **options: Any) -> RunSpec:
    """Resolve a run once (:func:`pipeline.training.config.resolve_train`: errors name the
    params key): ``hparam_overrides`` = ``heads.<head>``, ``recipe_overrides`` = the non-null
    ``train.*`` recipe keys, ``seed`` ``None`` = the authors' seed; ``options`` are the other
    :class:`RunSpec` fields."""
    return RunSpec(resolve_train(head, setting, hparam_overrides or {}, recipe_overrides or {},
                                 seed=seed), **options)


def select_device(choice: str, key: str = "train.device") -> torch.device:
    """``auto`` picks CUDA when present; asking for ``cuda`` without one is an error naming ``key``."""
    return runtime.select_device(choice, key)


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------
def batch_order(n: int, batch_size: int, shuffle: bool, scope: str,
                gen: torch.Generator) -> torch.Tensor:
    """Row indices of one epoch, batch after batch (a training step takes the next
    ``batch_size``): the stored order (``shuffle`` false), a fresh permutation (``scope``
    ``epoch``), or ``first_batch``, PSP's and VSCG's ``AVE_Weakly_Dataset.get_batch``: batch 0
    is a random draw of ``batch_size`` rows (it shuffles the id list, then reads each id at its
    position in the list before the shuffle) and batches 1..n-1 are rows ``batch_size..n-1`` in
    stored order (later ids are read at their positions in the list just shuffled, i.e. the
    stored rows), every epoch."""
    if not shuffle:
        return torch.arange(n)
    if scope == "epoch":
        return torch.randperm(n, generator=gen)
    if scope == "first_batch":
        return torch.cat([torch.randperm(n, generator=gen)[:batch_size], torch.arange(batch_size, n)])
    raise ValueError(f"shuffle_scope must be 'epoch' or 'first_batch', got {scope!r}")


@torch.no_grad()
def validation_loss(head, data: SplitData, setting: Setting, device: torch.device, epoch: int,
                    epochs: int, batch_size: int = 64, extra: Optional[dict] = None) -> float:
    """The head's training loss on ``data`` (eval mode, the setting's batch with ``extra``
    entries), averaged over videos; NaN for an empty split."""
    was_training = head.training
    head.eval()
    total = 0.0
    for s in range(0, len(data), batch_size):
        idx = torch.arange(s, min(s + batch_size, len(data)))
        batch = {**setting.batch(data, idx, device, epoch, epochs), **(extra or {})}
        total += float(head.loss(head.forward_batch(batch), batch)[0]) * len(idx)
    head.train(was_training)
    return total / len(data) if len(data) else float("nan")


# --------------------------------------------------------------------------------------------
# Optimisation
# --------------------------------------------------------------------------------------------
def make_optimizer(params, recipe: Recipe) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    name = recipe.optimizer
    if name == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=0.9, weight_decay=recipe.weight_decay)
    raise ConfigError(f"train.optimizer: {name!r} is not allowed; allowed: 'adam', 'sgd'")


def lr_milestones(recipe: Recipe) -> list[int]:
    """Epochs (0-based) from which ``lr`` is multiplied once more by ``lr_gamma``: the recipe's
    ``lr_milestones``, or ``lr_step``, 2 ``lr_step``, ... below ``epochs`` (resolution allows
    only one of the two)."""
    if recipe.lr_step > 0:
        return list(range(recipe.lr_step, recipe.epochs, recipe.lr_step))
    return list(recipe.lr_milestones)


def make_scheduler(opt: torch.optim.Optimizer, recipe: Recipe):
    """``MultiStepLR`` stepped once per epoch (no milestones = constant lr)."""
    return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=lr_milestones(recipe),
                                                gamma=recipe.lr_gamma)


# --------------------------------------------------------------------------------------------
# Fingerprint (what must match for a resume)
# --------------------------------------------------------------------------------------------
def data_digest(data: Dataset) -> str:
    """sha256 of everything training reads from ``data``: every array and tensor of every split
    (rows, features, labels, ...), the categories and the dimensions. A content hash, so a
    feature file re-extracted with other values (or another row validity) never resumes."""
    h = hashlib.sha256(json.dumps([data.categories, data.visual_dim, data.audio_dim]).encode())
    for name in sorted(data.splits):
        split = data.splits[name]
        for f in dataclasses.fields(split):
            value = getattr(split, f.name)
            arrays = value.values() if isinstance(value, dict) else [value]
            for arr in arrays:
                if isinstance(arr, torch.Tensor):
                    arr = arr.numpy()
                if isinstance(arr, np.ndarray):
                    h.update(f"{name}.{f.name}{arr.shape}{arr.dtype}".encode())
                    h.update(memoryview(np.ascontiguousarray(arr)).cast("B"))
    return h.hexdigest()


def fingerprint(spec: RunSpec, resolved: HeadSpec, data: Dataset, device: torch.device) -> str:
    """Identity of a run: equal fingerprints train the same model from the same inputs."""
    h = hashlib.sha256(json.dumps(
        [resolved.head, resolved.setting.name, resolved.hparams, resolved.recipe.as_dict(),
         resolved.seed, spec.feature_norm, device.type, torch.__version__],
        sort_keys=True, default=str).encode())
    h.update(runtime.source_digest(*CODE_DIRS).encode())
    src = inspect.getsourcefile(resolved.head_class)  # a head registered elsewhere too
    if src:
        h.update(Path(src).read_bytes())
    h.update(data_digest(data).encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    best_epoch: int
    best_val_accuracy: float
    epochs: int
    num_parameters: int
    train_seconds: float
    resumed_from: Optional[int]
    history: list[dict]


@dataclass
class _TrainState:
    """What the steps of one training run share."""
    spec: RunSpec
    resolved: HeadSpec  # the head resolved once, fitted to the visual maps
    setting: Setting
    device: torch.device
    head: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: Any
    gen: torch.Generator  # shuffling
    fingerprint: str
    dims: dict
    train_split: SplitData
    val_split: SplitData
    test_split: Optional[SplitData]  # for the released scripts' checks on test (best_test.pt)
    script: ScriptSelection
    norm: Optional[dict]  # train-split feature statistics (feature_norm: standardize)
    avps: Optional[AVPSBuffer]  # the authors' AVPS target buffer (avps_target: buffer)
    common: dict  # what every checkpoint of the run carries
    out_dir: Path
    last_path: Path  # the resume point
    start: int = 0
    best: Optional[dict] = None
    history: list = field(default_factory=list)
    seconds: float = 0.0
    resumed: Optional[int] = None

    @property
    def recipe(self) -> Recipe:
        return self.resolved.recipe

    @property
    def epochs(self) -> int:
        return self.recipe.epochs

    @property
    def batch_extra(self) -> dict:
        """Batch entries every loss call of the run gets: the ``L_c`` class rule."""
        return {"video_class": self.recipe.video_class}

    @property
    def steps_per_epoch(self) -> int:
        """Batches an epoch: the last partial one dropped when the recipe says so and a whole
        batch remains (a split smaller than one batch trains on it whole)."""
        n, bs = len(self.train_split), self.recipe.batch_size
        return n // bs if self.recipe.drop_last and n >= bs else -(-n // bs)


class Training:
    """One training run, epoch by epoch: ``epochs()`` trains and yields each epoch's history
    row once its checkpoints are written; ``finish()`` writes ``best_val.pt``, ``best_test.pt``
    and ``best.pt`` and returns the result. A run stopped between epochs (a kill, or a caller
    that stops iterating) leaves only its resume point, from which the next run continues."""

    def __init__(self, spec: RunSpec, data: Dataset, out_dir: str | Path, *,
                 live_dir: str | Path | None = None, params_snapshot: Optional[dict] = None,
                 resume_dir: str | Path | None = None):
        self.state = _setup(spec, data, Path(out_dir), Path(resume_dir or out_dir),
                            params_snapshot or {})
        if spec.resume:
            _resume(self.state)
        self.live = _open_live(live_dir, self.state.history)

    @property
    def resumed_from(self) -> Optional[int]:
        """The epoch of the resume point continued (``None``: started fresh)."""
        return self.state.resumed

    def epochs(self) -> Iterator[dict]:
        for epoch in range(self.state.start, self.state.epochs):
            _epoch(self.state, epoch, self.live)
            yield self.state.history[-1]

    def finish(self) -> TrainResult:
        return _finish(self.state, self.live)


def train(spec: RunSpec, data: Dataset, out_dir: str | Path, *, live_dir: str | Path | None = None,
          params_snapshot: Optional[dict] = None, resume_dir: str | Path | None = None
          ) -> TrainResult:
    """Train the head of ``spec`` on ``data``; write ``<out_dir>/best.pt`` (and ``best_val.pt``,
    ``best_test.pt``) and the resume point ``<resume_dir>/last.pt`` (``resume_dir`` defaults
    to ``out_dir``)."""
    run = Training(spec, data, out_dir, live_dir=live_dir, params_snapshot=params_snapshot,
                   resume_dir=resume_dir)
    for _ in run.epochs():
        pass
    return run.finish()


def _setup(spec: RunSpec, data: Dataset, out_dir: Path, resume_dir: Path,
           params_snapshot: dict) -> _TrainState:
    """Fit the resolved head to the visual maps, build it, the optimiser and schedule (seeded),
    check the splits."""
    resolved = spec.head.fit_visual_map(tuple(data.splits["train"].visual.shape[2:4]))
    setting = resolved.setting
    train_split, val_split, test_split, norm = _splits(resolved, data, spec.feature_norm)
    for note in resolved.notes:
        print(f"heads.{resolved.head}.{note}")
    hparams, recipe = resolved.hparams, resolved.recipe
    device = select_device(spec.device)
    runtime.seed_everything(resolved.seed)
    torch_seed = resolved.seed
    if recipe.torch_seed == "drawn" and resolved.authors_seed:
        torch_seed = int(torch.seed() % 2**31)  # fresh entropy, as an unseeded script
        torch.manual_seed(torch_seed)
    dims = {"visual_dim": data.visual_dim, "audio_dim": data.audio_dim,
            "num_classes": data.num_classes}
    try:
        head = instantiate(resolved, **dims).to(device)
    except (AssertionError, ValueError) as e:  # torch's checks of sizes (e.g. heads | d_model)
        raise ConfigError(f"heads.{spec.head}: {spec.head} ({spec.setting}) cannot be built with "
                          f"{spec.hparam_overrides or 'its defaults'} on features {dims}: "
                          f"{' '.join(str(e).split())[:200]}") from None
    opt = make_optimizer(head.parameters(), recipe)
    n_params = count_parameters(head)
    common = {"format": ckpt_io.FORMAT, "head": resolved.head, "setting": setting.name,
              "hparams": hparams, "dims": dims, "recipe": recipe.as_dict(), "seed": resolved.seed,
              "torch_seed": torch_seed,
              "params": params_snapshot,
              "num_parameters": n_params, "categories": list(data.categories), "feature_norm": norm,
              "cml_excluded": _setting_exclusions(data),
              "features": ckpt_io.feature_provenance(data.visual_meta, data.audio_meta)}
    script = ScriptSelection(resolved.head_class.SELECTION[setting.name], recipe.epochs)
    print(f"head: {resolved.head} ({setting.name}), trainable parameters: {n_params:,}")
    print(f"hparams: {hparams}")
    print(f"recipe: {recipe.as_dict()}")
    print(f"seed: {resolved.seed}" + (" (the authors' seed; train.seed: null)"
                                      if resolved.authors_seed else "")
          + (f"; torch seed {torch_seed} drawn (torch_seed: drawn, as the unseeded scripts)"
             if torch_seed != resolved.seed else ""))
    print(f"recipe: {recipe.recipe} (train.recipe); batches: "
          + (f"shuffled ({recipe.shuffle_scope})" if recipe.shuffle else "stored order")
          + f", drop_last {recipe.drop_last}, avps_target {recipe.avps_target}, "
          f"video_class {recipe.video_class}")
    if recipe.drop_last and len(train_split) < recipe.batch_size:
        print(f"recipe: drop_last, but the train split ({len(train_split)} rows) is smaller than "
              f"one batch ({recipe.batch_size}): it trains as one partial batch an epoch")
    print(f"lr schedule: {recipe.lr:g}, x{recipe.lr_gamma:g} at epochs "
          f"{lr_milestones(recipe) or 'none'}")
    print(f"selection: best_val.pt every epoch on val; best_test.pt as the released script: "
          f"{script.schedule.source}; best.pt = best_{spec.select}.pt (train.select)")
    avps = (AVPSBuffer(recipe.batch_size, train_split.labels.shape[1])
            if recipe.avps_target == "buffer" else None)
    return _TrainState(spec, resolved, setting, device, head, opt, make_scheduler(opt, recipe),
                       torch.Generator().manual_seed(resolved.seed),
                       fingerprint(spec, resolved, data, device), dims, train_split, val_split,
                       test_split, script, norm, avps, common, out_dir, resume_dir / layout.LAST)


def _splits(resolved: HeadSpec, data: Dataset, feature_norm: str
            ) -> tuple[SplitData, SplitData, Optional[SplitData], Optional[dict]]:
    """Train, val and test splits (standardised with train statistics when asked); an empty
    train or val split is an error saying how many rows were excluded and why. ``data`` is an
    input: it must have been read from the order files of the run's setting."""
    name = resolved.setting.name
    if resolved.setting.order_file != settings.get(data.setting).order_file:
        raise ValueError(f"setting {name!r} needs the data read for it: "
                         f"load_dataset(..., setting={name!r}) (got {data.setting!r})")
    train_split, val_split = data.splits["train"], data.splits["val"]
    test_split = data.splits.get("test")
    for split in (train_split, val_split):
        if len(split) == 0:
            raise InputError(f"{split.split} split: no usable rows; {_exclusions(split)}")
    norm = None
    if feature_norm == "standardize":
        norm = feature_stats(train_split)  # train statistics only; evaluation reuses them
        train_split, val_split = train_split.normalized(norm), val_split.normalized(norm)
        test_split = test_split.normalized(norm) if test_split is not None else None
        print("features: standardized per channel with train-split mean/std")
    return train_split, val_split, test_split, norm


def _exclusions(split: SplitData) -> str:
    """How the rows of ``split`` were lost, for the empty-split error."""
    reasons = {"invalid features (valid = 0 in the visual or audio feature file)": len(split.excluded)}
    for reason, rows in split.setting_excluded.items():
        reasons[f"{reason} ({split.setting})"] = len(rows)
    total = sum(reasons.values())
    if not total:
        return f"the split's order file lists no rows (prepare wrote an empty {split.split} split)"
    return f"{total} rows excluded: " + ", ".join(f"{n} for {why}" for why, n in reasons.items() if n)


def _resume(run: _TrainState) -> None:
    """Continue ``last.pt`` when its fingerprint is this run's (model, optimiser, schedule,
    RNG states, best so far, history); otherwise say why training starts fresh."""
    if not run.last_path.is_file():
        return
    last = ckpt_io.load(run.last_path)
    if last.get("fingerprint") != run.fingerprint:
        print(f"resume: {run.last_path} is from a different run (fingerprint "
              f"{last.get('fingerprint')} != {run.fingerprint}); starting fresh")
        return
    try:
        run.head.load_state_dict(last["model"], strict=True)
        run.opt.load_state_dict(last["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise InputError(f"{run.last_path}: its model does not fit this run's ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:200]}); delete it to start fresh") from None
    run.sched.load_state_dict(last["scheduler"])
    torch.set_rng_state(last["rng"]["torch"])
    if run.device.type == "cuda" and "cuda" in last["rng"]:
        torch.cuda.set_rng_state(last["rng"]["cuda"], run.device)
    run.gen.set_state(last["rng"]["shuffle"])
    if run.avps is not None:
        run.avps.load_state_dict(last["avps"])
    run.common["torch_seed"] = last.get("torch_seed", run.common["torch_seed"])
    run.start, run.best, run.history = last["epoch"] + 1, last["best"], list(last["history"])
    run.seconds, run.resumed = float(last["train_seconds"]), last["epoch"]
    run.script.load_state(last.get("script_selection"))
    print(f"resume: {run.last_path} at epoch {last['epoch'] + 1}/{run.epochs}")


def _train_epoch(run: _TrainState, epoch: int) -> dict[str, float]:
    """One pass over the train split in the recipe's order (:func:`batch_order`; the last
    partial batch kept unless ``drop_last``); the mean of each loss term over batches."""
    run.head.train()
    bs = run.recipe.batch_size
    n = len(run.train_split)
    perm = batch_order(n, bs, run.recipe.shuffle, run.recipe.shuffle_scope, run.gen)
    sums, n_batches = {}, 0
    for b, s in enumerate(range(0, run.steps_per_epoch * bs, bs)):
        batch = {**run.setting.batch(run.train_split, perm[s:s + bs], run.device, epoch, run.epochs),
                 **run.batch_extra}
        if run.avps is not None and "labels" in batch:  # a setting without segment labels: none
            batch["avps_target"] = run.avps.update(batch["labels"]).to(run.device)
        loss, parts = run.head.loss(run.head.forward_batch(batch), batch)
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        ckpt_io.check_step(loss, run.head, epoch, b, batch, run.opt.param_groups[0]["lr"])
        if run.recipe.clip_grad:
            torch.nn.utils.clip_grad_norm_(run.head.parameters(), run.recipe.clip_grad)
        run.opt.step()
        n_batches += 1
        for k, v in {"loss": float(loss.detach()), **parts}.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    return {k: v / max(n_batches, 1) for k, v in sums.items()}


def _epoch(run: _TrainState, epoch: int, live) -> None:
    """Train, validate, keep the best, log, and write the checkpoints of one epoch."""
    t0 = time.perf_counter()
    train_means = _train_epoch(run, epoch)
    lr = run.opt.param_groups[0]["lr"]
    run.sched.step()
    val = run.setting.metrics(run.head, run.val_split, run.device, run.dims["num_classes"])
    val["loss"] = validation_loss(run.head, run.val_split, run.setting, run.device, epoch, run.epochs,
                                  extra=run.batch_extra)
    run.seconds += time.perf_counter() - t0
    row = {"epoch": epoch, "lr": lr, **{f"val_{k}": v for k, v in val.items()},
           **{f"train_{k}": v for k, v in train_means.items()}}
    run.history.append(row)
    improved = run.best is None or val["accuracy"] > run.best["val_accuracy"]
    if improved:
        run.best = {"epoch": epoch, "val_accuracy": val["accuracy"],
                    "model": {k: v.detach().cpu().clone() for k, v in run.head.state_dict().items()}}
    script_acc = _script_check(run, epoch, val["accuracy"])
    if script_acc is not None:
        row[f"script_{run.script.schedule.split}_accuracy"] = script_acc
    print(f"epoch {epoch + 1}/{run.epochs}  loss {row['train_loss']:.4f}  val loss "
          f"{val['loss']:.4f}  val acc {val['accuracy']:.4f}{'  *' if improved else ''}  "
          f"({time.perf_counter() - t0:.1f}s)")
    _log_row(live, row)
    _save_epoch(run, epoch, improved)


def _save_epoch(run: _TrainState, epoch: int, improved: bool) -> None:
    """``best_val.pt`` when the epoch improved, and the resume point ``last.pt`` (both atomic)."""
    common = {**run.common, "train_seconds": run.seconds,
              "step": (epoch + 1) * run.steps_per_epoch}
    if improved:
        ckpt_io.save({**common, "epoch": epoch, "val_accuracy": run.best["val_accuracy"],
                      "model": run.best["model"]}, layout.best_checkpoint(run.out_dir, "val"))
    ckpt_io.save({**common, "epoch": epoch, "model": run.head.state_dict(),
                  "optimizer": run.opt.state_dict(), "scheduler": run.sched.state_dict(),
                  "rng": _rng_state(run.gen, run.device), "best": run.best,
                  **({"avps": run.avps.state_dict()} if run.avps is not None else {}),
                  "script_selection": run.script.state(),
                  "history": run.history, "fingerprint": run.fingerprint}, run.last_path)


def _finish(run: _TrainState, live) -> TrainResult:
    """``best_val.pt``, ``best_test.pt`` and ``best.pt`` (= ``best_<select>.pt``) with the
    whole run's training time (also when a finished run is resumed after they were removed,
    e.g. by DVC), the summary, the result."""
    best = run.best
    if best is not None:
        val_acc_of = {r["epoch"]: r["val_accuracy"] for r in run.history}
        for protocol, b in (("val", best), ("test", run.script.best or best)):
            ckpt_io.save({**run.common, "epoch": b["epoch"], "val_accuracy": val_acc_of[b["epoch"]],
                          "step": (b["epoch"] + 1) * run.steps_per_epoch, "model": b["model"],
                          "train_seconds": run.seconds, "selected_by": protocol,
                          "selection": _selection_note(protocol, b, run.script)},
                         layout.best_checkpoint(run.out_dir, protocol))
        with runtime.atomic_path(layout.best_checkpoint(run.out_dir)) as tmp:
            shutil.copyfile(layout.best_checkpoint(run.out_dir, run.spec.select), tmp)
    n_params = run.common["num_parameters"]
    if live is not None:
        if best is not None:
            live.summary.update({"best/val_accuracy": best["val_accuracy"],
                                 "best/epoch": best["epoch"] + 1})  # epochs count from 1
        live.summary.update({"num_parameters": n_params, "train_seconds": round(run.seconds, 3)})
        live.end()
    print(f"best: epoch {best['epoch'] + 1} val acc {best['val_accuracy']:.4f}; "
          f"train time {run.seconds:.1f}s" if best else "no epoch trained")
    return TrainResult(best["epoch"] if best else -1,
                       best["val_accuracy"] if best else float("nan"), len(run.history),
                       n_params, run.seconds, run.resumed, run.history)


def _script_check(run: _TrainState, epoch: int, val_acc: float) -> Optional[float]:
    """The released script's check at this epoch (if due): val reuses this epoch's val
    accuracy, test is scored here. Without a test split there is nothing to check."""
    script, test_split = run.script, run.test_split
    if script.schedule.split == "test" and test_split is None:
        return None

    def accuracy_on(split: str) -> float:
        if split == "val":
            return val_acc
        return run.setting.metrics(run.head, test_split, run.device, run.dims["num_classes"])["accuracy"]
    return script.update(epoch, accuracy_on, lambda: {k: v.detach().cpu().clone()
                                                      for k, v in run.head.state_dict().items()})


def _setting_exclusions(data: Dataset) -> dict[str, dict[str, int]]:
    """Per split, the rows the setting left out, by reason (cml: full-length events, no event);
    {} when it leaves none out. Stored in checkpoints as ``cml_excluded``."""
    return {split: {k: len(v) for k, v in s.setting_excluded.items()}
            for split, s in data.splits.items() if s.setting_excluded}


def _selection_note(protocol: str, best: dict, script: ScriptSelection) -> dict[str, Any]:
    """What chose this checkpoint (stored in best_*.pt)."""
    if protocol == "val" or script.best is None:
        return {"protocol": "val", "split": "val", "rule": "best val accuracy, every epoch"}
    return {"protocol": "test", "split": script.schedule.split, "rule": script.schedule.source,
            "accuracy": best["accuracy"], "checks": script.checked}


def _rng_state(gen: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    """Dropout (global CPU, and CUDA when used) and shuffling RNG states, for exact resume."""
    state = {"torch": torch.get_rng_state(), "shuffle": gen.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _open_live(live_dir, history: list[dict]):
    """A fresh DVCLive folder holding the epochs of ``history`` (a resumed run's so far), so
    the curves equal an uninterrupted run's whatever a killed run left there."""
    if live_dir is None:
        return None
    from dvclive import Live
    live = Live(str(live_dir), resume=False, save_dvc_exp=False, dvcyaml=False)
    for row in history:
        _log_row(live, row)
    return live


def _log_row(live, row: dict) -> None:
    """One DVCLive step per epoch: step = the epoch counted from 1 (as the log and the reports
    number it), ``train/*``, ``val/*`` and ``lr``."""
    if live is None:
        return
    live.step = row["epoch"] + 1
    for k, v in row.items():
        if k.startswith(("train_", "val_")):
            live.log_metric(k.replace("_", "/", 1), v)
    live.log_metric("lr", row["lr"])
    live.next_step()
