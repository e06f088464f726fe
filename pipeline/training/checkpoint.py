"""Checkpoints: plain dicts of state_dicts plus what is needed to rebuild the head.

``best_val.pt`` / ``best_test.pt`` (evaluation; ``best.pt`` is one of them): ``format, head,
setting, hparams, dims, recipe, seed, params, num_parameters, categories, feature_norm,
cml_excluded, features, train_seconds, step, epoch, val_accuracy, model``, and in
``best_test.pt`` ``selected_by, selection`` (the released script's check that chose the
epoch); ``features`` is the
provenance of the two feature files trained on (``{"visual": attrs, "audio": attrs}``: encoder,
``model_spec_json``, weights and sha256, frames per segment, sampling, image size, sample rate),
what ``pipeline.localize`` rebuilds the extractors from.
``last.pt`` (resume, in ``<paths.resume>/train``): the same without ``val_accuracy``, plus
``optimizer, scheduler, rng, best, script_selection, history, fingerprint``.
``hparams`` is the resolved ``HeadSpec.config`` as a dict, ``recipe`` the typed recipe's
``as_dict()``; an imported authors' checkpoint also has ``imported_from``.
Loading goes through :func:`pipeline.files.load_checkpoint` (``weights_only=True``; any failure
is one line naming the file) and strict ``load_state_dict``; never ``torch.save(model)``.
Numbers are guarded at both ends: :func:`save` refuses a model with a NaN or inf weight (so no
such checkpoint is ever written), :func:`load` refuses to read one, and the training loop stops
at the first non-finite loss or gradient (:func:`check_step`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipeline import files
from pipeline.config import InputError
from pipeline.runtime import atomic_torch_save

FORMAT = 1


def save(obj: dict[str, Any], path: str | Path) -> None:
    """Write atomically (an interrupted save never leaves a truncated checkpoint; the temporary
    name is unique per process). A model with a non-finite weight is refused: nothing is
    written."""
    files.check_finite_state(obj.get("model") or {}, f"{path}: not written")
    atomic_torch_save(obj, path)


PER_ROW_ATTRS = ("problems_json", "row_flags_json")  # per-row reports: not provenance


def feature_provenance(visual_meta: dict[str, Any], audio_meta: dict[str, Any]) -> dict[str, Any]:
    """The feature files' attributes that describe how they were made (plain types only)."""
    plain = (str, int, float, bool, list, dict)
    return {kind: {k: v for k, v in meta.items() if k not in PER_ROW_ATTRS and isinstance(v, plain)}
            for kind, meta in (("visual", visual_meta), ("audio", audio_meta))}


def load(path: str | Path) -> dict[str, Any]:
    """A training checkpoint (``best.pt``, ``last.pt``): every failure names the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint (run the train stage first)")
    ckpt = files.load_checkpoint(path, "training checkpoint")
    if ckpt.get("format") != FORMAT or not isinstance(ckpt.get("model"), dict):
        raise InputError(f"{path}: not a training checkpoint of format {FORMAT} (a checkpoint "
                         "written by the train stage or pipeline.import_checkpoint)")
    files.check_finite_state(ckpt["model"], str(path))
    return ckpt


def build_from(ckpt: dict[str, Any], device: str | torch.device = "cpu", where: str = "checkpoint"):
    """Rebuild the head of a checkpoint from its stored resolution (``heads.rebuild``: the
    registry and the stored hyperparameters, no second merge), strict load."""
    from pipeline.heads import SpecError, rebuild
    try:
        head = rebuild(ckpt["head"], ckpt["setting"], ckpt["hparams"], ckpt["dims"])
    except (KeyError, SpecError) as e:
        raise InputError(f"{where}: {e.args[0] if e.args else e}") from None
    try:
        head.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as e:
        raise InputError(f"{where}: its weights do not fit head {ckpt['head']!r} "
                         f"({' '.join(str(e).split())[:300]})") from None
    return head.to(device)


def check_feature_dims(ckpt: dict[str, Any], where: str | Path,
                       given: dict[str, tuple[tuple[int, ...], str]]) -> None:
    """The features given (``{role: (per-row shape, source)}``, role ``visual``/``audio``) have
    the channel width the checkpoint was trained on (``dims.<role>_dim``); else an
    :class:`InputError` naming both, raised before any data is read or model run."""
    for role, (shape, source) in given.items():
        want = (ckpt.get("dims") or {}).get(f"{role}_dim")
        if want is not None and shape and int(shape[-1]) != int(want):
            raise InputError(f"{source}: {role} features of width {shape[-1]} (shape "
                             f"{tuple(shape)}), but {where} was trained on {role} features of "
                             f"width {want}")


def feature_file_shape(path: str | Path) -> tuple[int, ...]:
    """The per-row shape of a feature file's ``avadataset`` (no data read)."""
    with files.open_h5(path, "avadataset") as f:
        return tuple(f["avadataset"].shape[1:])


def load_head(path: str | Path, device: str | torch.device = "cpu"):
    """``(head, checkpoint)`` from ``best.pt``/``last.pt``; the head is in eval mode."""
    ckpt = load(path)
    return build_from(ckpt, device, str(path)).eval(), ckpt


def check_step(loss: torch.Tensor, module: torch.nn.Module, epoch: int, batch: int,
               inputs: dict[str, Any], lr: float) -> None:
    """After ``loss.backward()``: raise :class:`InputError` at the first non-finite loss or
    gradient, naming the epoch and batch (1-based) and the likely cause (non-finite inputs in
    this batch, else a learning rate or data scale that makes training diverge)."""
    if bool(torch.isfinite(loss.detach()).all()):
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            return
        what = "a gradient is not finite (loss finite)"
    else:
        what = f"the loss is {float(loss.detach())}"
    bad = [k for k, v in inputs.items()
           if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    cause = (f"the batch's {' and '.join(bad)} input holds NaN or inf" if bad else
             f"training diverged: lower train.lr ({lr:g}), set train.clip_grad, or check the "
             "feature scale (train.feature_norm: standardize)")
    raise InputError(f"train: epoch {epoch + 1}, batch {batch + 1}: {what}; likely cause: {cause}; "
                     "stopped, no checkpoint of this epoch written")
