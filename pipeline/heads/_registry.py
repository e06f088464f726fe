"""Registry of localization heads (one module a paper), filled by importing ``pipeline.heads``.

A head module defines one :class:`Head` subclass decorated with ``@register_head("<name>")``
and two module-level dicts on the class:

* ``DEFAULTS``: model hyperparameters, each commented with the paper's equation/table;
* ``TRAIN_DEFAULTS``: ``{setting: {...}}`` for each of the head's ``settings`` (see
  ``SETTINGS``) with the paper's optimizer
  (``"adam"`` | ``"sgd"``), ``lr``, ``weight_decay``, ``batch_size``, ``epochs``, learning-rate
  schedule, ``clip_grad`` (0 = none). The schedule multiplies ``lr`` by ``lr_gamma`` at chosen
  epochs (0-based: a decay at epoch ``m`` applies from the ``m+1``-th epoch on, as
  ``MultiStepLR`` stepped once an epoch), given by exactly one of

  - ``lr_milestones``: list of epochs, increasing (``[]`` = none), for code that decays at fixed
    epochs (``MultiStepLR``, or hand-written ``if epoch in ...`` decays);
  - ``lr_step``: a decay every ``lr_step`` epochs (``StepLR``; 0 = none), for code whose decay
    really is periodic; the loop expands it into milestones below ``epochs``.

  The other one is ``0`` / ``[]``; a recipe with both set is an error.

Settings (``SETTINGS``; a head lists those its paper defines in ``settings``):

* ``fully``: segment labels; ``weak``: video labels only. Both are evaluated per segment.
* ``cml``: M2N's cross-modality localization (M2N Sec. 3.5, Table 1): the event segments of one
  modality are the query, the head scores each segment of the other modality
  (``cross_modal_relevance(visual, audio, query_mask, direction)``), and the ``l``-window with
  the largest sum must match the event exactly (A2V, V2A accuracy; ``pipeline.heads.m2n``).
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

SETTINGS = ("fully", "weak", "cml")  # = pipeline.training.config.Setting
TRAIN_KEYS = ("optimizer", "lr", "weight_decay", "batch_size", "epochs", "lr_step",
              "lr_milestones", "lr_gamma", "clip_grad")

_HEADS: dict[str, type["Head"]] = {}


class Head(nn.Module):
    """Base class of every head.

    Inputs: ``visual`` ``(B, T, H, W, Cv)`` spatial maps (T=10 segments, any H, W, Cv) and
    ``audio`` ``(B, T, Ca)``. ``forward`` returns a dict of tensors; ``loss`` turns it and the
    batch into a scalar; ``predict`` gives per-segment labels ``(B, T)`` in ``0..C`` where
    ``C = num_classes`` is background. ``fully`` and ``weak`` are evaluated per segment.

    ``batch`` keys: ``visual``, ``audio``, ``labels`` ``(B, T, C+1)`` one-hot (fully and cml
    targets; absent in the weak setting), ``weak`` ``(B, C+1)`` video-level labels (max over
    segments of ``labels``), ``epoch`` and ``epochs`` (ints, for schedules inside a loss).
    The training loop calls ``forward_batch(batch)`` and ``loss(out, batch)``.
    """

    name: str = ""
    settings: tuple[str, ...] = ("fully", "weak")  # of SETTINGS, those the paper defines
    DEFAULTS: dict[str, Any] = {}
    TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {}

    def __init__(self, visual_dim: int, audio_dim: int, num_classes: int, setting: str = "fully"):
        super().__init__()
        if setting not in self.settings:
            raise ValueError(f"head {self.name!r} has no {setting!r} setting; "
                             f"it supports: {', '.join(self.settings)}")
        self.visual_dim, self.audio_dim = visual_dim, audio_dim
        self.num_classes, self.setting = num_classes, setting

    def forward(self, visual: torch.Tensor, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward_batch(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The training forward of a batch: ``forward(visual, audio)`` unless the setting feeds
        the model otherwise (M2N's cml: one query-conditioned pass per direction)."""
        return self(batch["visual"], batch["audio"])

    def loss(self, out: dict[str, torch.Tensor], batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss and its named parts (floats, for logging)."""
        raise NotImplementedError

    def predict(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-segment class indices ``(B, T)``, background = ``num_classes``."""
        raise NotImplementedError

    @classmethod
    def from_authors_state_dict(cls, state_dict: dict[str, torch.Tensor], setting: str = "fully",
                                **overrides: Any) -> "Head":
        """This head with the weights of the authors' model of ``setting``.

        ``state_dict`` is in the authors' module and key layout, as their
        ``torch.save(model.state_dict())`` writes it. Dimensions (feature sizes, classes, layer
        widths) are inferred from the shapes; ``overrides`` are further ``DEFAULTS`` keys. Strict:
        every key is used once and shapes are checked; the first mismatch is a
        :class:`~pipeline.heads._authors.LayoutError` naming the key
        (see :mod:`pipeline.heads._authors`). In eval mode the result gives the authors' model's
        outputs on the same inputs.
        """
        raise NotImplementedError(f"head {cls.name!r} has no converter for the authors' checkpoints")

    def probabilities(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-segment class probabilities ``(B, T, C+1)`` (background last) of the model behind
        ``predict``; the confidence of a prediction is the entry ``predict`` chose (``predict``
        keeps the paper's decision rule, e.g. a 0.5 event threshold). Default: softmax of
        ``out["logits"]``."""
        return out["logits"].float().softmax(-1)


def event_class_probabilities(event_logits: torch.Tensor, class_logits: torch.Tensor) -> torch.Tensor:
    """Heads that score "event here" per segment ``(B, T)`` and one class per video ``(B, C)``:
    ``p(c) = sigmoid(e_t) softmax(class)_c``, ``p(background) = 1 - sigmoid(e_t)``; ``(B, T, C+1)``."""
    event = torch.sigmoid(event_logits.float()).unsqueeze(-1)
    cls = class_logits.float().softmax(-1).unsqueeze(1)
    return torch.cat([event * cls, 1 - event], dim=-1)


def register_head(name: str):
    def deco(cls: type[Head]) -> type[Head]:
        if name in _HEADS:
            raise ValueError(f"head {name!r} is registered twice ({_HEADS[name].__module__} and "
                             f"{cls.__module__})")
        unknown = set(k for s in cls.TRAIN_DEFAULTS.values() for k in s) - set(TRAIN_KEYS)
        if unknown:
            raise ValueError(f"head {name!r}: unknown TRAIN_DEFAULTS keys {sorted(unknown)}")
        cls.name = name
        _HEADS[name] = cls
        return cls
    return deco


def list_heads() -> list[str]:
    return sorted(_HEADS)


def get_head_class(name: str) -> type[Head]:
    try:
        return _HEADS[name]
    except KeyError:
        raise KeyError(f"unknown head {name!r}; registered heads: {', '.join(list_heads())}") from None


def resolve_hparams(name: str, **overrides: Any) -> dict[str, Any]:
    """``DEFAULTS`` of head ``name`` with ``overrides`` merged in; unknown keys raise."""
    cls = get_head_class(name)
    unknown = sorted(set(overrides) - set(cls.DEFAULTS))
    if unknown:
        raise KeyError(f"head {name!r} has no hyperparameter {unknown[0]!r}; valid: "
                       f"{', '.join(sorted(cls.DEFAULTS))}")
    return {**cls.DEFAULTS, **overrides}


def train_defaults(name: str, setting: str) -> dict[str, Any]:
    cls = get_head_class(name)
    if setting not in cls.settings:
        raise ValueError(f"head {name!r} has no {setting!r} setting; it supports: "
                         f"{', '.join(cls.settings)}")
    return copy.deepcopy(cls.TRAIN_DEFAULTS[setting])  # callers may not alter the class's lists


def build_head(name: str, *, visual_dim: int, audio_dim: int, num_classes: int,
               setting: str = "fully", **overrides: Any) -> Head:
    """Build head ``name`` with its paper defaults, ``overrides`` merged over ``DEFAULTS``."""
    cls = get_head_class(name)
    hparams = resolve_hparams(name, **overrides)
    head = cls(visual_dim, audio_dim, num_classes, setting, **hparams)
    head.hparams = hparams  # what a checkpoint stores to rebuild it
    return head


def from_authors_state_dict(name: str, state_dict: dict[str, torch.Tensor], setting: str = "fully",
                            **overrides: Any) -> Head:
    """Head ``name`` converted from the authors' ``state_dict`` (see
    :meth:`Head.from_authors_state_dict`)."""
    cls = get_head_class(name)
    if setting not in cls.settings:
        raise ValueError(f"head {name!r} has no {setting!r} setting; it supports: "
                         f"{', '.join(cls.settings)}")
    return cls.from_authors_state_dict(state_dict, setting, **overrides)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (heads build no dead layers, so all of them receive gradients)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
