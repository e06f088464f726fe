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
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from pipeline.training.tasks import SETTINGS  # each setting is a task object
TRAIN_KEYS = ("optimizer", "lr", "weight_decay", "batch_size", "epochs", "lr_step",
              "lr_milestones", "lr_gamma", "clip_grad", "shuffle", "drop_last", "recipe",
              "shuffle_scope", "avps_target", "video_class", "torch_seed")
# The training-side switches: how the released scripts load batches, build targets and seed,
# where that differs from the papers' description. ``recipe`` picks all of them at once:
# ``authors`` (the code that produced the published numbers, the default) or ``paper``; a head
# declares its switches and their value in each mode in ``Head.SWITCHES``; a switch set under
# ``train.<key>`` overrides the mode.
RECIPES = ("authors", "paper")
SWITCH_VALUES = {
    "shuffle": (True, False),  # draw the train batches from a shuffled split
    "drop_last": (True, False),  # drop the last partial batch of an epoch
    # epoch: the whole split reshuffled every epoch | first_batch: batch 0 a random draw of
    # batch_size rows, batches 1..n-1 the stored rows (PSP/VSCG AVE_Weakly_Dataset.get_batch)
    "shuffle_scope": ("epoch", "first_batch"),
    # indicator: the batch's event indicator, l1-normalised (PSP Eqs. 8-9) | buffer: the PSP/VSCG
    # loader's per-slot buffer, never reset (pipeline.heads.psp.AVPSBuffer)
    "avps_target": ("indicator", "buffer"),
    # most_frequent: the class of most event segments | max_index: the largest class index
    # present (CMBS, CACE, VSCG: labels_foreground.max(-1) then .max(-1))
    "video_class": ("most_frequent", "max_index"),
    # seed: torch seeded with the run's seed | drawn: torch seeded from a fresh random draw,
    # recorded in the run (AVEL's scripts seed only Python's random module)
    "torch_seed": ("seed", "drawn"),
}
# The value of each switch that a head does not declare (and the ``paper`` value where a paper
# is silent): batches drawn from a shuffled train split, reshuffled every epoch, the last
# partial batch kept; the paper's targets; torch seeded.
RECIPE_DEFAULTS = {"shuffle": True, "drop_last": False, "shuffle_scope": "epoch",
                   "avps_target": "indicator", "video_class": "most_frequent", "torch_seed": "seed"}
DEFAULT_RECIPE = "authors"

ENTRY_POINT_GROUP = "ave_pipeline.heads"  # heads of other installed packages register here

_HEADS: dict[str, type["Head"]] = {}


@dataclass(frozen=True)
class Schedule:
    """When a head's released training script checks its model, on which split, and how it
    breaks ties (the ``test`` protocol of :mod:`pipeline.training.selection`). Epochs are
    0-based, as in the scripts' loops."""
    split: str = "test"  # split the script selects on: test | val
    every: int = 1  # check when epoch % every == 0
    skip_first: bool = False  # no check at epoch 0 (`epoch != 0`)
    after: int = -1  # checks only when epoch > after
    later_wins_ties: bool = False  # `>=` (True) or `>` (False)
    source: str = "no released code: every epoch on test"

    def checks(self, epoch: int) -> bool:
        return (epoch % self.every == 0 and not (self.skip_first and epoch == 0)
                and epoch > self.after)


NO_RELEASED_CODE = Schedule()  # heads without released code: every epoch on test


@dataclass(frozen=True)
class Reported:
    """A number a paper reports for a head in one setting: test accuracy (%) on AVE with VGG-19
    visual and VGG-like (VGGish) audio features, where it is printed, and for ``cml`` the
    accuracy of each direction (``{"a2v": .., "v2a": ..}``)."""
    accuracy: float
    source: str
    per_direction: dict[str, float] = field(default_factory=dict)


class Head(nn.Module):
    """Base class of every head.

    Inputs: ``visual`` ``(B, T, H, W, Cv)`` spatial maps (T=10 segments, any H, W, Cv) and
    ``audio`` ``(B, T, Ca)``. ``forward`` returns a dict of tensors; ``loss`` turns it and the
    batch into a scalar; ``predict`` gives per-segment labels ``(B, T)`` in ``0..C`` where
    ``C = num_classes`` is background. ``fully`` and ``weak`` are evaluated per segment.

    ``batch`` keys (built by the setting's task, :mod:`pipeline.training.tasks`): ``visual``,
    ``audio``, ``labels`` ``(B, T, C+1)`` one-hot (fully and cml targets; absent in the weak
    setting), ``weak`` ``(B, C+1)`` video-level labels as ``mil_labels.h5`` holds them (the event
    class alone; the background bit only for background-only videos), ``epoch`` and ``epochs``
    (ints, for schedules inside a loss).
    The training loop calls ``forward_batch(batch)`` and ``loss(out, batch)``.
    """

    name: str = ""
    settings: tuple[str, ...] = ("fully", "weak")  # of SETTINGS, those the paper defines
    DEFAULTS: dict[str, Any] = {}
    SETTING_DEFAULTS: dict[str, dict[str, Any]] = {}  # setting -> values of DEFAULTS left None
    TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {}
    # What a head knows about itself besides its model (everything else derives from these):
    SELECTION: dict[str, Schedule] = {}  # setting -> the released script's checks (best_test.pt)
    SEEDS: dict[str, int] = {}  # setting -> the seed of the authors' script (absent: 0)
    # setting -> {switch: (value in the ``authors`` recipe, value in the ``paper`` recipe)}: the
    # training-side differences of the released scripts (keys of SWITCH_VALUES)
    SWITCHES: dict[str, dict[str, tuple[Any, Any]]] = {}
    REPORTED: dict[str, Reported] = {}  # setting -> the paper's reported test accuracy
    REPORTED_PARAMS_M: Optional[float] = None  # trainable parameters (millions) its paper reports
    REPORTED_PARAMS_SOURCE: str = ""  # where that count is printed

    def __init__(self, visual_dim: int, audio_dim: int, num_classes: int, setting: str = "fully"):
        super().__init__()
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

    @classmethod
    def prediction_rule(cls, setting: str, hparams: dict[str, Any]) -> Optional[str]:
        """How ``predict`` labels segments when it is not the argmax of each segment's class
        scores (stated on the evaluate page and in ``localize`` output); ``None`` otherwise."""
        return None

    def probabilities(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-segment class probabilities ``(B, T, C+1)`` (background last) of the model behind
        ``predict``; the confidence of a prediction is the entry ``predict`` chose (``predict``
        keeps the paper's decision rule, e.g. a 0.5 event threshold). Default: softmax of
        ``out["logits"]``."""
        return out["logits"].float().softmax(-1)


RELEVANCE_RULE = ("relevance: a segment is an event when its event relevance (sigmoid) is >= 0.5, "
                  "and then takes the video's top event class; every other segment is background")


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
        for s, switches in cls.SWITCHES.items():
            for k, modes in switches.items():
                if k not in SWITCH_VALUES or len(modes) != 2 or any(v not in SWITCH_VALUES[k] for v in modes):
                    raise ValueError(f"head {name!r}: SWITCHES[{s!r}][{k!r}] = {modes!r}; a switch "
                                     f"is one of {sorted(SWITCH_VALUES)} with (authors, paper) values")
            clash = sorted(set(switches) & set(cls.TRAIN_DEFAULTS.get(s, {})))
            if clash:
                raise ValueError(f"head {name!r}: {clash} are in both SWITCHES and TRAIN_DEFAULTS[{s!r}]")
        for attr in ("TRAIN_DEFAULTS", "SELECTION"):  # every setting declares its recipe and checks
            missing = [s for s in cls.settings if s not in getattr(cls, attr)]
            if missing:
                raise ValueError(f"head {name!r}: {attr} has no entry for setting(s) {missing}")
        bad = sorted(set(cls.settings) - set(SETTINGS))
        if bad:
            raise ValueError(f"head {name!r}: unknown setting(s) {bad}; known: {', '.join(SETTINGS)}")
        cls.name = name
        _HEADS[name] = cls
        return cls
    return deco


def list_heads() -> list[str]:
    """Registered head names, sorted."""
    return sorted(_HEADS)


def prediction_rule(name: str, setting: str, hparams: dict[str, Any]) -> Optional[str]:
    """How head ``name`` turns its outputs into segment classes in ``setting``, when it is not
    a per-segment argmax (``Head.prediction_rule``; the evaluate page and ``localize`` state it)."""
    return get_head_class(name).prediction_rule(setting, hparams)


def schedule(name: str, setting: str) -> Schedule:
    """The released script's schedule of checks of head ``name`` in ``setting``."""
    return get_head_class(name).SELECTION[setting]


def default_seed(name: str, setting: str) -> int:
    """The seed of the authors' script for head ``name`` in ``setting`` (0 where none is known)."""
    return int(get_head_class(name).SEEDS.get(setting, 0))


def reported(name: str, setting: str) -> Optional[Reported]:
    """The paper's reported number of head ``name`` in ``setting`` (``None``: not reported)."""
    return get_head_class(name).REPORTED.get(setting)


def get_head_class(name: str) -> type[Head]:
    try:
        return _HEADS[name]
    except KeyError:
        raise KeyError(f"unknown head {name!r}; registered heads: {', '.join(list_heads())}") from None


@dataclass(frozen=True)
class HeadSpec:
    """One head resolved once: every hyperparameter (``DEFAULTS``, then the setting's
    ``SETTING_DEFAULTS`` for ``None`` values, then the overrides, then the map size) and the
    training recipe (``TRAIN_DEFAULTS[setting]`` with the recipe overrides). Config validation,
    the training loop, checkpoints and the converters all consume this; nothing merges again."""
    head: str
    setting: str
    hparams: dict[str, Any]
    recipe: dict[str, Any]
    seed: int = 0  # the run's seed (init, shuffling, dropout): given, or the authors' (SEEDS)
    notes: tuple[str, ...] = ()  # what resolution chose on its own (printed by the loop)


def resolve(name: str, setting: str = "fully", overrides: Optional[dict[str, Any]] = None,
            recipe: Optional[dict[str, Any]] = None, map_hw: Optional[tuple[int, int]] = None,
            seed: Optional[int] = None) -> HeadSpec:
    """The one resolution of a head. Errors: ``KeyError`` (unknown head, listing the
    registered ones), :class:`SpecError` (its ``key`` names the offending setting,
    hyperparameter or recipe entry; the message says what is allowed)."""
    cls = get_head_class(name)
    if setting not in cls.settings:
        raise SpecError("setting", f"head {name!r} has no {setting!r} setting; it supports: "
                                   f"{', '.join(cls.settings)}")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(overrides) - set(cls.DEFAULTS))
    if unknown:
        raise SpecError(f"hparams.{unknown[0]}",
                        f"head {name!r} has no hyperparameter {unknown[0]!r}; valid: "
                        f"{', '.join(sorted(cls.DEFAULTS))}")
    per_setting = cls.SETTING_DEFAULTS.get(setting, {})
    hparams = {k: per_setting.get(k, v) if v is None else v for k, v in cls.DEFAULTS.items()}
    hparams.update(overrides)
    notes = []
    positions = map_hw and len(map_hw) == 2 and int(map_hw[0]) * int(map_hw[1])
    if (positions and hparams.get("audio_term") == "position" and "att_dim" not in overrides
            and hparams.get("att_dim") != positions):
        # The per-position audio term (AVEL, PSP, VSCG code) needs att_dim = H*W (49 = 7x7).
        hparams["att_dim"] = positions
        notes.append(f"att_dim: {positions} (= H*W of the {map_hw[0]}x{map_hw[1]} visual maps: "
                     f"the per-position audio term needs it; set heads.{name}.att_dim to override)")
    return HeadSpec(name, setting, hparams, _resolve_recipe(cls, setting, recipe or {}),
                    default_seed(name, setting) if seed is None else int(seed), tuple(notes))


class SpecError(ValueError):
    """A head cannot be resolved as asked; ``key`` is the part at fault (``setting``,
    ``hparams.<name>``, ``recipe.<name>``)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def recipe_switches(cls: type[Head], setting: str, mode: str) -> dict[str, Any]:
    """The value of every switch of ``SWITCH_VALUES`` for head ``cls`` in ``setting`` under
    ``train.recipe: mode`` (before ``train.<switch>`` overrides)."""
    if mode not in RECIPES:
        raise SpecError("recipe.recipe", f"must be one of {', '.join(RECIPES)}, got {mode!r}")
    declared = {k: v[RECIPES.index(mode)] for k, v in cls.SWITCHES.get(setting, {}).items()}
    return {**{k: RECIPE_DEFAULTS[k] for k in SWITCH_VALUES}, **declared}


def _resolve_recipe(cls: type[Head], setting: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """``TRAIN_DEFAULTS[setting]``, the switches of ``recipe`` (``overrides['recipe']``, default
    ``authors``: :func:`recipe_switches`) and the non-null ``overrides``; the schedule is one of
    ``lr_step`` / ``lr_milestones`` (strictly increasing epochs >= 1)."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(overrides) - set(TRAIN_KEYS))
    if unknown:
        raise SpecError(f"recipe.{unknown[0]}", f"not a recipe key; valid: {', '.join(TRAIN_KEYS)}")
    for k, v in overrides.items():
        if k in SWITCH_VALUES and v not in SWITCH_VALUES[k]:
            raise SpecError(f"recipe.{k}", f"must be one of {', '.join(map(str, SWITCH_VALUES[k]))}, "
                                           f"got {v!r}")
    mode = overrides.get("recipe", DEFAULT_RECIPE)
    recipe = {**RECIPE_DEFAULTS, **copy.deepcopy(cls.TRAIN_DEFAULTS[setting]),
              **recipe_switches(cls, setting, mode), **overrides, "recipe": mode}
    origin = {k: "train" if k in overrides else f"{cls.name} TRAIN_DEFAULTS[{setting!r}]"
              for k in TRAIN_KEYS}
    missing = [k for k in TRAIN_KEYS if k not in recipe]
    if missing:
        raise SpecError(f"recipe.{missing[0]}", f"head {cls.name!r} TRAIN_DEFAULTS[{setting!r}] "
                                                f"lacks {missing}; set train.{missing[0]} in params.yaml")
    recipe["lr_milestones"] = list(recipe["lr_milestones"])
    ms = recipe["lr_milestones"]
    if any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in ms):
        raise SpecError("recipe.lr_milestones", f"must be epochs >= 1, got {ms!r} "
                                                f"({origin['lr_milestones']})")
    if any(b <= a for a, b in zip(ms, ms[1:])):
        raise SpecError("recipe.lr_milestones", f"must be strictly increasing, got {ms!r} "
                                                f"({origin['lr_milestones']})")
    if recipe["lr_step"] and ms:
        raise SpecError("recipe.lr_step / train.lr_milestones", f"the recipe sets both lr_step={recipe['lr_step']} "
                        f"({origin['lr_step']}) and lr_milestones={ms} ({origin['lr_milestones']}); "
                        "a schedule is one of them: set train.lr_step: 0 or train.lr_milestones: []")
    return recipe


def instantiate(spec: HeadSpec, *, visual_dim: int, audio_dim: int, num_classes: int) -> Head:
    """The head of a resolved ``spec`` with these input and class sizes."""
    head = get_head_class(spec.head)(visual_dim, audio_dim, num_classes, spec.setting,
                                     **spec.hparams)
    head.hparams = dict(spec.hparams)  # what a checkpoint stores to rebuild it
    return head


def resolve_hparams(name: str, setting: str = "fully", **overrides: Any) -> dict[str, Any]:
    """Every hyperparameter of head ``name`` in ``setting`` with ``overrides`` (see :func:`resolve`)."""
    return resolve(name, setting, overrides).hparams


def train_defaults(name: str, setting: str) -> dict[str, Any]:
    """The paper's recipe of head ``name`` in ``setting`` (a copy)."""
    return resolve(name, setting).recipe


def build_head(name: str, *, visual_dim: int, audio_dim: int, num_classes: int,
               setting: str = "fully", **overrides: Any) -> Head:
    """Build head ``name`` with its paper defaults and ``overrides`` (:func:`resolve`, then
    :func:`instantiate`)."""
    return instantiate(resolve(name, setting, overrides), visual_dim=visual_dim,
                       audio_dim=audio_dim, num_classes=num_classes)


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
