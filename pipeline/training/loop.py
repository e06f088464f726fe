"""The one training loop for every registered head.

* Recipe: the head's ``TRAIN_DEFAULTS[setting]`` (the paper's optimizer, lr, schedule, batch
  size, epochs, clipping) with the non-null ``train.*`` params merged over it.
* Supervision: ``fully`` passes ``labels`` (B,T,C+1) and ``weak`` to ``Head.forward_batch`` and
  ``Head.loss``; ``weak`` passes only ``weak`` (B,C+1): segment labels never reach a weak loss;
  ``cml`` (M2N's cross-modality localization) passes ``labels``, whose event segments are the
  query and the target (M2N Sec. 3.5).
* Validation each epoch: the head's loss on the val split (eval mode, the training batches'
  keys) and ``val_accuracy``, the selection metric: segment accuracy in ``fully`` / ``weak``,
  the mean of A2V and V2A window accuracy in ``cml`` (M2N Table 1 "Average"). The best epoch by
  ``val_accuracy`` is ``best_val.pt``; the epoch the head's released script would report (its
  schedule of checks, mostly on test: :mod:`pipeline.training.selection`) is ``best_test.pt``;
  ``best.pt`` is the one ``select`` names.
* Reproducible: one seed for init, shuffling (own generator) and dropout (global RNG); both RNG
  states are in ``last.pt`` so a resumed run equals an uninterrupted one.
* Resume: ``last.pt`` is written every epoch and is resumed only when its fingerprint (head,
  hyperparameters, recipe, seed, data files, code) equals this run's; otherwise training starts
  fresh and says why.
"""
from __future__ import annotations

import hashlib
import inspect
import random
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from pipeline.config import ConfigError
from pipeline.evaluation.metrics import event_detection
from pipeline.training import checkpoint as ckpt_io
from pipeline.training.config import check_milestones
from pipeline.training.data import Dataset, SplitData, feature_stats
from pipeline.training.selection import ScriptSelection


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSpec:
    """Everything one training run needs besides data (resolved from params)."""
    head: str
    setting: str
    hparam_overrides: dict[str, Any] = field(default_factory=dict)  # heads.<head>
    recipe_overrides: dict[str, Any] = field(default_factory=dict)  # non-null train.* keys
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    resume: bool = True
    feature_norm: str = "none"  # none | standardize (train-split statistics, kept in checkpoints)
    select: str = "val"  # best.pt: val (best val epoch) | test (the released script's protocol)


def resolve_recipe(head: str, setting: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Paper recipe of ``head`` in ``setting`` with ``overrides`` merged in (errors name keys)."""
    from pipeline.heads import _registry, get_head_class, train_defaults
    try:
        get_head_class(head)
    except KeyError as e:
        raise ConfigError(f"train.head: {e.args[0]}") from None
    try:
        recipe = train_defaults(head, setting)
    except ValueError as e:
        raise ConfigError(f"train.setting: {e}") from None
    missing = [k for k in _registry.TRAIN_KEYS if k not in recipe and k not in overrides]
    if missing:
        raise ConfigError(f"head {head!r} TRAIN_DEFAULTS[{setting!r}] lacks {missing}; "
                          f"set train.{missing[0]} in params.yaml")
    recipe = {**recipe, **overrides}
    recipe["lr_milestones"] = list(recipe["lr_milestones"])
    check_milestones(recipe["lr_milestones"], "train.lr_milestones" if "lr_milestones" in overrides
                     else f"head {head!r} TRAIN_DEFAULTS[{setting!r}]['lr_milestones']")
    if recipe["lr_step"] and recipe["lr_milestones"]:
        src = {k: "train" if k in overrides else f"{head} TRAIN_DEFAULTS[{setting!r}]"
               for k in ("lr_step", "lr_milestones")}
        raise ConfigError(f"train.lr_step / train.lr_milestones: the recipe sets both lr_step="
                          f"{recipe['lr_step']} ({src['lr_step']}) and lr_milestones="
                          f"{recipe['lr_milestones']} ({src['lr_milestones']}); a schedule is one "
                          f"of them: set train.lr_step: 0 or train.lr_milestones: []")
    return recipe


def resolve_hparams(head: str, overrides: dict[str, Any]) -> dict[str, Any]:
    from pipeline.heads import get_head_class, resolve_hparams as _resolve
    try:
        get_head_class(head)
    except KeyError as e:
        raise ConfigError(f"train.head: {e.args[0]}") from None
    try:
        return _resolve(head, **overrides)
    except KeyError as e:
        bad = next((k for k in sorted(overrides) if k not in get_head_class(head).DEFAULTS), "?")
        raise ConfigError(f"heads.{head}.{bad}: {e.args[0]}") from None


def select_device(choice: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for ``cuda`` without one is an error."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is visible; use auto or cpu")
    if choice == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        print(f"device: {dev} (auto: {'CUDA present' if dev.type == 'cuda' else 'no CUDA'})")
        return dev
    print(f"device: {choice}")
    return torch.device(choice)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (rev or "unknown") + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------
def make_batch(data: SplitData, idx: torch.Tensor, setting: str, device: torch.device,
               epoch: int, epochs: int) -> dict[str, Any]:
    """A training batch; in the weak setting it carries no segment labels."""
    labels = data.labels[idx]
    batch = {"visual": data.visual[idx].to(device).float(),
             "audio": data.audio[idx].to(device).float(),
             "weak": data.weak[idx].to(device),  # mil_labels.h5: the event class alone
             "epoch": epoch, "epochs": epochs}
    if setting != "weak":
        batch["labels"] = labels.to(device)
    return batch


@torch.no_grad()
def validation_loss(head, data: SplitData, setting: str, device: torch.device, epoch: int,
                    epochs: int, batch_size: int = 64) -> float:
    """The head's training loss on ``data`` (eval mode, the setting's batch keys), averaged
    over videos; NaN for an empty split."""
    was_training = head.training
    head.eval()
    total = 0.0
    for s in range(0, len(data), batch_size):
        idx = torch.arange(s, min(s + batch_size, len(data)))
        batch = make_batch(data, idx, setting, device, epoch, epochs)
        total += float(head.loss(head.forward_batch(batch), batch)[0]) * len(idx)
    head.train(was_training)
    return total / len(data) if len(data) else float("nan")


def validation_metrics(head, data: SplitData, setting: str, device: torch.device,
                       num_classes: int) -> dict[str, float]:
    """``accuracy`` (the selection metric) and its companions: ``event_f1`` (fully / weak:
    per-segment predictions), ``a2v`` / ``v2a`` (cml: M2N's window accuracy; ``accuracy`` is
    their mean)."""
    if setting == "cml":
        from pipeline.heads.m2n import cml_evaluate
        acc = cml_evaluate(head, data.visual, data.audio, data.labels, device)[0]
        return {"accuracy": acc["average"], "a2v": acc["a2v"], "v2a": acc["v2a"]}
    pred = predict(head, data, device)
    return {"accuracy": accuracy(pred, data.targets),
            "event_f1": event_detection(pred.numpy(), data.targets.numpy(),
                                        background=num_classes)["f1"]}


@torch.no_grad()
def predict(head: torch.nn.Module, data: SplitData, device: torch.device,
            batch_size: int = 64) -> torch.Tensor:
    """Per-segment predictions (n, T) long on CPU, background = C."""
    was_training = head.training
    head.eval()
    preds = []
    for s in range(0, len(data), batch_size):
        v = data.visual[s:s + batch_size].to(device).float()
        a = data.audio[s:s + batch_size].to(device).float()
        preds.append(head.predict(head(v, a)).long().cpu())
    head.train(was_training)
    if not preds:
        return torch.zeros((0, data.labels.shape[1]), dtype=torch.long)
    return torch.cat(preds)


def accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float((pred == target).float().mean()) if target.numel() else float("nan")


# --------------------------------------------------------------------------------------------
# Optimisation
# --------------------------------------------------------------------------------------------
def make_optimizer(params, recipe: dict[str, Any]) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    name = recipe["optimizer"]
    if name == "adam":
        return torch.optim.Adam(params, lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    if name == "sgd":
        return torch.optim.SGD(params, lr=recipe["lr"], momentum=0.9,
                               weight_decay=recipe["weight_decay"])
    raise ConfigError(f"train.optimizer: {name!r} is not allowed; allowed: 'adam', 'sgd'")


def lr_milestones(recipe: dict[str, Any]) -> list[int]:
    """Epochs (0-based) from which ``lr`` is multiplied once more by ``lr_gamma``: the recipe's
    ``lr_milestones``, or ``lr_step``, 2 ``lr_step``, ... below ``epochs`` (resolve_recipe
    allows only one of the two)."""
    step = int(recipe["lr_step"] or 0)
    if step > 0:
        return list(range(step, int(recipe["epochs"]), step))
    return list(recipe["lr_milestones"])


def make_scheduler(opt: torch.optim.Optimizer, recipe: dict[str, Any]):
    """``MultiStepLR`` stepped once per epoch (no milestones = constant lr)."""
    return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=lr_milestones(recipe),
                                                gamma=recipe["lr_gamma"])


# --------------------------------------------------------------------------------------------
# Fingerprint (what must match for a resume)
# --------------------------------------------------------------------------------------------
def _file_id(path: Path) -> str:
    st = path.stat()
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def fingerprint(spec: RunSpec, hparams: dict, recipe: dict, data_files: list[Path]) -> str:
    from pipeline.heads import get_head_class
    h = hashlib.sha256()
    h.update(repr((spec.head, spec.setting, sorted(hparams.items()), sorted(recipe.items()),
                   spec.seed, spec.feature_norm)).encode())
    for p in data_files:
        h.update(_file_id(Path(p)).encode())
    for src in (inspect.getsourcefile(get_head_class(spec.head)), __file__):
        if src:
            h.update(Path(src).read_bytes())
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


def train(spec: RunSpec, data: Dataset, out_dir: str | Path, *, live_dir: str | Path | None = None,
          params_snapshot: Optional[dict] = None, data_files: tuple[Path, ...] = (),
          stop_after: Optional[int] = None) -> TrainResult:
    """Train ``spec.head`` on ``data``; write ``<out_dir>/best.pt`` and ``<out_dir>/last.pt``.

    ``stop_after`` ends the run after that many epochs of this call (tests: interruption).
    """
    from pipeline.heads import build_head, count_parameters

    out_dir = Path(out_dir)
    hparams = resolve_hparams(spec.head, spec.hparam_overrides)
    recipe = resolve_recipe(spec.head, spec.setting, spec.recipe_overrides)
    device = select_device(spec.device)
    seed_everything(spec.seed)
    dims = {"visual_dim": data.visual_dim, "audio_dim": data.audio_dim,
            "num_classes": data.num_classes}
    head = build_head(spec.head, setting=spec.setting, **dims, **hparams).to(device)
    n_params = count_parameters(head)
    opt = make_optimizer(head.parameters(), recipe)
    sched = make_scheduler(opt, recipe)
    gen = torch.Generator().manual_seed(spec.seed)
    fp = fingerprint(spec, hparams, recipe, list(data_files))
    print(f"head: {spec.head} ({spec.setting}), trainable parameters: {n_params:,}")
    print(f"hparams: {hparams}")
    print(f"recipe: {recipe}")
    print(f"lr schedule: {recipe['lr']:g}, x{recipe['lr_gamma']:g} at epochs "
          f"{lr_milestones(recipe) or 'none'}")

    epochs = int(recipe["epochs"])
    start, best, history, seconds, resumed = 0, None, [], 0.0, None
    script = ScriptSelection(spec.head, spec.setting, epochs)
    last_path = out_dir / "last.pt"
    if spec.resume and last_path.is_file():
        last = ckpt_io.load(last_path)
        if last.get("fingerprint") != fp:
            print(f"resume: {last_path} is from a different run (fingerprint "
                  f"{last.get('fingerprint')} != {fp}); starting fresh")
        else:
            head.load_state_dict(last["model"], strict=True)
            opt.load_state_dict(last["optimizer"])
            sched.load_state_dict(last["scheduler"])
            torch.set_rng_state(last["rng"]["torch"])
            if device.type == "cuda" and "cuda" in last["rng"]:
                torch.cuda.set_rng_state(last["rng"]["cuda"], device)
            gen.set_state(last["rng"]["shuffle"])
            start, best, history = last["epoch"] + 1, last["best"], list(last["history"])
            seconds, resumed = float(last["train_seconds"]), last["epoch"]
            script.load_state(last.get("script_selection"))
            print(f"resume: {last_path} at epoch {last['epoch'] + 1}/{epochs}")

    live = _open_live(live_dir, resume=resumed is not None)
    train_split, val_split = data.splits["train"], data.splits["val"]
    test_split = data.splits.get("test")
    if len(train_split) == 0:
        raise ValueError("train split is empty after excluding invalid rows")
    if (spec.setting == "cml") != (data.setting == "cml"):
        raise ValueError(f"setting {spec.setting!r} needs the data read for it: "
                         f"load_dataset(..., setting={spec.setting!r}) (got {data.setting!r})")
    norm = None
    if spec.feature_norm == "standardize":
        norm = feature_stats(train_split)  # train statistics only; evaluation reuses them
        train_split, val_split = train_split.normalized(norm), val_split.normalized(norm)
        test_split = test_split.normalized(norm) if test_split is not None else None
        print("features: standardized per channel with train-split mean/std")
    print(f"selection: best_val.pt every epoch on val; best_test.pt as the released script: "
          f"{script.schedule.source}; best.pt = best_{spec.select}.pt (train.select)")
    bs = int(recipe["batch_size"])
    steps_per_epoch = -(-len(train_split) // bs)
    done_this_call = 0
    for epoch in range(start, epochs):
        if stop_after is not None and done_this_call >= stop_after:
            break
        t0 = time.perf_counter()
        head.train()
        perm = torch.randperm(len(train_split), generator=gen)
        sums, n_batches = {}, 0
        for s in range(0, len(perm), bs):
            batch = make_batch(train_split, perm[s:s + bs], spec.setting, device, epoch, epochs)
            loss, parts = head.loss(head.forward_batch(batch), batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if recipe["clip_grad"]:
                torch.nn.utils.clip_grad_norm_(head.parameters(), recipe["clip_grad"])
            opt.step()
            n_batches += 1
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        lr = opt.param_groups[0]["lr"]
        sched.step()
        val = validation_metrics(head, val_split, spec.setting, device, data.num_classes)
        val["loss"] = validation_loss(head, val_split, spec.setting, device, epoch, epochs)
        val_acc = val["accuracy"]
        seconds += time.perf_counter() - t0
        row = {"epoch": epoch, "lr": lr, **{f"val_{k}": v for k, v in val.items()},
               **{f"train_{k}": v / max(n_batches, 1) for k, v in sums.items()}}
        history.append(row)
        improved = best is None or val_acc > best["val_accuracy"]
        if improved:
            best = {"epoch": epoch, "val_accuracy": val_acc,
                    "model": {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}}
        script_acc = _script_check(script, epoch, head, val_acc, test_split, spec.setting, device,
                                   data.num_classes)
        if script_acc is not None:
            row[f"script_{script.schedule.split}_accuracy"] = script_acc
        print(f"epoch {epoch + 1}/{epochs}  loss {row['train_loss']:.4f}  val loss "
              f"{val['loss']:.4f}  val acc {val_acc:.4f}{'  *' if improved else ''}  "
              f"({time.perf_counter() - t0:.1f}s)")
        if live is not None:
            for k, v in row.items():
                if k.startswith(("train_", "val_")):
                    live.log_metric(k.replace("_", "/", 1), v)
            live.log_metric("lr", lr)
            live.next_step()
        common = {"format": ckpt_io.FORMAT, "head": spec.head, "setting": spec.setting,
                  "hparams": hparams, "dims": dims, "recipe": recipe,
                  "params": params_snapshot or {}, "num_parameters": n_params,
                  "categories": list(data.categories), "train_seconds": seconds,
                  "feature_norm": norm, "cml_excluded": _cml_counts(data),
                  "features": ckpt_io.feature_provenance(data.visual_meta, data.audio_meta),
                  "step": (epoch + 1) * steps_per_epoch}
        if improved:
            ckpt_io.save({**common, "epoch": epoch, "val_accuracy": val_acc,
                          "model": best["model"]}, out_dir / "best_val.pt")
        ckpt_io.save({**common, "epoch": epoch, "model": head.state_dict(),
                      "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                      "rng": _rng_state(gen, device), "script_selection": script.state(),
                      "best": best, "history": history, "fingerprint": fp}, last_path)
        done_this_call += 1

    if best is not None:
        # best.pt carries the whole run's training time (and is rewritten from last.pt when a
        # finished run is resumed after best.pt was removed, e.g. by DVC).
        last = ckpt_io.load(last_path)
        keep = {k: v for k, v in last.items()
                if k not in ("optimizer", "scheduler", "rng", "best", "history", "fingerprint",
                             "script_selection")}
        val_acc_of = {r["epoch"]: r["val_accuracy"] for r in history}
        for protocol, b in (("val", best), ("test", script.best or best)):
            ckpt_io.save({**keep, "epoch": b["epoch"], "val_accuracy": val_acc_of[b["epoch"]],
                          "step": (b["epoch"] + 1) * steps_per_epoch, "model": b["model"],
                          "train_seconds": seconds, "selected_by": protocol,
                          "selection": _selection_note(protocol, b, script)},
                         out_dir / f"best_{protocol}.pt")
        shutil.copyfile(out_dir / f"best_{spec.select}.pt", out_dir / "best.pt")
    if live is not None:
        if best is not None:
            live.summary.update({"best/val_accuracy": best["val_accuracy"],
                                 "best/epoch": best["epoch"]})
        live.summary.update({"num_parameters": n_params, "train_seconds": round(seconds, 3)})
        live.end()
    print(f"best: epoch {best['epoch'] + 1} val acc {best['val_accuracy']:.4f}; "
          f"train time {seconds:.1f}s" if best else "no epoch trained")
    return TrainResult(best["epoch"] if best else -1, best["val_accuracy"] if best else float("nan"),
                       len(history), n_params, seconds, resumed, history)


def _script_check(script: ScriptSelection, epoch: int, head, val_acc: float,
                  test_split: Optional[SplitData], setting: str, device: torch.device,
                  num_classes: int) -> Optional[float]:
    """The released script's check at this epoch (if due): val reuses this epoch's val
    accuracy, test is scored here. Without a test split there is nothing to check."""
    if script.schedule.split == "test" and test_split is None:
        return None
    def accuracy_on(split: str) -> float:
        if split == "val":
            return val_acc
        return validation_metrics(head, test_split, setting, device, num_classes)["accuracy"]
    return script.update(epoch, accuracy_on, lambda: {k: v.detach().cpu().clone()
                                                      for k, v in head.state_dict().items()})


def _cml_counts(data: Dataset) -> dict[str, dict[str, int]]:
    """cml: per split, the rows left out (full-length events, no event); {} otherwise."""
    return {split: {k: len(v) for k, v in s.cml_excluded.items()}
            for split, s in data.splits.items() if s.cml_excluded}


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


def _open_live(live_dir, resume: bool):
    if live_dir is None:
        return None
    from dvclive import Live
    return Live(str(live_dir), resume=resume and Path(live_dir).is_dir(), save_dvc_exp=False,
                dvcyaml=False)
